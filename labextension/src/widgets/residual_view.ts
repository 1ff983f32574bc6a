// Residual view: signed contributions of the residual-stream components to a logit, as a bar chart.
// Clicking a head's bar sets `selected` = [layer, head] (Python opens a head explorer beside it).
import { float32, fmt, h, int32, markReady, RenderProps, setupRoot, signed, strings, Subscriptions, theme, Tooltip, truncate, visible } from "./common";

const TOP = 40;        // bars shown until "show all"
const ROW_H = 18;      // CSS px per bar
const LABEL_W = 130;
const BAR_W = 360;
const VALUE_W = 72;
const POSITIVE = "#c0392b";
const NEGATIVE = "#2c7bb6";

function render({ model, el }: RenderProps): () => void {
  const t0 = setupRoot(el, "residual-view");
  const subs = new Subscriptions(model);
  const tip = new Tooltip(el);
  let showAll = false;
  let order: number[] = []; // component indices of the drawn bars, top to bottom

  const title = h("div", "arrakis-title");
  const total = h("div", "arrakis-residual-total");
  const sort = h("select", "arrakis-sort");
  sort.setAttribute("aria-label", "sort");
  for (const [value, text] of [["abs", "sort by |value|"], ["model", "model order"]]) {
    const o = h("option", "", text);
    o.value = value;
    sort.append(o);
  }
  const allButton = h("button", "arrakis-show-all");
  const header = h("div", "arrakis-header");
  header.append(sort, allButton);
  const canvas = h("canvas", "arrakis-bars");
  el.append(title, total, header, canvas);

  const labels = () => strings(model.get("labels"));
  const values = () => float32(model.get("values"));
  const headOf = (k: number): [number, number] | null => {
    const lh = int32(model.get("layer_head"));
    return 2 * k + 1 < lh.length && lh[2 * k] >= 0 && lh[2 * k + 1] >= 0 ? [lh[2 * k], lh[2 * k + 1]] : null;
  };

  function drawSummary(): void {
    const v = values(), t = Number(model.get("total")), logit = Number(model.get("logit")), c = Number(model.get("constant"));
    let sum = 0;
    for (const x of v) sum += x;
    total.dataset.total = String(model.get("total"));
    total.dataset.logit = String(model.get("logit"));
    total.textContent = `sum of parts ${fmt(sum, 4)} + constant ${fmt(c, 4)} = ${fmt(t, 4)} · model logit ${fmt(logit, 4)}`;
    total.classList.toggle("arrakis-mismatch", !(Math.abs(t - logit) <= 1e-3));
  }

  function drawBars(): void {
    const v = values(), names = labels(), n = Math.min(v.length, names.length);
    order = Array.from({ length: n }, (_, k) => k);
    if (sort.value === "abs") order.sort((a, b) => (Math.abs(v[b]) || 0) - (Math.abs(v[a]) || 0));
    if (!showAll) order = order.slice(0, TOP);
    allButton.hidden = n <= TOP;
    allButton.textContent = showAll ? `top ${TOP}` : `show all ${n}`;

    const cssW = LABEL_W + BAR_W + VALUE_W, cssH = order.length * ROW_H + 4, dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(cssW * dpr);
    canvas.height = Math.round(cssH * dpr);
    canvas.style.width = `${cssW}px`;
    canvas.style.height = `${cssH}px`;
    Object.assign(canvas.dataset, { rowHeight: String(ROW_H), top: "2", order: order.join(",") });
    const ctx = canvas.getContext("2d")!, th = theme(el), zero = LABEL_W + BAR_W / 2;
    const scale = (BAR_W / 2 - 2) / Math.max(1e-12, ...order.map((k) => Math.abs(v[k]) || 0));
    const sel = model.get("selected");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    ctx.font = `11px ${th.font}`;
    ctx.textBaseline = "middle";
    order.forEach((k, row) => {
      const y = 2 + row * ROW_H, mid = y + ROW_H / 2, x = v[k] * scale || 0, head = headOf(k);
      ctx.fillStyle = v[k] >= 0 ? POSITIVE : NEGATIVE;
      ctx.fillRect(Math.min(zero, zero + x), y + 3, Math.abs(x), ROW_H - 6);
      if (head && Array.isArray(sel) && sel[0] === head[0] && sel[1] === head[1]) {
        ctx.strokeStyle = th.fg;
        ctx.strokeRect(LABEL_W - 2, y + 1, BAR_W + 4, ROW_H - 2);
      }
      ctx.fillStyle = head ? th.fg : th.fg2;
      ctx.textAlign = "right";
      ctx.fillText(truncate(ctx, visible(names[k]), LABEL_W - 8), LABEL_W - 6, mid);
      ctx.textAlign = "left";
      ctx.fillStyle = th.fg;
      ctx.fillText(signed(v[k]), LABEL_W + BAR_W + 4, mid);
    });
    ctx.strokeStyle = th.border;
    ctx.beginPath();
    ctx.moveTo(zero + 0.5, 0);
    ctx.lineTo(zero + 0.5, cssH);
    ctx.stroke();
  }

  /** Component index of the bar under the mouse (O(1)), or -1. */
  function barAt(e: MouseEvent): number {
    const row = Math.floor((e.clientY - canvas.getBoundingClientRect().top - 2) / ROW_H);
    return row >= 0 && row < order.length ? order[row] : -1;
  }

  canvas.addEventListener("mousemove", (e) => {
    const k = barAt(e);
    canvas.style.cursor = k >= 0 && headOf(k) ? "pointer" : "default";
    if (k < 0) return tip.hide();
    tip.show(`${labels()[k]}: ${signed(values()[k])}`, e.clientX, e.clientY);
  });
  canvas.addEventListener("mouseleave", () => tip.hide());
  canvas.addEventListener("click", (e) => {
    const k = barAt(e), head = k >= 0 ? headOf(k) : null;
    if (!head) return;
    model.set("selected", head);
    model.save_changes();
    drawBars();
  });
  sort.addEventListener("change", drawBars);
  allButton.addEventListener("click", () => { showAll = !showAll; drawBars(); });

  const drawTitle = () => { title.textContent = String(model.get("title") ?? ""); };
  subs.on("change:title", drawTitle);
  for (const name of ["values", "constant", "total", "logit"]) subs.on(`change:${name}`, drawSummary);
  for (const name of ["values", "labels", "layer_head", "selected"]) subs.on(`change:${name}`, drawBars);

  drawTitle();
  drawSummary();
  drawBars();
  markReady(el, t0);
  return () => subs.off();
}

export default { render };
