"""The anywidget front ends (arrakis_jupyter/widgets/static/*.js) in headless Chromium.

tests/widget_harness/ holds a page with a fake anywidget model; the bundles and the harness are served
over http on 127.0.0.1. Binary traits travel as {"__b64__": ...} and reach the widgets as DataView;
pattern requests are answered by `patternFor`, a Python function exposed to the page. Screenshots and
the measured timings land in test-artifacts/widgets/.
"""
from __future__ import annotations

import base64
import functools
import http.server
import json
import re
import shutil
import subprocess
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from browser import CHROMIUM, chromium_browser

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "arrakis_jupyter" / "widgets" / "static"
HARNESS = Path(__file__).resolve().parent / "widget_harness"
ARTIFACTS = ROOT / "test-artifacts" / "widgets"
BUNDLES = ["head_explorer.js", "residual_view.js", "logit_lens.js", "patching_view.js", "widgets.css"]
SCORE_NAMES = ["induction", "previous_token", "duplicate_token", "bos", "dla"]
N_LAYERS, N_HEADS = 30, 9
WORDS = [" When", " Mary", " and", " John", " went", " to", " the", " store", ",", " gave", " a", " drink", ".",
         "\n", " She", " Paris", " is", " capital", " of", " France", "  ", "'s", " l\u00e9a", "<b>"]
TIMINGS: dict[str, float] = {}


# ---- synthetic data ----

def b64(array: np.ndarray, dtype: str) -> dict:
    return {"__b64__": base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode()}


def make_tokens(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["<|endoftext|>"] + [WORDS[i] for i in rng.integers(0, len(WORDS), n - 1)]


def make_scores() -> np.ndarray:
    rng = np.random.default_rng(1)
    scores = rng.random((len(SCORE_NAMES), N_LAYERS, N_HEADS)).astype(np.float32)
    scores[4] = rng.normal(0, 0.5, (N_LAYERS, N_HEADS))  # dla is signed
    scores[0, 18, 6] = 0.895
    scores[0, 0, 0] = np.nan  # no value: drawn grey
    return scores


@functools.lru_cache(maxsize=16)
def make_pattern(n: int, layer: int, head: int) -> bytes:
    """A causal pattern (rows sum to 1): a previous-token stripe and some BOS attention, seeded by the head."""
    rng = np.random.default_rng(1000 * layer + head)
    logits = rng.normal(0, 2, (n, n))
    idx = np.arange(1, n)
    logits[idx, idx - 1] += 9
    logits[:, 0] += 7
    logits[np.triu_indices(n, 1)] = -np.inf
    p = np.exp(logits - logits.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True)).astype("<f4").tobytes()


def pattern(n: int, layer: int, head: int) -> np.ndarray:
    return np.frombuffer(make_pattern(n, layer, head), "<f4").reshape(n, n)


def explorer_state(n_tokens: int) -> dict:
    return {"n_layers": N_LAYERS, "n_heads": N_HEADS, "tokens": make_tokens(n_tokens), "score_names": SCORE_NAMES,
            "scores": b64(make_scores(), "<f4"), "score": "induction", "selected": [], "pinned": [], "query": -1,
            "title": f"attention heads · {n_tokens} tokens"}


# The widgets' formatting, in Python.
def fmt(x: float, digits: int = 3) -> str:
    if np.isnan(x):
        return "n/a"
    a = abs(x)
    if a != 0 and (a < 10 ** -digits or a >= 1e5):
        mantissa, exponent = f"{x:.2e}".split("e")
        return f"{mantissa}e{int(exponent):+d}"
    return f"{x:.{digits}f}"


def signed(x: float) -> str:
    return ("+" if x >= 0 else "") + fmt(x)


def quote(token: str) -> str:
    return "'" + token.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + "'"


# ---- server, browser, page ----

class _Handler(http.server.SimpleHTTPRequestHandler):
    """/static/* from the built bundles, everything else from the harness folder."""

    def translate_path(self, path):
        path = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        base, rel = (STATIC, path[len("/static/"):]) if path.startswith("/static/") else (HARNESS, path.lstrip("/"))
        target = (base / rel).resolve()
        return str(target if target.is_relative_to(base) else base / "__missing__")

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's Chromium ({CHROMIUM}) is not installed; the widget browser tests need it")
    missing = [name for name in BUNDLES if not (STATIC / name).exists()]
    if missing:
        pytest.fail(f"bundles missing in {STATIC}: {missing}; run `npm run build:widgets -w labextension`")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium_browser() as chromium:
        yield chromium
    (ARTIFACTS / "timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")


