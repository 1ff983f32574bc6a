// Readable views of stored results: the JSON trees the store writes, where marked nodes
// {"__arrakis__": {"type": ...}} stand for tensors, arrays, DataFrames, figures, tuples, sets,
// non-string-keyed dicts, dataclasses, non-finite floats and values that could not be serialised.
// Everything is built with DOM calls and textContent (stored values are never parsed as HTML).

const MARK = '__arrakis__';
const MAX_ITEMS = 100; // children shown per list/object before a "… n more" button
const MAX_STRING = 2000;

/** Fetches artefact files through the authenticated API (tables, images, downloads). */
export interface ArtefactLoader {
  fetch(hash: string): Promise<Response>;
  url(hash: string): string;
}

type Node = Record<string, unknown>;

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  cls?: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** A number as the API sends it: a JSON number, or "inf", "-inf" or "nan" (JSON has no such numbers);
 * null for anything else. */
export function numeric(x: unknown): number | null {
  if (typeof x === 'number') return x;
  if (x === 'inf') return Infinity;
  if (x === '-inf') return -Infinity;
  if (x === 'nan') return NaN;
  return null;
}

/** A number (or "inf", "-inf", "nan" as the API sends them) for display; `missing` for anything else. */
export function formatNumber(value: unknown, missing = ''): string {
  const x = numeric(value);
  if (x === null) return missing;
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  if (Number.isInteger(x)) return String(x);
  const abs = Math.abs(x);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return x.toExponential(4);
  return String(Number(x.toPrecision(6)));
}

function marked(value: unknown): Node | null {
  if (value && typeof value === 'object' && !Array.isArray(value) && MARK in (value as Node)) {
    const node = (value as Node)[MARK];
    if (node && typeof node === 'object') return node as Node;
  }
  return null;
}

function shape(node: Node): string {
  return Array.isArray(node.shape) ? `[${(node.shape as unknown[]).join(', ')}]` : '';
}

/** A one-line label of a marked node ("Tensor[2, 3] float32 · min 0.1 · max 0.9"). */
export function describeMarked(node: Node): string {
  const type = String(node.type);
  switch (type) {
    case 'tensor':
    case 'ndarray': {
      let text = `${type === 'tensor' ? 'Tensor' : 'ndarray'}${shape(node)} ${node.dtype ?? ''}`.trim();
      const s = node.summary as { min?: unknown; max?: unknown; mean?: unknown } | undefined;
      if (s && typeof s === 'object') {
        const parts = (['min', 'max', 'mean'] as const)
          .filter(k => numeric(s[k]) !== null)
          .map(k => `${k} ${formatNumber(s[k])}`);
        if (parts.length) text += ` · ${parts.join(' · ')}`;
      }
      return text;
    }
    case 'dataframe': {
      const sh = (node.shape as number[] | undefined) ?? [];
      return `DataFrame ${sh[0] ?? '?'}×${sh[1] ?? '?'}`;
    }
    case 'series': {
      const sh = (node.shape as number[] | undefined) ?? [];
      return `Series ${sh[0] ?? '?'}${node.name !== undefined && node.name !== null ? ` (${node.name})` : ''}`;
    }
    case 'figure':
      return `figure (${node.format ?? '?'}${node.cls ? `, ${node.cls}` : ''})`;
    case 'unserialisable':
      return `${node.python_type ?? 'object'} (not stored): ${node.repr ?? ''}`;
    case 'float':
      return String(node.value);
    case 'enum':
      return `${node.cls}.${node.name}`;
    case 'path':
    case 'datetime':
    case 'date':
      return String(node.value);
    default:
      return type;
  }
}

/** A plain-text summary of a value (used in comparison tables). */
export function summarize(value: unknown, depth = 0): string {
  const node = marked(value);
  if (node) {
    const type = String(node.type);
    if ((type === 'tuple' || type === 'set') && Array.isArray(node.items) && depth < 2) {
      const inner = (node.items as unknown[]).slice(0, 12).map(v => summarize(v, depth + 1));
      return type === 'tuple' ? `(${inner.join(', ')})` : `{${inner.join(', ')}}`;
    }
    return describeMarked(node);
  }
  if (value === null || value === undefined) return 'None';
  if (typeof value === 'number') return formatNumber(value);
  if (typeof value === 'boolean') return value ? 'True' : 'False';
  if (typeof value === 'string') return JSON.stringify(value.length > 80 ? value.slice(0, 80) + '…' : value);
  if (Array.isArray(value)) {
    if (depth >= 2) return `list[${value.length}]`;
    const inner = value.slice(0, 12).map(v => summarize(v, depth + 1));
    return `[${inner.join(', ')}${value.length > 12 ? `, … ${value.length - 12} more` : ''}]`;
  }
  if (typeof value === 'object') {
    const keys = Object.keys(value as object);
    if (depth >= 2) return `dict[${keys.length}]`;
    const inner = keys.slice(0, 6).map(k => `${k}: ${summarize((value as Node)[k], depth + 1)}`);
    return `{${inner.join(', ')}${keys.length > 6 ? ', …' : ''}}`;
  }
  return String(value);
}

