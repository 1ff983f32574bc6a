#!/usr/bin/env python
"""Benchmark the head explorer in a real JupyterLab (headless Debian Chromium) on the default model.

A notebook builds ``HeadExplorer(model, tokens)`` for a 256-token text (``--tokens``). Measured in the page:

- ``first_paint_after_cell_ms``: from the cell's execution finishing (the run-cell command resolving)
  to the widget's first complete paint (negative: it painted before the reply arrived). Target: < 1000 ms.
- ``click_to_pattern_ms``: from clicking a head in the grid to its pattern drawn (round trip to the
  kernel: request message, pattern buffer back, canvas draw). Target: < 200 ms. Median of ``--clicks``
  heads, each clicked for the first time.
- ``bytes_before_click``: websocket payload bytes the browser received from the start of the cell to
  the first click (widget state, the bundled ESM, messages). Target: < 2 MB.

Peers in the same run: a bokeh ``image`` of the same 30 × 9 score grid shown with ``show()`` (time
from its cell finishing to its canvas appearing), and the size a push-everything widget would send
(every head's pattern up front as float32, as CircuitsVis's attention views do with JSON).

    python benchmarks/bench_widgets_browser.py [--tokens 256 --clicks 5 --json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import offline  # noqa: E402,F401

sys.path.insert(0, str(offline.REPO / "tests"))
from browser import JupyterLab, chromium_page  # noqa: E402

SETUP = """import torch
from arrakis_jupyter import load_model
from arrakis_jupyter.widgets import HeadExplorer
torch.set_grad_enabled(False)
model = load_model()
text = ' '.join(['The quick brown fox jumps over the lazy dog while Mary and John walk to the old store.'] * 40)
tokens = model.to_tokens(text)[:, :{n}]
print(tokens.shape)"""
EXPLORER = "explorer = HeadExplorer(model, tokens)\nexplorer"
PEER = """from bokeh.plotting import figure, show, output_notebook
from bokeh.resources import INLINE
output_notebook(INLINE, hide_banner=True)
grid = explorer.score_table.loc['induction'].to_numpy()
p = figure(width=300, height=600, x_range=(0, 9), y_range=(30, 0), tools='hover')
p.image(image=[grid], x=0, y=30, dw=9, dh=30, palette='Viridis256')
show(p)"""

RUN_CELL = """async (index) => {
  const app = window.jupyterapp, nb = app.shell.currentWidget.content;
  nb.activeCellIndex = index;
  const t0 = performance.now();
  await app.commands.execute('notebook:run-cell');
  return {t0, done: performance.now()};
}"""
WAIT_FOR = """async (selector) => new Promise(resolve => {
  const check = () => { if (document.querySelector(selector)) resolve(performance.now());
                        else requestAnimationFrame(check); };
  check();
})"""
ARM_PATTERN = """() => { const el = document.querySelector('.arrakis-head-explorer');
  window.__patternDrawn = new Promise(resolve => {
    const obs = new MutationObserver(() => { obs.disconnect(); resolve(performance.now()); });
    obs.observe(el, {attributes: true, attributeFilter: ['data-pattern-ms']});
  });
  return performance.now(); }"""


def notebook(n_tokens: int) -> dict:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(SETUP.format(n=n_tokens)), nbformat.v4.new_code_cell(EXPLORER),
                nbformat.v4.new_code_cell(PEER)]
    return nb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import nbformat

    root = Path(tempfile.mkdtemp(prefix="arrakis-bench-lab-"))
    nbformat.write(notebook(args.tokens), root / "bench.ipynb")
    lab = JupyterLab(root, env={"ARRAKIS_HOME": str(root / "store")})
    received = {"bytes": 0}
    try:
        with chromium_page() as page:
            page.on("websocket", lambda ws: ws.on(
                "framereceived", lambda payload: received.__setitem__("bytes", received["bytes"] + len(payload))))
            lab.open(page, "bench.ipynb")
            page.evaluate(RUN_CELL, 0)
            start_bytes = received["bytes"]
            run = page.evaluate(RUN_CELL, 1)
            ready = page.evaluate(WAIT_FOR, ".arrakis-head-explorer[data-ready='1']")
            first_paint = ready - run["done"]
            grid = page.locator(".arrakis-head-explorer .arrakis-grid canvas").first
            grid.scroll_into_view_if_needed()
            bytes_before_click = received["bytes"] - start_bytes
            d = grid.evaluate("c => ({...c.dataset})")
            clicks = []
            for layer, head in [(18, 6), (17, 4), (23, 2), (5, 1), (29, 8)][:args.clicks]:
                box = grid.bounding_box()
                x = box["x"] + float(d["left"]) + (head + 0.5) * float(d["cellW"])
                y = box["y"] + float(d["top"]) + (layer + 0.5) * float(d["cellH"])
                t_click = page.evaluate(ARM_PATTERN)
                page.mouse.click(x, y)
                drawn = page.evaluate("() => window.__patternDrawn")
                clicks.append(drawn - t_click)
                page.wait_for_selector(f"[data-head='L{layer}H{head}']")
            peer_run = page.evaluate(RUN_CELL, 2)
            peer_ready = page.evaluate(WAIT_FOR, ".bk-Figure, .bk-root canvas, div.bk-Canvas")
    finally:
        lab.stop()

    n = args.tokens
    push_all = 30 * 9 * n * n * 4
    out = {
        "tokens": n, "explorer_cell_ms": run["done"] - run["t0"], "first_paint_after_cell_ms": first_paint,
        "click_to_pattern_ms": statistics.median(clicks), "click_to_pattern_all_ms": clicks,
        "bytes_before_click": bytes_before_click, "peer_bokeh_grid_after_cell_ms": peer_ready - peer_run["done"],
        "peer_push_all_patterns_bytes": push_all,
    }
    print(f"head explorer on the default model, {n} tokens, headless Chromium")
    print(f"  cell (scores + widget state)    {out['explorer_cell_ms']:8.0f} ms")
    print(f"  first paint after the cell      {first_paint:8.0f} ms  (target < 1000; bokeh grid peer "
          f"{out['peer_bokeh_grid_after_cell_ms']:.0f} ms)")
    print(f"  click -> pattern drawn (median) {out['click_to_pattern_ms']:8.0f} ms  (target < 200; all: "
          f"{', '.join(f'{c:.0f}' for c in clicks)})")
    print(f"  bytes before the first click    {bytes_before_click / 1e6:8.3f} MB  (target < 2; pushing every "
          f"pattern up front: {push_all / 1e6:.1f} MB as float32, {push_all / max(1, bytes_before_click):.0f}x)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