class UI:
    """A harness page: mount a widget, read/write its fake model, hover and click canvas cells."""

    def __init__(self, page):
        self.page = page
        self.pattern_error: str | None = None
        self.n_tokens = 0
        self.errors: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))

    def pattern_for(self, layer: int, head: int) -> dict:
        if self.pattern_error:
            return {"error": self.pattern_error}
        n = self.n_tokens
        return {"n": n, "b64": base64.b64encode(make_pattern(n, layer, head)).decode()}

    def mount(self, name: str, state: dict) -> None:
        self.n_tokens = len(state.get("tokens", []))
        self.page.evaluate("([name, state]) => harness.mount(name, state)", [name, state])
        self.page.wait_for_selector(".arrakis-widget[data-ready='1']")

    def get(self, name: str):
        return self.page.evaluate("name => model.get(name)", name)

    def py_set(self, name: str, value) -> None:
        self.page.evaluate("([name, value]) => model.pySet(name, value)", [name, value])

    def sent(self) -> list[dict]:
        return self.page.evaluate("model.sent")

    def saves(self) -> list[list[str]]:
        return self.page.evaluate("model.saves")

    def cell(self, canvas: str, i: int, j: int) -> tuple[float, float]:
        """Page coordinates of cell (i, j)'s centre, from the geometry the Heatmap puts on its canvas."""
        return self.page.eval_on_selector(canvas, """(c, [i, j]) => { const r = c.getBoundingClientRect(), d = c.dataset;
            return [r.left + +d.left + (j + 0.5) * +d.cellW, r.top + +d.top + (i + 0.5) * +d.cellH]; }""", [i, j])

    def pixel(self, canvas: str, i: int, j: int) -> list[int]:
        """RGB of cell (i, j)'s centre as drawn on the canvas."""
        return self.page.eval_on_selector(canvas, """(c, [i, j]) => { const d = c.dataset, s = c.width / c.clientWidth;
            const x = (+d.left + (j + 0.5) * +d.cellW) * s, y = (+d.top + (i + 0.5) * +d.cellH) * s;
            return Array.from(c.getContext('2d').getImageData(Math.floor(x), Math.floor(y), 1, 1).data.slice(0, 3)); }""",
                                          [i, j])

    def hover(self, canvas: str, i: int, j: int) -> str:
        self.page.mouse.move(*self.cell(canvas, i, j))
        return self.tooltip()

    def click(self, canvas: str, i: int, j: int) -> None:
        self.page.mouse.click(*self.cell(canvas, i, j))

    def tooltip(self) -> str:
        return self.page.text_content(".arrakis-tooltip")

    def panel_heads(self) -> list[str]:
        return self.page.eval_on_selector_all(".arrakis-panel [data-head]", "els => els.map(e => e.dataset.head)")

    def wait_panel(self, layer: int, head: int) -> float:
        """Waits for the drawn panel of a head; returns its patternMs."""
        panel = self.page.wait_for_selector(f".arrakis-panel[data-key='{layer},{head}'][data-pattern-ms]")
        return float(panel.get_attribute("data-pattern-ms"))

    def shot(self, name: str) -> None:
        self.page.locator(".arrakis-widget").last.screenshot(path=str(ARTIFACTS / f"{name}.png"))


@pytest.fixture
def make_ui(browser, server):
    contexts = []

    def make(dpr: float = 1) -> UI:
        context = browser.new_context(viewport={"width": 1500, "height": 1200}, device_scale_factor=dpr)
        ui = UI(context.new_page())
        contexts.append((context, ui))
        context.expose_function("patternFor", ui.pattern_for)
        ui.page.goto(f"{server}/index.html")
        ui.page.wait_for_function("window.harness !== undefined")
        return ui

    yield make
    for context, ui in contexts:
        context.close()
        assert not ui.errors, f"errors in the page: {ui.errors}"


@pytest.fixture
def ui(make_ui) -> UI:
    return make_ui()


GRID = ".arrakis-grid canvas"


# ---- head explorer ----