function isLeaf(value: unknown): boolean {
  if (value === null || typeof value !== 'object') return true;
  const node = marked(value);
  if (!node) return false;
  const type = String(node.type);
  return ![
    'tuple',
    'set',
    'dict',
    'dataclass',
    'namedtuple',
    'ndarray_list',
    'dataframe',
    'series',
    'figure',
    'tensor',
    'ndarray'
  ].includes(type);
}

function leaf(value: unknown): HTMLElement {
  const node = marked(value);
  if (node) {
    const type = String(node.type);
    const span = el('span', `arrakis-val arrakis-val-${type}`, describeMarked(node));
    if (type === 'unserialisable' && node.reason) span.title = String(node.reason);
    return span;
  }
  if (value === null || value === undefined) return el('span', 'arrakis-val arrakis-val-none', 'None');
  if (typeof value === 'number') return el('span', 'arrakis-val arrakis-val-number', formatNumber(value));
  if (typeof value === 'boolean') return el('span', 'arrakis-val arrakis-val-bool', value ? 'True' : 'False');
  if (typeof value === 'string') {
    if (value.length > MAX_STRING || value.includes('\n')) {
      const pre = el('pre', 'arrakis-val arrakis-val-string arrakis-val-block');
      pre.textContent = value.length > MAX_STRING ? value.slice(0, MAX_STRING) + `… (${value.length} chars)` : value;
      return pre;
    }
    return el('span', 'arrakis-val arrakis-val-string', JSON.stringify(value));
  }
  return el('span', 'arrakis-val', String(value));
}

/** Entries (label, value) of a container value, or null for leaves. */
function entries(value: unknown): { label: string; entries: [string, unknown][] } | null {
  const node = marked(value);
  if (node) {
    const type = String(node.type);
    if ((type === 'tuple' || type === 'set' || type === 'ndarray_list') && Array.isArray(node.items)) {
      const items = node.items as unknown[];
      const label = type === 'ndarray_list' ? `ndarray (${node.dtype}) ${items.length}` : `${type}[${items.length}]`;
      return { label, entries: items.map((v, i) => [String(i), v]) };
    }
    if (type === 'dict' && Array.isArray(node.items)) {
      const items = node.items as [unknown, unknown][];
      return { label: `dict[${items.length}]`, entries: items.map(([k, v]) => [summarize(k), v]) };
    }
    if ((type === 'dataclass' || type === 'namedtuple') && node.fields && typeof node.fields === 'object') {
      const fields = node.fields as Node;
      return { label: String(node.cls ?? type), entries: Object.keys(fields).map(k => [k, fields[k]]) };
    }
    return null;
  }
  if (Array.isArray(value)) return { label: `list[${value.length}]`, entries: value.map((v, i) => [String(i), v]) };
  if (value && typeof value === 'object') {
    const obj = value as Node;
    const keys = Object.keys(obj);
    return { label: `dict[${keys.length}]`, entries: keys.map(k => [k, obj[k]]) };
  }
  return null;
}

/** A tree view (`.arrakis-tree`) of a stored JSON value. */
export function renderValue(value: unknown, loader: ArtefactLoader, depth = 0): HTMLElement {
  const node = marked(value);
  if (node) {
    const type = String(node.type);
    if (type === 'figure') return renderFigure(node, loader);
    if (type === 'dataframe' || type === 'series') return renderFrame(node, loader);
    if ((type === 'tensor' || type === 'ndarray') && typeof node.artefact === 'string') {
      const box = el('span', 'arrakis-val-with-action');
      box.appendChild(leaf(value));
      box.appendChild(downloadButton(loader, node.artefact as string, `${type}.safetensors`));
      return box;
    }
  }
  const children = entries(value);
  if (!children) return leaf(value);
  // short lists, tuples and sets of plain values stay on one line
  const plain = (v: unknown): boolean =>
    v === null || typeof v === 'number' || typeof v === 'boolean' || (typeof v === 'string' && v.length <= 40);
  const sequence = Array.isArray(value) || ['tuple', 'set'].includes(String(node?.type));
  if (sequence && children.entries.length <= 12 && children.entries.every(([, v]) => plain(v))) {
    return el('span', 'arrakis-val arrakis-val-inline', summarize(value));
  }
  const details = el('details', 'arrakis-tree');
  details.open = depth < 2;
  const summary = el('summary', 'arrakis-tree-label', children.label);
  details.appendChild(summary);
  const list = el('div', 'arrakis-tree-items');
  const show = (from: number): void => {
    const to = Math.min(children.entries.length, from + MAX_ITEMS);
    for (let i = from; i < to; i++) {
      const [k, v] = children.entries[i];
      const row = el('div', 'arrakis-tree-row');
      row.appendChild(el('span', 'arrakis-tree-key', k));
      row.appendChild(isLeaf(v) ? leaf(v) : renderValue(v, loader, depth + 1));
      list.appendChild(row);
    }
    if (to < children.entries.length) {
      const more = el('button', 'arrakis-link', `… ${children.entries.length - to} more`);
      more.onclick = () => {
        more.remove();
        show(to);
      };
      list.appendChild(more);
    }
  };
  // children of closed nodes are built when first opened
  if (details.open) {
    show(0);
  } else {
    details.addEventListener('toggle', () => details.open && !list.childElementCount && show(0));
  }
  details.appendChild(list);
  return details;
}

