// Head explorer: a layers × heads grid of head scores; clicking a head fetches its attention pattern
// from Python (cached), shows it (with up to one pinned head beside it) and colours the text by it.
import {
  float32, fmt, h, Heatmap, Legend, markReady, quote, RenderProps, setupRoot, strings, Subscriptions, Tooltip,
  finiteRange, VIRIDIS,
} from "./common";

type Pair = [number, number];

const keyOf = ([l, hd]: Pair) => `${l},${hd}`;
const nameOf = (key: string) => { const [l, hd] = key.split(","); return `L${l}H${hd}`; };
const pairOf = (key: string) => key.split(",").map(Number) as Pair;

/** [layer, head] from a trait value, or null. */
function pair(v: unknown): Pair | null {
  return Array.isArray(v) && v.length === 2 && v.every((x) => Number.isInteger(x) && x >= 0) ? [v[0], v[1]] : null;
}

function pairs(v: unknown): Pair[] {
  return Array.isArray(v) ? v.map(pair).filter((p): p is Pair => p !== null) : [];
}

interface Panel {
  key: string;
  el: HTMLDivElement;
  tag: HTMLSpanElement;
  unpin: HTMLButtonElement;
  body: HTMLDivElement;
  heatmap: Heatmap | null;
  drawn: boolean;
}

