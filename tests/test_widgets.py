"""The widgets' Python side: traits and messages hold exactly the tools' values (default model and tiny ones)."""
from __future__ import annotations

import io

import ipywidgets.embed
import numpy as np
import pytest
import torch

from arrakis_jupyter.errors import ArrakisValueError, SequenceTooLongError
from arrakis_jupyter.tools import LabelledTensor
from arrakis_jupyter.tools.attention import AttentionTools
from arrakis_jupyter.tools.causal import CausalTracer
from arrakis_jupyter.tools.logit_attribution import LogitAttributor
from arrakis_jupyter.tools.logit_lens import LogitLens
from arrakis_jupyter.widgets import HeadExplorer, LogitLensView, PatchingView, ResidualView
from arrakis_jupyter.widgets import head_explorer as head_explorer_module
from conftest import tiny

IOI = "When Mary and John went to the store, John gave a drink to"


def f32(data: bytes, *shape: int) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4").reshape(shape)


def sent(widget, content):
    """Messages the widget sends back for one front-end message: [(content, buffers)]."""
    out = []
    widget.send = lambda c, buffers=None: out.append((c, buffers))
    widget._on_msg(widget, content, [])
    return out


@pytest.fixture(scope="module")
def explorer(default_model):
    with torch.no_grad():
        return HeadExplorer(default_model, IOI)


@pytest.mark.slow
def test_head_explorer_traits_hold_every_head_of_the_default_model(explorer, default_model):
    m = default_model
    assert (explorer.n_layers, explorer.n_heads) == (30, 9)
    assert explorer.tokens == m.to_str_tokens(IOI) and explorer.score == "induction"
    assert explorer.score_names[:4] == ["induction", "previous_token", "duplicate_token", "bos"]
    assert explorer.score_names[4] == "dla ' Mary'"
    scores = f32(explorer.scores, 5, 30, 9)
    tool = AttentionTools(m)
    for i, kind in enumerate(explorer.score_names[:4]):  # the tool's own numbers, float32 exactly
        np.testing.assert_array_equal(scores[i], tool.head_scores(kind).values.numpy())
    dla = LogitAttributor(m).logit_attribution(IOI, " Mary")
    labels = dla.attributions.labels("component")
    assert scores[4, 18, 6] == pytest.approx(float(dla.attributions.values[labels.index("L18H6")]), abs=1e-6)
    assert np.isfinite(scores).all()


@pytest.mark.slow
def test_a_clicked_head_gets_its_pattern_as_a_float32_buffer(explorer, default_model):
    (content, buffers), = sent(explorer, {"type": "pattern", "layer": 18, "head": 6})
    n = len(explorer.tokens)
    assert content == {"type": "pattern", "layer": 18, "head": 6, "n": n} and len(buffers) == 1
    pattern = f32(buffers[0], n, n)
    ref = AttentionTools(default_model).attention_patterns(IOI, 18, 6).values.numpy()
    np.testing.assert_allclose(pattern, ref, atol=1e-6)
    np.testing.assert_allclose(pattern.sum(-1), 1, atol=1e-5)
    (error, none), = sent(explorer, {"type": "pattern", "layer": 30, "head": 0})
    assert error["type"] == "error" and "layer 30 is out of range: valid layers are 0..29" in error["message"]
    assert sent(explorer, {"type": "unknown"}) == []


