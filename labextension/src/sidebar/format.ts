// Small formatting helpers shared by the sidebar views.
import { el } from './render';

/** "just now", "4 min ago", "3 h ago", "2 d ago" or the date; `null` → "—". */
export function relativeTime(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return '—';
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  const s = (now - t) / 1000;
  if (s < 45) return 'just now';
  if (s < 90 * 60) return `${Math.max(1, Math.round(s / 60))} min ago`;
  if (s < 36 * 3600) return `${Math.round(s / 3600)} h ago`;
  if (s < 14 * 86400) return `${Math.round(s / 86400)} d ago`;
  return new Date(t).toISOString().slice(0, 10);
}

/** A local date and time, for tooltips and detail headers. */
export function localTime(iso: string | null | undefined): string {
  if (!iso) return '—';
  const t = Date.parse(iso);
  return Number.isNaN(t) ? iso : new Date(t).toLocaleString();
}

export function duration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return '—';
  if (seconds < 1) return `${(seconds * 1000).toFixed(seconds < 0.01 ? 1 : 0)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m} min ${Math.round(seconds - 60 * m)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** A time element: relative text, absolute time as tooltip and datetime attribute. */
export function timeEl(iso: string | null | undefined, cls = 'arrakis-time'): HTMLElement {
  const t = el('time', cls, relativeTime(iso));
  if (iso) {
    t.dateTime = iso;
    t.title = localTime(iso);
  }
  return t;
}

export function statusBadge(status: string | null | undefined): HTMLElement {
  const s = status ?? 'none';
  const badge = el('span', `arrakis-badge arrakis-status-${/^[a-z]+$/.test(s) ? s : 'other'}`, status ?? '—');
  badge.title = status ? `last run: ${status}` : 'no runs';
  return badge;
}

export function tagChips(tags: string[] | null | undefined): HTMLElement {
  const box = el('span', 'arrakis-tags');
  for (const tag of tags ?? []) box.appendChild(el('span', 'arrakis-tag', tag));
  return box;
}

export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

/** Remove ANSI colour codes (IPython tracebacks carry them). */
export function stripAnsi(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
}

/** An experiment name as the %%arrakis magic reads it (quoted when it has spaces or quotes). */
export function magicName(name: string): string {
  return /^[\w.:+\-=,@]+$/.test(name) ? name : `"${name.replace(/(["\\])/g, '\\$1')}"`;
}
