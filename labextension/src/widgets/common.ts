// Shared helpers of the arrakis anywidget front ends: binary traits, colormaps, formatting,
// a tooltip, a colour-scale legend and a canvas Heatmap (one pixel per cell, scaled up).

/** The part of the anywidget model these widgets use. */
export interface Model {
  get(name: string): any;
  set(name: string, value: unknown): void;
  save_changes(): void;
  on(event: string, cb: (...args: any[]) => void): void;
  off(event?: string | null, cb?: ((...args: any[]) => void) | null): void;
  send(content: unknown, callbacks?: unknown, buffers?: ArrayBuffer[]): void;
}

export interface RenderProps {
  model: Model;
  el: HTMLElement;
}

/** Subscriptions to model events, removed together on cleanup. */
export class Subscriptions {
  private subs: [string, (...args: any[]) => void][] = [];
  constructor(private model: Model) {}
  on(event: string, cb: (...args: any[]) => void): void {
    this.model.on(event, cb);
    this.subs.push([event, cb]);
  }
  off(): void {
    for (const [event, cb] of this.subs) this.model.off(event, cb);
    this.subs = [];
  }
}

// ---- binary traits (DataView, ArrayBuffer, typed array or plain number list) ----

function view<T>(v: unknown, width: number, make: (b: ArrayBufferLike, off: number, n: number) => T,
                 from: (a: number[]) => T): T {
  if (Array.isArray(v)) return from(v as number[]);
  let buf: ArrayBufferLike, off = 0, len = 0;
  if (v instanceof ArrayBuffer) [buf, len] = [v, v.byteLength];
  else if (ArrayBuffer.isView(v)) [buf, off, len] = [v.buffer, v.byteOffset, v.byteLength];
  else return make(new ArrayBuffer(0), 0, 0);
  const n = Math.floor(len / width);
  if (off % width === 0) return make(buf, off, n);
  return make(buf.slice(off, off + n * width), 0, n); // unaligned: copy
}

/** Little-endian float32 values of a binary trait or message buffer. */
export function float32(v: unknown): Float32Array {
  return view(v, 4, (b, o, n) => new Float32Array(b, o, n), (a) => Float32Array.from(a));
}

/** Little-endian int32 values of a binary trait or message buffer. */
export function int32(v: unknown): Int32Array {
  return view(v, 4, (b, o, n) => new Int32Array(b, o, n), (a) => Int32Array.from(a));
}

/** A list trait as strings (tolerates a missing value). */
export function strings(v: unknown): string[] {
  return Array.isArray(v) ? v.map((s) => String(s)) : [];
}

// ---- colormaps: 256-entry RGB lookup tables ----

export type Lut = Uint8Array;

function lutFrom(stops: number[][]): Lut {
  const lut = new Uint8Array(256 * 3);
  for (let k = 0; k < 256; k++) {
    const t = (k / 255) * (stops.length - 1);
    const a = Math.min(Math.floor(t), stops.length - 2), f = t - a;
    for (let c = 0; c < 3; c++) lut[k * 3 + c] = Math.round(stops[a][c] * (1 - f) + stops[a + 1][c] * f);
  }
  return lut;
}

