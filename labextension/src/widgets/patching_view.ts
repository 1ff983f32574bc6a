// Patching view: one rows × cols heatmap of a patching metric (diverging around 0 when symmetric).
import {
  DIVERGING, finiteRange, float32, fmt, h, Heatmap, Legend, markReady, maxAbs, RenderProps, setupRoot,
  strings, Subscriptions, Tooltip, VIRIDIS,
} from "./common";

function render({ model, el }: RenderProps): () => void {
  const t0 = setupRoot(el, "patching-view");
  const subs = new Subscriptions(model);
  const tip = new Tooltip(el);
  let values = new Float32Array(0), rows: string[] = [], cols: string[] = [];

  const str = (name: string) => String(model.get(name) ?? "");
  const title = h("div", "arrakis-title");
  const legend = new Legend();
  const heatmap = new Heatmap({
    cellW: 28, cellH: 20, maxW: 900, maxH: 640, label: "patching result",
    tooltip: (i, j) => `${str("row_dim")} ${rows[i]}, ${str("col_dim")} ${cols[j]} → ${str("value_name")} = ${fmt(values[i * cols.length + j])}`,
  }, tip);
  el.append(title, heatmap.canvas, legend.el);

  function draw(): void {
    rows = strings(model.get("rows"));
    cols = strings(model.get("cols"));
    values = float32(model.get("values"));
    if (values.length !== rows.length * cols.length) values = new Float32Array(rows.length * cols.length).fill(NaN);
    heatmap.configure({ rowTitle: str("row_dim"), colTitle: str("col_dim") });
    heatmap.canvas.setAttribute("aria-label", `${str("value_name")}: ${str("row_dim")} × ${str("col_dim")}`);
    const symmetric = Boolean(model.get("symmetric"));
    const m = maxAbs(values), [lo, hi] = symmetric ? [-m, m] : finiteRange(values);
    const lut = symmetric ? DIVERGING : VIRIDIS;
    heatmap.update(values, { lo, hi, lut, pool: symmetric ? "absmax" : "max" }, rows, cols);
    legend.update(lut, lo, hi, str("value_name"), symmetric);
  }

  const drawTitle = () => { title.textContent = str("title"); };
  subs.on("change:title", drawTitle);
  for (const name of ["values", "rows", "cols", "row_dim", "col_dim", "value_name", "symmetric"]) subs.on(`change:${name}`, draw);

  drawTitle();
  draw();
  markReady(el, t0);
  return () => subs.off();
}

export default { render };