def test_head_explorer_grid_draws_hovers_and_first_paint(ui):
    ui.mount("head_explorer", explorer_state(256))
    first_paint = float(ui.page.get_attribute(".arrakis-head-explorer", "data-first-paint-ms"))
    TIMINGS["head_explorer first paint, 30x9 grid, 256 tokens (ms)"] = first_paint
    assert first_paint < 1000
    assert ui.page.get_attribute(".arrakis-head-explorer", "class") == "arrakis-widget arrakis-head-explorer"

    colours = ui.page.eval_on_selector(GRID, """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const s = new Set(); for (let k = 0; k < d.length; k += 4) if (d[k + 3]) s.add((d[k] << 16) | (d[k + 1] << 8) | d[k + 2]);
        return s.size; }""")
    assert colours > 100  # 270 cells through viridis, not a blank canvas
    assert ui.pixel(GRID, 0, 0) == [128, 128, 128]  # NaN is grey
    assert ui.pixel(GRID, 18, 6) != ui.pixel(GRID, 3, 3)

    scores = make_scores()
    assert ui.hover(GRID, 18, 6) == "L18H6 induction = 0.895"
    assert ui.hover(GRID, 7, 2) == f"L7H2 induction = {fmt(scores[0, 7, 2])}"
    assert ui.hover(GRID, 0, 0) == "L0H0 induction = n/a"
    assert ui.page.text_content(".arrakis-legend-label") == "induction"
    assert ui.page.eval_on_selector_all(".arrakis-token", "els => els.map(e => e.textContent)") == make_tokens(256)
    ui.shot("head_explorer_grid")


def test_head_explorer_pattern_1024_tokens(ui):
    tokens = make_tokens(1024)
    ui.mount("head_explorer", explorer_state(1024))
    TIMINGS["head_explorer first paint, 30x9 grid, 1024 tokens (ms)"] = float(
        ui.page.get_attribute(".arrakis-head-explorer", "data-first-paint-ms"))
    ui.page.evaluate("model.hold = true")  # replies wait: a second click while in flight must not re-request
    ui.click(GRID, 18, 6)
    ui.click(GRID, 18, 6)
    assert ui.sent() == [{"type": "pattern", "layer": 18, "head": 6}]
    assert ui.get("selected") == [18, 6]
    assert ["selected"] in ui.saves()
    ui.page.evaluate("model.release()")
    pattern_ms = ui.wait_panel(18, 6)
    TIMINGS["head_explorer pattern draw, 1024 tokens (ms)"] = pattern_ms
    assert pattern_ms < 200
    assert float(ui.page.get_attribute(".arrakis-head-explorer", "data-pattern-ms")) == pattern_ms
    assert ui.panel_heads() == ["L18H6"]
    ui.click(GRID, 18, 6)  # cached: no new request
    assert len(ui.sent()) == 1

    # the pattern heatmap: square, hover names query and key
    canvas = ".arrakis-panel[data-key='18,6'] canvas.arrakis-heatmap"
    p = pattern(1024, 18, 6)
    # cells are ~0.35 CSS px here, so the mouse lands within a few cells; the tooltip must match that cell
    i, j = map(int, re.match(r"query (\d+):.* → key (\d+):", ui.hover(canvas, 700, 699)).groups())
    assert abs(i - 700) <= 3 and abs(j - 699) <= 3
    assert ui.tooltip() == f"query {i}:{quote(tokens[i])} → key {j}:{quote(tokens[j])} = {fmt(p[i, j])}"
    assert ui.hover(canvas, 10, 500).endswith("= 0.000")  # causal: above the diagonal is 0
    assert ui.page.eval_on_selector_all(".arrakis-token", "els => els.map(e => e.textContent)") == tokens

    # clicking a token sets query and colours what it attends to / what attends to it
    q = 300
    ui.page.click(f".arrakis-token[data-pos='{q}']")
    assert ui.get("query") == q
    classes = ui.page.eval_on_selector_all(".arrakis-token", "els => els.map(e => e.className)")
    assert "arrakis-query" in classes[q]
    others = np.arange(1024) != q
    row, col = np.where(others, p[q], 0), np.where(others, p[:, q], 0)
    a, b = row / row.max(), col / col.max()  # weights relative to the strongest, as drawn
    attends_to = set(np.flatnonzero((a >= b) & (a > 0.02)))
    attended_by = set(np.flatnonzero((b > a) & (b > 0.02)))
    assert {int(np.argmax(row)), 0, q - 1} <= attends_to  # BOS and the previous token
    assert q + 1 in attended_by and all(j > q for j in attended_by)  # causal: only later tokens attend to it
    assert {j for j, c in enumerate(classes) if "arrakis-attends-to" in c} == attends_to
    assert {j for j, c in enumerate(classes) if "arrakis-attended-by" in c} == attended_by
    ui.shot("head_explorer_pattern_1024")


