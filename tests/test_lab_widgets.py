"""The widgets in a real JupyterLab, in headless Chromium: run the widgets tour notebook, click a head,
read the residual view's total. Screenshots go to test-artifacts/lab/."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from browser import ARTIFACTS, JupyterLab, chromium_page, needs_chromium

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TEXT = "When Mary and John went to the store, John gave a drink to"

pytestmark = [needs_chromium, pytest.mark.slow]


def cell_center(page, canvas, row: int, col: int) -> tuple[float, float]:
    """Page coordinates of a heatmap cell, from the geometry the canvas publishes in its dataset."""
    box = canvas.bounding_box()
    d = canvas.evaluate("c => ({...c.dataset})")
    x = box["x"] + float(d["left"]) + (col + 0.5) * float(d["cellW"])
    y = box["y"] + float(d["top"]) + (row + 0.5) * float(d["cellH"])
    return x, y


def test_widgets_tour_runs_in_jupyterlab(tmp_path, default_model):
    out = ARTIFACTS / "lab"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLES / "04_widgets.ipynb", tmp_path)
    lab = JupyterLab(tmp_path, env={"ARRAKIS_HOME": str(tmp_path / "store")})
    try:
        with chromium_page() as page:
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            lab.open(page, "04_widgets.ipynb")
            lab.run_all(page)
            explorer = page.locator(".arrakis-head-explorer")
            explorer.wait_for(timeout=60_000)
            page.wait_for_selector(".arrakis-head-explorer[data-ready='1']", timeout=30_000)
            explorer.scroll_into_view_if_needed()
            page.screenshot(path=str(out / "head_explorer.png"), full_page=False)

            # the grid draws every head: 30 x 9 cells
            grid = explorer.locator(".arrakis-grid canvas").first
            assert grid.evaluate("c => c.width > 0 && c.height > 0")
            # click L18H6: its pattern panel opens with the text's tokens
            page.mouse.click(*cell_center(page, grid, 18, 6))
            panel = explorer.locator("[data-head='L18H6']")
            panel.wait_for(timeout=30_000)
            page.wait_for_function("() => document.querySelector('.arrakis-head-explorer').dataset.patternMs")
            tokens = explorer.locator(".arrakis-token").all_text_contents()
            assert tokens == default_model.to_str_tokens(TEXT)
            explorer.scroll_into_view_if_needed()
            page.screenshot(path=str(out / "head_explorer_L18H6.png"))

            # the residual view's total equals the logit difference the kernel printed
            total = page.locator(".arrakis-residual-total").first
            total.wait_for(timeout=30_000)
            outputs = page.locator(".jp-OutputArea-output").all_text_contents()
            printed = next(float(m.group(1)) for text in outputs
                           if (m := re.search(r"logit difference (-?\d+\.\d+)", text)))
            assert float(total.get_attribute("data-total")) == pytest.approx(printed, abs=1e-4)
            assert float(total.get_attribute("data-logit")) == pytest.approx(printed, abs=1e-4)
            total.scroll_into_view_if_needed()
            page.screenshot(path=str(out / "residual_view.png"))

            for kind in ("logit-lens", "patching-view"):
                page.wait_for_selector(f".arrakis-{kind}[data-ready='1']", timeout=30_000)
            page.locator(".arrakis-patching-view").scroll_into_view_if_needed()
            page.screenshot(path=str(out / "patching_view.png"))
            assert not errors, errors
    finally:
        lab.stop()
