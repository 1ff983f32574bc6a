import { LabIcon } from '@jupyterlab/ui-components';

// A flask: the outline is stroked, the liquid filled; jp-icon3 makes both follow the theme.
const svgstr = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <path class="jp-icon3" stroke="#616161" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round"
    style="fill:none" d="M8.5 3h7M10 3v6.6L4.7 18.4A1.7 1.7 0 0 0 6.2 21h11.6a1.7 1.7 0 0 0 1.5-2.6L14 9.6V3"/>
  <path class="jp-icon3" fill="#616161" d="M7.4 14.5h9.2l2 3.5c.4.6-.1 1.4-.8 1.4H6.2c-.7 0-1.2-.8-.8-1.4z"/>
</svg>`;

export const experimentsIcon = new LabIcon({ name: 'arrakis-jupyter:experiments', svgstr });