/** Viridis (sequential, 0..1), from its nine-step samples. */
export const VIRIDIS: Lut = lutFrom([[68, 1, 84], [72, 40, 120], [62, 73, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [110, 206, 88], [253, 231, 37]]);

/** Blue-white-red (diverging, symmetric around 0), the RdBu seven-step samples. */
export const DIVERGING: Lut = lutFrom([[33, 102, 172], [103, 169, 207], [209, 229, 240], [247, 247, 247],
  [253, 219, 199], [239, 138, 98], [178, 24, 43]]);

export const NAN_RGB = [128, 128, 128];

/** RGBA pixels (one per value) for `values` mapped lo..hi through `lut`; NaN is grey. */
export function colorize(values: Float32Array, lo: number, hi: number, lut: Lut): Uint8ClampedArray {
  const n = values.length, out = new Uint8ClampedArray(n * 4);
  const scale = hi > lo ? 255 / (hi - lo) : 0;
  for (let k = 0, o = 0; k < n; k++, o += 4) {
    const v = values[k];
    out[o + 3] = 255;
    if (v !== v) {
      out[o] = NAN_RGB[0]; out[o + 1] = NAN_RGB[1]; out[o + 2] = NAN_RGB[2];
      continue;
    }
    let t = (v - lo) * scale;
    t = t < 0 ? 0 : t > 255 ? 255 : t;
    const c = Math.round(t) * 3;
    out[o] = lut[c]; out[o + 1] = lut[c + 1]; out[o + 2] = lut[c + 2];
  }
  return out;
}

/** Min and max of the finite values ([0, 0] when there are none). */
export function finiteRange(values: Float32Array): [number, number] {
  let lo = Infinity, hi = -Infinity;
  for (let k = 0; k < values.length; k++) {
    const v = values[k];
    if (!Number.isFinite(v)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return lo <= hi ? [lo, hi] : [0, 0];
}

/** Largest |v| over finite values. */
export function maxAbs(values: Float32Array): number {
  const [lo, hi] = finiteRange(values);
  return Math.max(Math.abs(lo), Math.abs(hi));
}

// ---- formatting ----

/** A number with `digits` decimals, or in exponent form when very small or large; NaN as "n/a". */
export function fmt(x: number, digits = 3): string {
  if (!Number.isFinite(x)) return Number.isNaN(x) ? "n/a" : String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a < 10 ** -digits || a >= 1e5)) return x.toExponential(2);
  return x.toFixed(digits);
}

/** fmt with an explicit "+" for non-negative values. */
export function signed(x: number, digits = 3): string {
  return (x >= 0 ? "+" : "") + fmt(x, digits);
}

/** A token as quoted text with control characters escaped: ' Mary', '\n'. */
export function quote(token: string): string {
  return "'" + token.replace(/\n/g, "\\n").replace(/\r/g, "\\r").replace(/\t/g, "\\t") + "'";
}

/** A token for drawing on one canvas line: newlines and tabs shown as symbols. */
export function visible(token: string): string {
  return token.replace(/\n/g, "↵").replace(/\r/g, "␍").replace(/\t/g, "⇥");
}

// ---- DOM ----

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, cls?: string, text?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** Prepares the widget root: classes and an empty body. Returns the render start time. */
export function setupRoot(el: HTMLElement, kind: string): number {
  const t0 = performance.now();
  el.replaceChildren();
  el.classList.add("arrakis-widget", `arrakis-${kind}`);
  delete el.dataset.ready;
  return t0;
}

/** Marks the first complete paint (data-ready, data-first-paint-ms); later calls do nothing. */
export function markReady(el: HTMLElement, t0: number): void {
  if (el.dataset.ready) return;
  el.dataset.firstPaintMs = (performance.now() - t0).toFixed(1);
  el.dataset.ready = "1";
}

/** Theme colours and font for canvas text, read from the JupyterLab CSS variables. */
export function theme(el: Element): { fg: string; fg2: string; border: string; font: string } {
  const s = getComputedStyle(el);
  const v = (name: string, fallback: string) => s.getPropertyValue(name).trim() || fallback;
  return {
    fg: v("--jp-ui-font-color1", "#222"),
    fg2: v("--jp-ui-font-color2", "#666"),
    border: v("--jp-border-color1", "#999"),
    font: v("--jp-ui-font-family", "system-ui, sans-serif"),
  };
}

/** Cuts `text` with an ellipsis so that it fits `maxW` px in the context's font. */
export function truncate(ctx: CanvasRenderingContext2D, text: string, maxW: number): string {
  if (ctx.measureText(text).width <= maxW) return text;
  let lo = 0, hi = text.length;
  while (lo < hi) { // longest prefix that fits with the ellipsis
    const mid = (lo + hi + 1) >> 1;
    if (ctx.measureText(text.slice(0, mid) + "…").width <= maxW) lo = mid;
    else hi = mid - 1;
  }
  return lo ? text.slice(0, lo) + "…" : "";
}

/** One absolutely positioned tooltip per widget. */
export class Tooltip {
  readonly el = h("div", "arrakis-tooltip");
  constructor(private root: HTMLElement) {
    root.appendChild(this.el);
  }
  show(text: string, clientX: number, clientY: number): void {
    const r = this.root.getBoundingClientRect();
    this.el.textContent = text;
    this.el.style.display = "block";
    let x = clientX - r.left + 14;
    const w = this.el.offsetWidth;
    if (x + w > r.width) x = Math.max(0, clientX - r.left - w - 10);
    this.el.style.left = `${x}px`;
    this.el.style.top = `${clientY - r.top + 14}px`;
  }
  hide(): void {
    this.el.style.display = "none";
  }
}

/** Colour-scale legend: label, min, gradient bar, max. */
export class Legend {
  readonly el = h("div", "arrakis-legend");
  private label = h("span", "arrakis-legend-label");
  private lo = h("span", "arrakis-legend-min");
  private hi = h("span", "arrakis-legend-max");
  private bar = h("canvas", "arrakis-legend-bar");
  constructor() {
    this.bar.width = 128;
    this.bar.height = 1;
    this.el.append(this.label, this.lo, this.bar, this.hi);
  }
  update(lut: Lut, lo: number, hi: number, label: string, plus = false): void {
    const ramp = new Float32Array(128).map((_, k) => k / 127);
    this.bar.getContext("2d")!.putImageData(new ImageData(colorize(ramp, 0, 1, lut), 128, 1), 0, 0);
    this.label.textContent = label;
    this.lo.textContent = plus ? signed(lo) : fmt(lo);
    this.hi.textContent = plus ? signed(hi) : fmt(hi);
  }
}

// ---- Heatmap ----

/** Colour scale of a heatmap: values lo..hi through lut; how sub-pixel cells are pooled. */
export interface Scale {
  lo: number;
  hi: number;
  lut: Lut;
  pool?: "max" | "absmax";
}

/** Downsamples rows × cols values to outR × outC, keeping the largest (or largest |v|) value per pixel. */
export function pool(values: Float32Array, rows: number, cols: number, outR: number, outC: number, absmax: boolean): Float32Array {
  const out = new Float32Array(outR * outC).fill(NaN), colOf = new Int32Array(cols);
  for (let j = 0; j < cols; j++) colOf[j] = Math.floor((j * outC) / cols);
  for (let i = 0; i < rows; i++) {
    const base = Math.floor((i * outR) / rows) * outC, src = i * cols;
    for (let j = 0; j < cols; j++) {
      const v = values[src + j], o = base + colOf[j], cur = out[o];
      if (v !== v) continue;
      if (cur !== cur || (absmax ? Math.abs(v) > Math.abs(cur) : v > cur)) out[o] = v;
    }
  }
  return out;
}

export interface HeatmapOptions {
  /** Largest cell size and plot area in CSS px; cells shrink (even below 1 px) to fit. */
  cellW: number;
  cellH: number;
  maxW: number;
  maxH: number;
  /** Keep cells square (attention patterns). */
  square?: boolean;
  rowTitle?: string;
  colTitle?: string;
  /** Tooltip text of a cell. */
  tooltip: (i: number, j: number) => string;
  onClick?: (i: number, j: number) => void;
  /** Text drawn inside cells when they are at least 28 CSS px wide. */
  cellText?: (i: number, j: number) => string;
  label: string;
}

const LABEL_GAP = 12; // least CSS px between two drawn labels
const MAX_LABEL_W = 140;
const TITLE_H = 16;

/**
 * A rows × cols colour matrix on one canvas: the cells are an ImageData of one pixel per cell, drawn
 * scaled without smoothing. Labels are thinned out when dense (hover shows the full label); hover and
 * click map mouse coordinates to a cell in O(1); arrow keys move a cursor cell, Enter/Space click it.
 */
export class Heatmap {
  readonly canvas = h("canvas", "arrakis-heatmap");
  private image = document.createElement("canvas");
  private rgba = new Uint8ClampedArray(0);
  private rowLabels: string[] = [];
  private colLabels: string[] = [];
  private rows = 0;
  private cols = 0;
  private cw = 1;
  private ch = 1;
  private left = 0;
  private top = 0;
  private rowStep = 1;
  private colStep = 1;
  private rowLabelW = 0;
  private colLabelH = 0;
  private colsRotated = false;
  private selected: [number, number] | null = null;
  private cursor: [number, number] | null = null;
  private focused = false;

  constructor(private opts: HeatmapOptions, private tip: Tooltip) {
    const c = this.canvas;
    c.tabIndex = 0;
    c.setAttribute("role", "grid");
    c.setAttribute("aria-label", opts.label);
    c.addEventListener("mousemove", (e) => this.hover(e));
    c.addEventListener("mouseleave", () => this.tip.hide());
    c.addEventListener("click", (e) => this.click(e));
    c.addEventListener("keydown", (e) => this.key(e));
    c.addEventListener("focus", () => { this.focused = true; this.cursor ??= this.selected ?? [0, 0]; this.draw(); });
    c.addEventListener("blur", () => { this.focused = false; this.tip.hide(); this.draw(); });
  }

  /**
   * New values (row-major rows × cols), colour scale and labels; lays out and draws. When cells are
   * smaller than a device pixel, each pixel shows the largest value (or largest |value|) it covers, so
   * that sparse features (a stripe, one strong key) stay visible.
   */
  update(values: Float32Array, scale: Scale, rowLabels: string[], colLabels: string[]): void {
    this.rowLabels = rowLabels;
    this.colLabels = colLabels;
    this.rows = rowLabels.length;
    this.cols = colLabels.length;
    if (this.cursor && (this.cursor[0] >= this.rows || this.cursor[1] >= this.cols)) this.cursor = null;
    this.layout();
    const dpr = window.devicePixelRatio || 1, { rows, cols } = this;
    const outR = Math.min(rows, Math.ceil(rows * this.ch * dpr)), outC = Math.min(cols, Math.ceil(cols * this.cw * dpr));
    const cells = values.length >= rows * cols ? values.subarray(0, rows * cols) : new Float32Array(rows * cols).fill(NaN);
    const pixels = outR < rows || outC < cols ? pool(cells, rows, cols, outR, outC, scale.pool === "absmax") : cells;
    this.rgba = colorize(pixels, scale.lo, scale.hi, scale.lut);
    this.image.width = Math.max(1, outC);
    this.image.height = Math.max(1, outR);
    if (rows && cols) this.image.getContext("2d")!.putImageData(new ImageData(this.rgba, outC, outR), 0, 0);
    this.draw();
  }

  /** Changes options (axis titles, sizes, callbacks); takes effect on the next update. */
  configure(opts: Partial<HeatmapOptions>): void {
    Object.assign(this.opts, opts);
  }

  setSelected(cell: [number, number] | null): void {
    this.selected = cell;
    this.draw();
  }

  private ctx(): CanvasRenderingContext2D {
    return this.canvas.getContext("2d")!;
  }

  private layout(): void {
    const o = this.opts, ctx = this.ctx();
    let cw = Math.min(o.cellW, o.maxW / Math.max(1, this.cols));
    let ch = Math.min(o.cellH, o.maxH / Math.max(1, this.rows));
    if (o.square) cw = ch = Math.min(cw, ch);
    this.cw = cw;
    this.ch = ch;
    ctx.font = `11px ${theme(this.canvas).font}`;
    this.rowStep = Math.max(1, Math.ceil(LABEL_GAP / ch));
    let rowW = 0;
    for (let i = 0; i < this.rows; i += this.rowStep) rowW = Math.max(rowW, ctx.measureText(visible(this.rowLabels[i])).width);
    this.rowLabelW = Math.min(rowW, MAX_LABEL_W) + 6;
    let colW = 0;
    for (let j = 0; j < this.cols; j++) colW = Math.max(colW, ctx.measureText(visible(this.colLabels[j])).width);
    this.colsRotated = colW + 4 > cw;
    if (this.colsRotated) {
      this.colStep = Math.max(1, Math.ceil(LABEL_GAP / cw));
      this.colLabelH = Math.min(colW, MAX_LABEL_W) + 6;
    } else {
      this.colStep = 1;
      this.colLabelH = 16;
    }
    this.left = (o.rowTitle ? TITLE_H : 0) + this.rowLabelW;
    this.top = (o.colTitle ? TITLE_H : 0) + this.colLabelH;
    const cssW = Math.ceil(this.left + this.cols * cw + 6), cssH = Math.ceil(this.top + this.rows * ch + 4);
    const dpr = window.devicePixelRatio || 1;
    this.canvas.width = Math.round(cssW * dpr);
    this.canvas.height = Math.round(cssH * dpr);
    this.canvas.style.width = `${cssW}px`;
    this.canvas.style.height = `${cssH}px`;
    // Geometry for tests and tools: a cell's CSS position is (left + j*cellW, top + i*cellH).
    Object.assign(this.canvas.dataset, { left: String(this.left), top: String(this.top), cellW: String(cw), cellH: String(ch) });
  }

  /** Redraws cells, labels, selection and cursor. */
  draw(): void {
    const ctx = this.ctx(), th = theme(this.canvas), dpr = window.devicePixelRatio || 1;
    const { left, top, cw, ch, rows, cols } = this;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    if (!rows || !cols) return;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.image, left, top, cols * cw, rows * ch);
    ctx.font = `11px ${th.font}`;
    ctx.fillStyle = th.fg;
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (let i = 0; i < rows; i += this.rowStep) {
      ctx.fillText(truncate(ctx, visible(this.rowLabels[i]), this.rowLabelW - 6), left - 4, top + (i + 0.5) * ch);
    }
    for (let j = 0; j < cols; j += this.colStep) {
      const x = left + (j + 0.5) * cw, text = truncate(ctx, visible(this.colLabels[j]), this.colLabelH - 6);
      if (!this.colsRotated) {
        ctx.textAlign = "center";
        ctx.fillText(text, x, top - 8);
        continue;
      }
      ctx.save();
      ctx.translate(x, top - 4);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left";
      ctx.fillText(text, 0, 0);
      ctx.restore();
    }
    ctx.fillStyle = th.fg2;
    ctx.textAlign = "center";
    if (this.opts.colTitle) ctx.fillText(this.opts.colTitle, left + (cols * cw) / 2, TITLE_H / 2);
    if (this.opts.rowTitle) {
      ctx.save();
      ctx.translate(TITLE_H / 2, top + (rows * ch) / 2);
      ctx.rotate(-Math.PI / 2);
      ctx.fillText(this.opts.rowTitle, 0, 0);
      ctx.restore();
    }
    this.drawCellText(ctx);
    if (this.selected) this.outline(ctx, this.selected, "#ff2d78", 2, []);
    if (this.focused && this.cursor) this.outline(ctx, this.cursor, th.fg, 1.5, [3, 2]);
  }

  private drawCellText(ctx: CanvasRenderingContext2D): void {
    const text = this.opts.cellText;
    if (!text || this.cw < 28 || this.ch < 12) return;
    ctx.textAlign = "center";
    for (let i = 0; i < this.rows; i++) {
      for (let j = 0; j < this.cols; j++) {
        const o = (i * this.cols + j) * 4, p = this.rgba;
        const light = 0.299 * p[o] + 0.587 * p[o + 1] + 0.114 * p[o + 2] > 140;
        ctx.fillStyle = light ? "#000" : "#fff";
        ctx.fillText(truncate(ctx, visible(text(i, j)), this.cw - 3),
          this.left + (j + 0.5) * this.cw, this.top + (i + 0.5) * this.ch);
      }
    }
  }

  private outline(ctx: CanvasRenderingContext2D, [i, j]: [number, number], color: string, width: number, dash: number[]): void {
    if (i < 0 || j < 0 || i >= this.rows || j >= this.cols) return;
    const w = Math.max(this.cw, 5), hh = Math.max(this.ch, 5);
    const x = this.left + (j + 0.5) * this.cw - w / 2, y = this.top + (i + 0.5) * this.ch - hh / 2;
    ctx.save();
    ctx.strokeStyle = color;
    ctx.lineWidth = width;
    ctx.setLineDash(dash);
    ctx.strokeRect(x, y, w, hh);
    ctx.restore();
  }

  /** The cell (or label: -1 for the other index) under a mouse event; null outside. */
  private at(e: MouseEvent): [number, number] | null {
    const r = this.canvas.getBoundingClientRect();
    const x = e.clientX - r.left, y = e.clientY - r.top;
    const j = Math.floor((x - this.left) / this.cw), i = Math.floor((y - this.top) / this.ch);
    const inRow = i >= 0 && i < this.rows, inCol = j >= 0 && j < this.cols;
    if (inRow && inCol) return [i, j];
    if (inRow && x < this.left) return [i, -1];
    if (inCol && y < this.top) return [-1, j];
    return null;
  }

  private hover(e: MouseEvent): void {
    const cell = this.at(e);
    const inPlot = cell !== null && cell[0] >= 0 && cell[1] >= 0;
    this.canvas.style.cursor = inPlot && this.opts.onClick ? "pointer" : "default";
    if (!cell) return this.tip.hide();
    const [i, j] = cell;
    const text = j < 0 ? this.rowLabels[i] : i < 0 ? this.colLabels[j] : this.opts.tooltip(i, j);
    this.tip.show(text, e.clientX, e.clientY);
  }

  private click(e: MouseEvent): void {
    const cell = this.at(e);
    if (!cell || cell[0] < 0 || cell[1] < 0) return;
    this.cursor = cell;
    this.opts.onClick?.(cell[0], cell[1]);
  }

  private key(e: KeyboardEvent): void {
    const moves: Record<string, [number, number]> = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    const [i, j] = this.cursor ?? this.selected ?? [0, 0];
    if (e.key in moves) {
      const [di, dj] = moves[e.key];
      this.cursor = [Math.min(this.rows - 1, Math.max(0, i + di)), Math.min(this.cols - 1, Math.max(0, j + dj))];
      this.draw();
      const r = this.canvas.getBoundingClientRect();
      const [ci, cj] = this.cursor;
      this.tip.show(this.opts.tooltip(ci, cj), r.left + this.left + (cj + 1) * this.cw, r.top + this.top + (ci + 1) * this.ch);
    } else if (e.key === "Enter" || e.key === " ") {
      this.cursor = [i, j];
      this.opts.onClick?.(i, j);
    } else {
      return;
    }
    e.preventDefault();
  }
}