def test_patterns_of_long_texts_are_computed_layer_by_layer(monkeypatch):
    model = tiny("llama")
    tokens = torch.randint(0, 101, (1, 40), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(head_explorer_module, "PATTERN_CACHE_MIB", 40 * 40 * 4 * 4 / 2**20)  # one layer fits
    h = HeadExplorer(model, tokens, default_scores=False, scores=torch.zeros(2, 4))
    _, cache = model.run_with_cache(tokens)
    for layer in (1, 0, 1):
        for head in range(4):
            torch.testing.assert_close(h.pattern(layer, head), cache["pattern", layer][0, head], atol=1e-6, rtol=0)
        assert list(h._patterns) == [layer]  # only the latest layer is kept under this budget


def test_user_scores_come_first_and_bad_shapes_are_named():
    model = tiny("gpt2")
    grid = LabelledTensor(torch.arange(8.0).reshape(2, 4), ("layer", "head"), name="my score")
    h = HeadExplorer(model, torch.tensor([[1, 2, 3, 1, 2, 3]]), scores=grid)
    assert h.score_names[0] == "my score" and h.score == "my score" and len(h.score_names) == 6
    np.testing.assert_array_equal(f32(h.scores, 6, 2, 4)[0], grid.values.numpy())
    with pytest.raises(ArrakisValueError, match=r"scores 'bad' have shape \(4, 2\); the head explorer needs one "
                                                r"value per head: \[n_layers, n_heads\] = \[2, 4\]"):
        HeadExplorer(model, [1, 2, 3], scores={"bad": torch.zeros(4, 2)})
    with pytest.raises(SequenceTooLongError, match="context window"):
        HeadExplorer(model, torch.zeros(1, 200, dtype=torch.long), default_scores=False, scores=torch.zeros(2, 4))


@pytest.mark.slow
def test_residual_view_total_matches_the_logit_and_clicks_open_the_explorer(default_model):
    view = ResidualView(default_model, IOI, " Mary", other=" John")
    bars = view.bars
    dla = LogitAttributor(default_model).logit_attribution(IOI, " Mary", other=" John")
    np.testing.assert_array_equal(f32(bars.values, len(bars.labels)), dla.attributions.values.numpy())
    assert bars.labels == list(dla.attributions.labels("component"))
    assert bars.total == pytest.approx(bars.logit, abs=1e-4) and bars.logit == pytest.approx(dla.logit)
    layer_head = np.frombuffer(bars.layer_head, dtype="<i4").reshape(-1, 2)
    assert layer_head[bars.labels.index("L18H6")].tolist() == [18, 6]
    assert layer_head[bars.labels.index("embed")].tolist() == [-1, -1]
    assert bars.title == "logit ' Mary' − ' John' at position 13"
    bars.selected = [18, 6]  # what a click on the L18H6 bar does
    assert view.explorer is not None and view.children == (bars, view.explorer)
    assert view.explorer.selected == [18, 6] and view.explorer.score_names == ["direct logit attribution"]
    assert f32(view.explorer.scores, 1, 30, 9)[0, 18, 6] == pytest.approx(
        float(dla.attributions.values[bars.labels.index("L18H6")]))
    with pytest.raises(ArrakisValueError, match="is 3 tokens|is 2 tokens"):
        ResidualView(default_model, IOI, " Mary and John")


@pytest.mark.slow
def test_logit_lens_view_holds_the_tool_table_and_tracks_a_target(default_model):
    view = LogitLensView(default_model, "The capital of France is", k=3)
    table = LogitLens(default_model).logit_lens_table("The capital of France is", top_k=3)
    n_pos = len(view.tokens)
    ids = np.frombuffer(view.top_ids, dtype="<i4").reshape(30, n_pos, 3)
    decoded = [[[view.vocab[i] for i in row] for row in layer] for layer in ids]
    assert decoded == table.tokens
    np.testing.assert_array_equal(f32(view.top_probs, 30, n_pos, 3), table.probs.values.numpy())
    assert view.tokens == default_model.to_str_tokens("The capital of France is")

    view.target = " Paris"  # typed in the front end
    assert view.target_error == ""
    probs = f32(view.target_probs, 30, n_pos)
    for layer in (0, 15, 29):
        reading = LogitLens(default_model).logit_lens("The capital of France is", " Paris", layer, pos=-1)
        assert probs[layer, -1] == pytest.approx(reading.prob, rel=1e-4, abs=1e-7)
    assert probs[29, -1] == pytest.approx(0.7725, abs=1e-3)
    view.target = " Paris is"
    assert "is 2 tokens ([' Paris', ' is']), not one" in view.target_error and view.target_probs == b""
    view.target = ""
    assert view.target_error == "" and view.target_probs == b""
    with pytest.raises(ArrakisValueError, match="is 3 tokens|is 2 tokens"):
        LogitLensView(default_model, "The capital of France is", target="Paris France")


def test_patching_view_shows_a_causal_result():
    model = tiny("gpt2")
    clean, corrupted = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[1, 2, 9, 4, 5]])
    result = CausalTracer(model).patch(clean, corrupted, lambda logits: logits[0, -1, 7], hook="z", by="head",
                                       progress=False)
    view = PatchingView(result)
    assert (view.row_dim, view.col_dim, view.value_name) == ("layer", "head", "metric")
    np.testing.assert_array_equal(f32(view.values, 2, 4), result.values.numpy())
    assert view.rows == ["0", "1"] and view.cols == ["0", "1", "2", "3"]
    by_pos = CausalTracer(model).patch(clean, corrupted, lambda logits: logits[0, -1, 7], progress=False)
    assert PatchingView(by_pos).cols == [str(x) for x in by_pos.labels("pos")]
    three_d = CausalTracer(model).patch(clean, corrupted, lambda logits: logits[0, -1, 7], hook="z",
                                        by="head_pos", progress=False)
    with pytest.raises(ArrakisValueError, match=r"shows 1-D or 2-D results; this one has dims \('layer', 'pos', 'head'\)"):
        PatchingView(three_d)
    with pytest.raises(ArrakisValueError, match="takes a LabelledTensor from the causal tool, got ndarray"):
        PatchingView(np.zeros((2, 2)))


def test_every_widget_has_a_static_fallback_and_embeds_its_state():
    model = tiny("llama")
    tokens = torch.tensor([[5, 6, 7, 5, 6, 7]])
    widgets = [HeadExplorer(model, tokens), LogitLensView(model, tokens), ResidualView(model, tokens, 3),
               PatchingView(CausalTracer(model).patch(tokens, tokens.flip(1), lambda x: x[0, -1, 0], progress=False))]
    for w in widgets:
        data, _ = w._repr_mimebundle_()
        assert "application/vnd.jupyter.widget-view+json" in data
        assert "data:image/png;base64," in data["text/html"]
    out = io.StringIO()
    ipywidgets.embed.embed_minimal_html(out, views=[widgets[0]], title="x")
    text = out.getvalue()
    assert '"n_layers": 2' in text and '"score_names"' in text and "application/vnd.jupyter.widget-state+json" in text


@pytest.mark.slow
def test_patching_view_of_a_default_model_result(default_model):
    corrupted = "When Mary and John went to the store, Mary gave a drink to"
    mary, john = default_model.to_single_token(" Mary"), default_model.to_single_token(" John")
    result = CausalTracer(default_model).patch(IOI, corrupted, lambda l: l[0, -1, mary] - l[0, -1, john], hook="z",
                                               by="head", layers=[17, 18], progress=False)
    view = PatchingView(result)
    assert (view.rows, view.cols) == (["17", "18"], [str(h) for h in range(9)])
    np.testing.assert_array_equal(f32(view.values, 2, 9), result.values.numpy())
    assert view.symmetric == bool(result.values.min() < 0 < result.values.max())
    resid = CausalTracer(default_model).patch(IOI, corrupted, lambda l: l[0, -1, mary] - l[0, -1, john],
                                              layers=[0], progress=False)
    assert PatchingView(resid).cols == [str(x) for x in resid.labels("pos")] and len(PatchingView(resid).cols) == 14