function downloadButton(loader: ArtefactLoader, hash: string, filename: string): HTMLElement {
  const button = el('button', 'arrakis-link arrakis-download', 'download');
  button.title = `download the artefact ${hash.slice(0, 12)}…`;
  button.onclick = async () => {
    const response = await loader.fetch(hash);
    const url = URL.createObjectURL(await response.blob());
    const a = el('a');
    a.href = url;
    a.download = filename;
    a.click();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  };
  return button;
}

/** A PNG figure as an image, an HTML figure (bokeh, widgets' static views) in a sandboxed frame. */
export function renderFigure(node: Node, loader: ArtefactLoader): HTMLElement {
  const box = el('div', 'arrakis-figure');
  const hash = typeof node.artefact === 'string' ? node.artefact : '';
  box.dataset.format = String(node.format ?? '');
  box.appendChild(el('div', 'arrakis-figure-label', describeMarked(node)));
  if (!hash) return box;
  if (node.format === 'png') {
    const img = el('img', 'arrakis-figure-img');
    img.alt = describeMarked(node);
    loader
      .fetch(hash)
      .then(r => r.blob())
      .then(blob => {
        img.src = URL.createObjectURL(blob);
      })
      .catch(() => (img.alt = 'figure not available'));
    box.appendChild(img);
  } else if (node.format === 'html') {
    const show = el('button', 'arrakis-link', 'show figure');
    show.onclick = async () => {
      const html = await (await loader.fetch(hash)).text();
      const frame = el('iframe', 'arrakis-figure-frame');
      frame.setAttribute('sandbox', 'allow-scripts');
      frame.srcdoc = html;
      show.replaceWith(frame);
    };
    box.appendChild(show);
  }
  return box;
}

type TableJSON =
  | { schema?: { fields?: { name: string }[] }; data?: Record<string, unknown>[] } // orient="table"
  | { columns?: unknown[]; index?: unknown[]; data?: unknown[][] }; // orient="split"

/** A DataFrame / Series: its shape, and its first rows on demand (read from the artefact file). */
function renderFrame(node: Node, loader: ArtefactLoader): HTMLElement {
  const box = el('div', 'arrakis-frame');
  const head = el('span', 'arrakis-val arrakis-val-dataframe', describeMarked(node));
  box.appendChild(head);
  const hash = typeof node.artefact === 'string' ? node.artefact : '';
  if (!hash) return box;
  const show = el('button', 'arrakis-link', 'show rows');
  show.onclick = async () => {
    show.disabled = true;
    try {
      const json = (await (await loader.fetch(hash)).json()) as TableJSON;
      show.replaceWith(frameTable(json, 50));
    } catch (err) {
      show.textContent = `cannot read the table: ${(err as Error).message}`;
    }
  };
  box.appendChild(show);
  return box;
}

function frameTable(json: TableJSON, maxRows: number): HTMLElement {
  let columns: string[] = [];
  let rows: unknown[][] = [];
  if ('schema' in json && json.schema && Array.isArray(json.data)) {
    columns = (json.schema.fields ?? []).map(f => f.name);
    rows = (json.data as Record<string, unknown>[]).map(r => columns.map(c => r[c]));
  } else if ('columns' in json && Array.isArray(json.data)) {
    columns = ['', ...(json.columns ?? []).map(c => String(c))];
    rows = (json.data as unknown[][]).map((r, i) => [json.index?.[i] ?? i, ...r]);
  }
  const table = el('table', 'arrakis-table arrakis-frame-table');
  const head = table.createTHead().insertRow();
  columns.forEach(c => head.appendChild(el('th', undefined, c)));
  const body = table.createTBody();
  for (const r of rows.slice(0, maxRows)) {
    const tr = body.insertRow();
    r.forEach(v => tr.appendChild(el('td', undefined, summarize(v, 2))));
  }
  const wrap = el('div', 'arrakis-scroll-x');
  wrap.appendChild(table);
  if (rows.length > maxRows) wrap.appendChild(el('div', 'arrakis-muted', `first ${maxRows} of ${rows.length} rows`));
  return wrap;
}

/** The figures saved with a run (a list of figure nodes). */
export function renderFigures(figures: unknown, loader: ArtefactLoader): HTMLElement | null {
  const list = Array.isArray(figures) ? figures : [];
  if (!list.length) return null;
  const box = el('div', 'arrakis-figures');
  for (const f of list) {
    const node = marked(f);
    box.appendChild(node && node.type === 'figure' ? renderFigure(node, loader) : renderValue(f, loader));
  }
  return box;
}