def test_head_explorer_pinning_shows_two_panels(ui):
    ui.mount("head_explorer", explorer_state(256))
    ui.click(GRID, 18, 6)
    TIMINGS["head_explorer pattern draw, 256 tokens (ms)"] = ui.wait_panel(18, 6)
    ui.page.click(".arrakis-pin")
    assert ui.get("pinned") == [[18, 6]]
    ui.click(GRID, 5, 2)
    ui.wait_panel(5, 2)
    assert ui.panel_heads() == ["L18H6", "L5H2"]  # pinned one, then the selected one
    ui.page.click(".arrakis-pin")
    assert ui.get("pinned") == [[18, 6], [5, 2]]
    ui.click(GRID, 7, 1)  # two pinned: they stay shown, the text view follows L7H1
    ui.page.wait_for_selector(".arrakis-text-head:text('text view: L7H1')")
    assert ui.panel_heads() == ["L18H6", "L5H2"]
    assert "L7H1" in ui.page.text_content(".arrakis-note")
    ui.page.click(".arrakis-pin")  # a third pin drops the oldest
    assert ui.get("pinned") == [[5, 2], [7, 1]]
    ui.wait_panel(7, 1)
    assert ui.panel_heads() == ["L5H2", "L7H1"]
    ui.shot("head_explorer_pinned")
    ui.page.click(".arrakis-panel[data-key='5,2'] .arrakis-unpin")
    assert ui.get("pinned") == [[7, 1]]
    assert ui.panel_heads() == ["L7H1"]
    assert [m["head"] for m in ui.sent()] == [6, 2, 1]


def test_head_explorer_keyboard_and_python_selection(ui):
    ui.mount("head_explorer", explorer_state(256))
    ui.py_set("selected", [2, 3])  # set from Python: opens the head
    ui.wait_panel(2, 3)
    assert ui.sent() == [{"type": "pattern", "layer": 2, "head": 3}]
    ui.page.focus(GRID)
    ui.page.keyboard.press("ArrowDown")
    ui.page.keyboard.press("ArrowRight")
    assert ui.tooltip().startswith("L3H4 induction = ")
    ui.page.keyboard.press("Enter")
    assert ui.get("selected") == [3, 4]
    ui.wait_panel(3, 4)
    assert ui.sent()[-1] == {"type": "pattern", "layer": 3, "head": 4}
    assert ui.panel_heads() == ["L3H4"]
    ui.page.keyboard.press("ArrowUp")
    ui.page.keyboard.press(" ")
    assert ui.get("selected") == [2, 4]


def test_head_explorer_error_reply_and_score_select(ui):
    ui.mount("head_explorer", explorer_state(256))
    ui.pattern_error = "cannot compute L29H8: out of memory (test)"
    ui.click(GRID, 29, 8)
    ui.page.wait_for_selector(".arrakis-error:text('out of memory')")
    assert ui.page.text_content(".arrakis-panel[data-key='29,8'] .arrakis-panel-body") == ui.pattern_error
    assert ui.page.text_content(".arrakis-text-head") == "text view: L29H8 (no pattern)"
    ui.shot("head_explorer_error")
    ui.pattern_error = None
    ui.click(GRID, 29, 8)  # the failed request is no longer in flight: asked again
    ui.wait_panel(29, 8)
    assert len(ui.sent()) == 2
    assert ui.page.query_selector(".arrakis-panel[data-key='29,8'] .arrakis-panel-body.arrakis-error") is None
    assert ui.page.text_content(".arrakis-head-explorer > .arrakis-error") == ""

    ui.page.select_option(".arrakis-score-select", "previous_token")
    assert ui.get("score") == "previous_token"
    assert ["score"] in ui.saves()
    assert ui.hover(GRID, 18, 6) == f"L18H6 previous_token = {fmt(make_scores()[1, 18, 6])}"
    assert ui.page.text_content(".arrakis-grid .arrakis-legend-label") == "previous_token"
    ui.py_set("score", "dla")
    assert ui.page.eval_on_selector(".arrakis-score-select", "s => s.value") == "dla"
    assert ui.page.evaluate("cleanup(); model.listenerCount()") == 0