function render({ model, el }: RenderProps): () => void {
  const t0 = setupRoot(el, "head-explorer");
  const subs = new Subscriptions(model);
  const tip = new Tooltip(el);

  const cache = new Map<string, Float32Array>(); // "L,H" -> pattern [n, n]
  const inflight = new Set<string>();
  const failed = new Set<string>(); // heads whose last request got an error reply
  const receivedAt = new Map<string, number>();
  const panels = new Map<string, Panel>();
  let tokens: string[] = [];
  let labels: string[] = [];
  let focus: string | null = null; // the most recently selected head: the text view uses its pattern
  let gridValues = new Float32Array(0);

  // ---- DOM ----
  const title = h("span", "arrakis-title");
  const select = h("select", "arrakis-score-select");
  select.setAttribute("aria-label", "score");
  const pinButton = h("button", "arrakis-pin", "pin");
  const header = h("div", "arrakis-header");
  header.append(title, h("label", "arrakis-label", "score"), select, pinButton);
  const legend = new Legend();
  const grid = new Heatmap({
    cellW: 30, cellH: 16, maxW: 420, maxH: 560, label: "attention heads: layers × heads",
    tooltip: (l, hd) => `L${l}H${hd} ${scoreName()} = ${fmt(gridValues[l * nHeads() + hd])}`,
    onClick: (l, hd) => choose([l, hd]),
  }, tip);
  const gridBox = h("div", "arrakis-grid");
  gridBox.append(grid.canvas, legend.el);
  const panelsBox = h("div", "arrakis-panels");
  const main = h("div", "arrakis-main");
  main.append(gridBox, panelsBox);
  const errorBox = h("div", "arrakis-error");
  const note = h("div", "arrakis-note");
  const textHead = h("span", "arrakis-text-head");
  const textLegend = h("span", "arrakis-text-legend");
  textLegend.append(h("span", "arrakis-swatch arrakis-attends-to", "attends to"), h("span", "arrakis-swatch arrakis-attended-by", "attended by"));
  const textHeader = h("div", "arrakis-header");
  textHeader.append(textHead, textLegend);
  const tokensBox = h("div", "arrakis-tokens");
  el.append(header, main, errorBox, note, textHeader, tokensBox);

  const nHeads = () => Number(model.get("n_heads")) || 0;
  const scoreName = () => String(model.get("score") ?? "");

  // ---- grid ----
  function drawSelect(): void {
    const names = strings(model.get("score_names"));
    select.replaceChildren(...names.map((n) => { const o = h("option", "", n); o.value = n; return o; }));
    select.value = scoreName();
  }

  function drawGrid(): void {
    const nL = Number(model.get("n_layers")) || 0, nH = nHeads(), size = nL * nH;
    const all = float32(model.get("scores"));
    const s = Math.max(0, strings(model.get("score_names")).indexOf(scoreName()));
    gridValues = new Float32Array(size).fill(NaN);
    gridValues.set(all.subarray(s * size, Math.min(all.length, (s + 1) * size)));
    const [lo, hi] = finiteRange(gridValues);
    grid.update(gridValues, { lo, hi, lut: VIRIDIS },
      Array.from({ length: nL }, (_, l) => `L${l}`), Array.from({ length: nH }, (_, hd) => `H${hd}`));
    grid.setSelected(pair(model.get("selected")));
    legend.update(VIRIDIS, lo, hi, scoreName());
    select.value = scoreName();
  }

  select.addEventListener("change", () => {
    model.set("score", select.value);
    model.save_changes();
    drawGrid();
  });

  // ---- heads: selection, pins, pattern requests ----
  function choose(p: Pair): void {
    model.set("selected", p);
    model.save_changes();
    open(p);
  }

  function open(p: Pair): void {
    focus = keyOf(p);
    grid.setSelected(p);
    errorBox.textContent = "";
    renderPanels();
  }

  function request(key: string): void {
    if (cache.has(key) || inflight.has(key)) return;
    inflight.add(key);
    failed.delete(key);
    const [layer, head] = pairOf(key);
    model.send({ type: "pattern", layer, head });
  }

  /** Heads to show: the 2 pinned, else the pinned one(s) and the selected one. */
  function shownKeys(): string[] {
    const pins = pairs(model.get("pinned")).map(keyOf);
    const s = pair(model.get("selected"));
    if (pins.length >= 2 || !s || pins.includes(keyOf(s))) return pins.slice(-2);
    return [...pins, keyOf(s)].slice(-2);
  }

  pinButton.addEventListener("click", () => {
    const s = pair(model.get("selected"));
    if (s) togglePin(keyOf(s));
  });

  function togglePin(key: string): void {
    let pins = pairs(model.get("pinned")).map(keyOf);
    pins = pins.includes(key) ? pins.filter((k) => k !== key) : [...pins, key].slice(-2);
    model.set("pinned", pins.map(pairOf));
    model.save_changes();
    renderPanels();
  }

  function renderPanels(): void {
    const shown = shownKeys(), pins = pairs(model.get("pinned")).map(keyOf);
    if (focus) request(focus);
    for (const [key, p] of panels) if (!shown.includes(key)) { p.el.remove(); panels.delete(key); }
    for (const key of shown) {
      request(key);
      const p = panels.get(key) ?? makePanel(key);
      panels.set(key, p);
      p.tag.textContent = pins.includes(key) ? "pinned" : "";
      p.unpin.hidden = !pins.includes(key);
      if (cache.has(key)) { if (!p.drawn) drawPanel(p); }
      else if (!failed.has(key)) { p.body.textContent = `loading ${nameOf(key)}…`; p.body.classList.remove("arrakis-error"); }
      panelsBox.appendChild(p.el); // (re)orders
    }
    note.textContent = focus && !shown.includes(focus)
      ? `2 heads are pinned: unpin one to see ${nameOf(focus)} beside them (the text view below uses ${nameOf(focus)}).` : "";
    const s = pair(model.get("selected"));
    pinButton.disabled = !s;
    pinButton.textContent = s ? `${pins.includes(keyOf(s)) ? "unpin" : "pin"} L${s[0]}H${s[1]}` : "pin";
    paintText();
  }

  function makePanel(key: string): Panel {
    const el = h("div", "arrakis-panel"), top = h("div", "arrakis-panel-header");
    const title = h("span", "arrakis-panel-title", nameOf(key));
    title.dataset.head = nameOf(key);
    const tag = h("span", "arrakis-panel-tag"), unpin = h("button", "arrakis-unpin", "unpin");
    unpin.addEventListener("click", () => togglePin(key));
    top.append(title, tag, unpin);
    const body = h("div", "arrakis-panel-body", `loading ${nameOf(key)}…`);
    el.dataset.key = key;
    el.append(top, body);
    return { key, el, tag, unpin, body, heatmap: null, drawn: false };
  }

  function drawPanel(p: Panel): void {
    const start = performance.now(), pattern = cache.get(p.key)!, n = tokens.length;
    if (!p.heatmap) {
      p.heatmap = new Heatmap({
        cellW: 24, cellH: 24, maxW: 360, maxH: 360, square: true, rowTitle: "query", colTitle: "key",
        label: `attention pattern of ${nameOf(p.key)}`,
        tooltip: (i, j) => `query ${i}:${quote(tokens[i])} → key ${j}:${quote(tokens[j])} = ${fmt(cache.get(p.key)?.[i * n + j] ?? NaN)}`,
        onClick: (i) => setQuery(i),
      }, tip);
      const legend = new Legend();
      legend.update(VIRIDIS, 0, 1, "attention");
      p.body.replaceChildren(p.heatmap.canvas, legend.el);
      p.body.classList.remove("arrakis-error");
    }
    p.heatmap.update(pattern.subarray(0, n * n), { lo: 0, hi: 1, lut: VIRIDIS }, labels, labels);
    const ms = (performance.now() - (receivedAt.get(p.key) ?? start)).toFixed(1);
    receivedAt.delete(p.key);
    p.el.dataset.patternMs = el.dataset.patternMs = ms;
    p.drawn = true;
  }

  function onMessage(content: any, buffers?: unknown[]): void {
    const received = performance.now();
    if (content?.type === "pattern") {
      const key = keyOf([content.layer, content.head]), n = Number(content.n), data = float32(buffers?.[0]);
      inflight.delete(key);
      if (n !== tokens.length || data.length < n * n) {
        return showError(`pattern of ${nameOf(key)}: got n=${n} with ${data.length} values for ${tokens.length} tokens`);
      }
      cache.set(key, data);
      receivedAt.set(key, received);
      renderPanels();
    } else if (content?.type === "error") {
      const keys = pair([content.layer, content.head]) ? [keyOf([content.layer, content.head])] : [...inflight];
      for (const key of keys) { inflight.delete(key); failed.add(key); }
      showError(String(content.message ?? "error"));
    }
  }

  function showError(message: string): void {
    errorBox.textContent = message;
    for (const p of panels.values()) {
      if (!p.drawn) { p.body.textContent = message; p.body.classList.add("arrakis-error"); }
    }
    paintText();
  }

  // ---- text view ----
  function setQuery(i: number): void {
    model.set("query", i);
    model.save_changes();
    paintText();
  }

  function drawTokens(): void {
    tokens = strings(model.get("tokens"));
    labels = tokens.map((t, i) => `${i}:${t}`);
    tokensBox.replaceChildren(...tokens.map((t, i) => {
      const span = h("span", "arrakis-token", t);
      span.dataset.pos = String(i);
      if (!t.trim()) span.dataset.ws = t.includes("\n") ? "newline" : "space";
      return span;
    }));
  }

  const posOf = (e: Event) => Number((e.target as HTMLElement).dataset?.pos ?? NaN);
  tokensBox.addEventListener("click", (e) => { const i = posOf(e); if (i >= 0) setQuery(i); });
  tokensBox.addEventListener("mouseleave", () => tip.hide());
  tokensBox.addEventListener("mousemove", (e) => {
    const j = posOf(e), q = Number(model.get("query")), n = tokens.length, pattern = focus ? cache.get(focus) : undefined;
    if (!(j >= 0)) return tip.hide();
    let text = `${j}:${quote(tokens[j])}`;
    if (pattern && q >= 0 && q < n) {
      text += `\n${q} attends to it: ${fmt(pattern[q * n + j])}\nit attends to ${q}: ${fmt(pattern[j * n + q])}`;
    }
    tip.show(text, e.clientX, e.clientY);
  });

  /** Outlines the query token; colours what it attends to (its row) and what attends to it (its column). */
  function paintText(): void {
    const spans = tokensBox.children as HTMLCollectionOf<HTMLElement>, n = tokens.length;
    const q = Number(model.get("query")), pattern = focus ? cache.get(focus) : undefined;
    const state = pattern ? "" : focus && failed.has(focus) ? " (no pattern)" : " (loading…)";
    textHead.textContent = focus ? `text view: ${nameOf(focus)}${state}` : "text view: select a head";
    for (const s of spans) { s.className = "arrakis-token"; s.style.background = ""; }
    if (!(q >= 0 && q < n)) return;
    spans[q].classList.add("arrakis-query");
    if (!pattern) return;
    let rowMax = 0, colMax = 0;
    for (let j = 0; j < n; j++) {
      if (j === q) continue;
      rowMax = Math.max(rowMax, pattern[q * n + j]);
      colMax = Math.max(colMax, pattern[j * n + q]);
    }
    for (let j = 0; j < n; j++) {
      if (j === q) continue;
      const a = rowMax > 0 ? pattern[q * n + j] / rowMax : 0, b = colMax > 0 ? pattern[j * n + q] / colMax : 0;
      if (a >= b && a > 0.02) {
        spans[j].classList.add("arrakis-attends-to");
        spans[j].style.background = `rgba(255, 140, 0, ${(0.85 * a).toFixed(3)})`;
      } else if (b > 0.02) {
        spans[j].classList.add("arrakis-attended-by");
        spans[j].style.background = `rgba(30, 136, 229, ${(0.85 * b).toFixed(3)})`;
      }
    }
  }

  // ---- model events ----
  function resetPatterns(): void {
    cache.clear();
    inflight.clear();
    receivedAt.clear();
    for (const p of panels.values()) p.el.remove();
    panels.clear();
  }

  subs.on("change:title", () => { title.textContent = String(model.get("title") ?? ""); });
  subs.on("change:score_names", () => { drawSelect(); drawGrid(); });
  for (const name of ["score", "scores", "n_layers", "n_heads"]) subs.on(`change:${name}`, drawGrid);
  subs.on("change:selected", () => {
    const s = pair(model.get("selected"));
    if (s) open(s);
    else { grid.setSelected(null); renderPanels(); }
  });
  subs.on("change:pinned", renderPanels);
  subs.on("change:query", paintText);
  subs.on("change:tokens", () => { resetPatterns(); drawTokens(); renderPanels(); });
  subs.on("msg:custom", onMessage);

  title.textContent = String(model.get("title") ?? "");
  drawSelect();
  drawGrid();
  drawTokens();
  const s = pair(model.get("selected"));
  if (s) focus = keyOf(s);
  renderPanels();
  markReady(el, t0);
  return () => subs.off();
}

export default { render };
