// Logit lens: layers × positions, coloured by the top-1 probability (or by a tracked target token's
// probability); the top-1 token is written in cells that are wide enough; hover lists the top k.
import {
  float32, fmt, h, Heatmap, int32, Legend, markReady, quote, RenderProps, setupRoot, strings, Subscriptions,
  Tooltip, VIRIDIS,
} from "./common";

function render({ model, el }: RenderProps): () => void {
  const t0 = setupRoot(el, "logit-lens");
  const subs = new Subscriptions(model);
  const tip = new Tooltip(el);

  const title = h("div", "arrakis-title");
  const input = h("input", "arrakis-target");
  input.type = "text";
  input.placeholder = "track a token, e.g. \" Paris\" (Enter)";
  input.setAttribute("aria-label", "target token");
  const clear = h("button", "arrakis-clear", "clear");
  const header = h("div", "arrakis-header");
  header.append(h("label", "arrakis-label", "target"), input, clear);
  const errorBox = h("div", "arrakis-error");
  const legend = new Legend();
  const heatmap = new Heatmap({
    cellW: 44, cellH: 22, maxW: 960, maxH: 640, rowTitle: "layer", colTitle: "position",
    label: "logit lens: layers × positions", tooltip, cellText,
  }, tip);
  el.append(title, header, errorBox, heatmap.canvas, legend.el);

  let tokens: string[] = [], vocab: string[] = [], k = 0, n = 0;
  let ids = new Int32Array(0), probs = new Float32Array(0), target = new Float32Array(0);

  function cellText(i: number, j: number): string {
    return vocab[ids[(i * n + j) * k]] ?? "";
  }

  function tooltip(i: number, j: number): string {
    const layer = strings(model.get("layer_labels"))[i];
    const lines = [`${layer}, pos ${j}:${quote(tokens[j])}`];
    for (let r = 0; r < k; r++) {
      const o = (i * n + j) * k + r;
      lines.push(`${r + 1}. ${quote(vocab[ids[o]] ?? "?")} ${fmt(probs[o])}`);
    }
    if (target.length) lines.push(`target ${quote(String(model.get("target")))} ${fmt(target[i * n + j])}`);
    return lines.join("\n");
  }

  function draw(): void {
    const layers = strings(model.get("layer_labels"));
    tokens = strings(model.get("tokens"));
    vocab = strings(model.get("vocab"));
    k = Number(model.get("k")) || 0;
    n = tokens.length;
    ids = int32(model.get("top_ids"));
    probs = float32(model.get("top_probs"));
    target = float32(model.get("target_probs"));
    if (target.length !== layers.length * n) target = new Float32Array(0);
    const colour = new Float32Array(layers.length * n).fill(NaN);
    for (let c = 0; c < colour.length; c++) colour[c] = target.length ? target[c] : probs[c * k] ?? NaN;
    heatmap.update(colour, { lo: 0, hi: 1, lut: VIRIDIS }, layers, tokens.map((t, j) => `${j}:${t}`));
    legend.update(VIRIDIS, 0, 1, target.length ? `P(target ${quote(String(model.get("target")))})` : "top-1 probability");
  }

  function setTarget(value: string): void {
    model.set("target", value);
    model.save_changes();
  }

  input.addEventListener("keydown", (e) => { if (e.key === "Enter") setTarget(input.value); });
  clear.addEventListener("click", () => { input.value = ""; setTarget(""); });

  const drawTitle = () => { title.textContent = String(model.get("title") ?? ""); };
  const drawError = () => { errorBox.textContent = String(model.get("target_error") ?? ""); };
  const drawTarget = () => { if (document.activeElement !== input) input.value = String(model.get("target") ?? ""); };
  subs.on("change:title", drawTitle);
  subs.on("change:target_error", drawError);
  subs.on("change:target", () => { drawTarget(); draw(); });
  for (const name of ["layer_labels", "tokens", "k", "vocab", "top_ids", "top_probs", "target_probs"]) subs.on(`change:${name}`, draw);

  drawTitle();
  drawError();
  input.value = String(model.get("target") ?? "");
  draw();
  markReady(el, t0);
  return () => subs.off();
}

export default { render };