# ---- residual view ----

def residual_state():
    labels, layer_head = ["embed"], [(-1, -1)]
    for layer in range(N_LAYERS):
        labels += [f"L{layer}H{head}" for head in range(N_HEADS)] + [f"{layer}_attn_bias", f"{layer}_mlp_out"]
        layer_head += [(layer, head) for head in range(N_HEADS)] + [(-1, -1)] * 2
    values = np.random.default_rng(2).normal(0, 0.3, len(labels)).astype(np.float32)
    values[labels.index("L18H6")] = 1.234
    values[labels.index("17_mlp_out")] = -2.5
    constant = 0.0123
    total = float(values.astype(np.float64).sum()) + constant
    return labels, values, np.array(layer_head), constant, total, total + 2e-5


def test_residual_view(ui):
    labels, values, layer_head, constant, total, logit = residual_state()
    ui.mount("residual_view", {"labels": labels, "values": b64(values, "<f4"), "layer_head": b64(layer_head, "<i4"),
                               "constant": constant, "total": total, "logit": logit, "title": "logit difference",
                               "selected": []})
    summary = ui.page.query_selector(".arrakis-residual-total")
    assert float(summary.get_attribute("data-total")) == total
    assert float(summary.get_attribute("data-logit")) == logit
    assert summary.text_content() == (f"sum of parts {values.astype(np.float64).sum():.4f} + constant {constant:.4f} "
                                      f"= {total:.4f} · model logit {logit:.4f}")

    def order():
        return [int(k) for k in ui.page.get_attribute(".arrakis-bars", "data-order").split(",")]

    by_abs = np.argsort(-np.abs(values), kind="stable")
    assert order() == list(by_abs[:40])

    def bar(row):
        box = ui.page.query_selector(".arrakis-bars").bounding_box()
        return box["x"] + 200, box["y"] + 2 + (row + 0.5) * 18

    ui.page.mouse.move(*bar(1))
    assert ui.tooltip() == "L18H6: +1.234"
    ui.page.mouse.move(*bar(0))
    assert ui.tooltip() == "17_mlp_out: -2.500"

    ui.page.mouse.click(*bar(0))  # not a head: nothing happens
    assert ui.get("selected") == [] and ui.saves() == []
    ui.page.mouse.click(*bar(1))
    assert ui.get("selected") == [18, 6]
    assert ui.saves() == [["selected"]]
    head_rows = [row for row, k in enumerate(order()) if layer_head[k][0] >= 0]
    ui.page.mouse.click(*bar(head_rows[3]))
    assert ui.get("selected") == list(layer_head[order()[head_rows[3]]])
    ui.shot("residual_view")

    ui.page.click(".arrakis-show-all")
    assert order() == list(by_abs)
    ui.page.select_option(".arrakis-sort", "model")
    assert order() == list(range(len(labels)))


# ---- logit lens ----

def lens_state(n_layers=30, k=5):
    tokens = ["<|endoftext|>", " The", " E", "iff", "el", " Tower", " is", " in", " the", " city", " of", "\n"]
    vocab = [" Paris", " London", " France", " the", " a", ",", " Rome", "\n", " Tower", " city", " of", " is",
             " Berlin", " Europe", "<|endoftext|>", " Madrid", " capital", " Eiffel", " in", " and"]
    rng = np.random.default_rng(3)
    n = len(tokens)
    ids = np.stack([rng.permutation(len(vocab))[:k] for _ in range(n_layers * n)]).reshape(n_layers, n, k)
    probs = -np.sort(-rng.dirichlet(np.ones(8) * 0.4, n_layers * n)[:, :k], axis=1).reshape(n_layers, n, k)
    state = {"layer_labels": [f"L{layer}" for layer in range(n_layers)], "tokens": tokens, "k": k, "vocab": vocab,
             "top_ids": b64(ids, "<i4"), "top_probs": b64(probs, "<f4"), "target": "", "target_probs": b64(np.zeros(0), "<f4"),
             "target_error": "", "title": "logit lens"}
    return state, ids, probs.astype(np.float32)


def test_logit_lens(ui):
    state, ids, probs = lens_state()
    ui.mount("logit_lens", state)
    canvas = ".arrakis-logit-lens canvas.arrakis-heatmap"
    assert float(ui.page.eval_on_selector(canvas, "c => c.dataset.cellW")) >= 28  # wide enough for token text
    tip = ui.hover(canvas, 20, 5).split("\n")
    assert tip[0] == "L20, pos 5:' Tower'"
    assert tip[1:] == [f"{r + 1}. {quote(state['vocab'][ids[20, 5, r]])} {fmt(probs[20, 5, r])}" for r in range(5)]
    assert ui.page.text_content(".arrakis-legend-label") == "top-1 probability"
    ui.shot("logit_lens")

    ui.page.fill(".arrakis-target", " Paris")
    ui.page.press(".arrakis-target", "Enter")
    assert ui.get("target") == " Paris"
    before = ui.pixel(canvas, 20, 5)
    target = np.full((30, 12), 0.001, np.float32)
    target[20:, 5:] = 0.9
    ui.py_set("target_probs", b64(target, "<f4"))
    assert ui.page.text_content(".arrakis-legend-label") == "P(target ' Paris')"
    assert ui.pixel(canvas, 20, 5) != before
    assert ui.pixel(canvas, 20, 5) == ui.pixel(canvas, 25, 9)  # same probability, same colour
    assert ui.hover(canvas, 20, 5).endswith("target ' Paris' 0.900")
    ui.shot("logit_lens_target")

    ui.py_set("target_error", "' Pariss' is not a single token")
    assert ui.page.text_content(".arrakis-error") == "' Pariss' is not a single token"
    ui.page.click(".arrakis-clear")
    assert ui.get("target") == "" and ui.page.input_value(".arrakis-target") == ""


# ---- patching view ----

def patching_state(symmetric=True):
    tokens = make_tokens(20)
    values = np.random.default_rng(4).normal(0, 0.4, (12, 20)).astype(np.float32)
    values[3, 5] = 0.812
    return {"values": b64(values, "<f4"), "rows": [str(layer) for layer in range(12)],
            "cols": [f"{p}:{quote(t)}" for p, t in enumerate(tokens)], "row_dim": "layer", "col_dim": "pos",
            "title": "activation patching (resid_pre)", "value_name": "metric", "symmetric": symmetric}, values


def test_patching_view(make_ui):
    ui = make_ui(dpr=2)
    ui.page.evaluate("document.body.classList.add('dark')")
    state, values = patching_state()
    ui.mount("patching_view", state)
    canvas = ".arrakis-patching-view canvas.arrakis-heatmap"
    css_width, width = ui.page.eval_on_selector(canvas, "c => [c.clientWidth, c.width]")
    assert width == 2 * css_width  # devicePixelRatio aware
    assert ui.hover(canvas, 3, 5) == f"layer 3, pos {state['cols'][5]} → metric = 0.812"
    m = float(np.abs(values).max())
    assert ui.page.text_content(".arrakis-legend-min") == f"-{m:.3f}"
    assert ui.page.text_content(".arrakis-legend-max") == f"+{m:.3f}"
    i, j = np.unravel_index(np.argmin(np.abs(values)), values.shape)
    assert min(ui.pixel(canvas, int(i), int(j))) > 200  # near 0: near white
    ui.shot("patching_view_dark")

    ui.py_set("symmetric", False)
    assert ui.page.text_content(".arrakis-legend-min") == fmt(float(values.min()))
    assert ui.page.text_content(".arrakis-legend-max") == fmt(float(values.max()))


# ---- bundles ----

def test_bundles_are_up_to_date(tmp_path):
    npm = shutil.which("npm")
    installed = (ROOT / "node_modules" / "esbuild").is_dir() or (ROOT / "labextension" / "node_modules" / "esbuild").is_dir()
    if not npm or not installed:
        pytest.skip("npm or the labextension's node_modules are missing (run `npm install` at the repo root)")
    subprocess.run([npm, "run", "--silent", "build:widgets", "-w", "labextension", "--", str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    stale = [name for name in BUNDLES if (tmp_path / name).read_bytes() != (STATIC / name).read_bytes()]
    assert not stale, f"stale bundles {stale}: run `npm run build:widgets -w labextension` and commit them"
