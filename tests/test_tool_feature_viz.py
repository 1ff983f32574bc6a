"""feature_viz tool: max-activating examples checked against a brute-force pass, and neuron-interpolation steering.

The top-k of ``activate_neuron`` must equal, value for value and position for position, the top-k of every
real token's activation collected by ``run_with_cache`` on each window separately (ties in corpus order).
Steering at alpha=0 must equal a hand-written hook that adds the scale to neuron 1, and the model must give
bit-identical logits afterwards.
"""
from __future__ import annotations

import pytest
import torch

from arrakis_jupyter import corpus
from arrakis_jupyter.errors import ArrakisIndexError, ArrakisValueError, HookNameError
from arrakis_jupyter.tools import feature_viz as fv_mod
from arrakis_jupyter.tools.feature_viz import FeatureViz, MaxActivatingExamples
from arrakis_jupyter.tools.registry import get_tool_class

HOOK, NEURON, K, MAX_TOKENS, MAX_LEN = "blocks.5.mlp.hook_post", 100, 8, 1200, 128


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@pytest.fixture(scope="module")
def texts():
    return list(corpus.default())[:40]


@pytest.fixture(scope="module")
def fv(default_model):
    return FeatureViz(default_model)


@pytest.fixture(scope="module")
def result(fv, texts) -> MaxActivatingExamples:
    return fv.activate_neuron(texts, HOOK, NEURON, top_k=K, context=4, max_tokens=MAX_TOKENS, progress=False)


def brute_force(model, texts, hook, neuron):
    """Every real token's (activation, text index, position), from run_with_cache on each window alone."""
    rows, seen = [], 0
    for t, text in enumerate(texts):
        ids = model.to_tokens(text)[0]
        for start in range(0, len(ids), MAX_LEN):
            window = ids[start:start + MAX_LEN][:MAX_TOKENS - seen]
            if len(window) == 0:
                break
            with torch.no_grad():
                _, cache = model.run_with_cache(window[None], names_filter=hook)
            acts = cache[hook][0, :, neuron].float().tolist()
            rows += [(a, t, start + p) for p, a in enumerate(acts)]
            seen += len(window)
            if seen >= MAX_TOKENS:
                break
        if seen >= MAX_TOKENS:
            break
    assert seen == MAX_TOKENS
    return sorted(rows, key=lambda r: (-r[0], r[1], r[2]))


def test_registered():
    assert get_tool_class("feature_viz") is FeatureViz


def test_top_k_equals_brute_force(default_model, texts, result):
    expected = brute_force(default_model, texts, HOOK, NEURON)[:K]
    got = [(e.activation, e.text_index, e.position) for e in result.examples]
    assert got == expected
    assert result.n_tokens == MAX_TOKENS and [e.rank for e in result.examples] == list(range(1, K + 1))
    for e in result.examples:  # the token and its context are the text's tokens at that position
        ids = default_model.to_tokens(texts[e.text_index])[0].tolist()
        assert e.token_id == ids[e.position]
        assert e.context_tokens[e.center] == e.token == default_model.to_str_tokens([e.token_id])[0]
        assert e.context_activations[e.center] == e.activation
        assert len(e.context_tokens) == len(e.context_activations) <= 9
    frame = result.to_frame()
    assert list(frame.columns) == ["rank", "activation", "token", "context", "text_index", "position"]
    assert frame["activation"].is_monotonic_decreasing


def test_direction_one_hot_equals_neuron(fv, texts, result, default_model):
    onehot = torch.zeros(default_model.cfg.d_mlp)
    onehot[NEURON] = 3.0  # the projection is onto the unit direction
    by_dir = fv.activate_neuron(texts, 5, onehot, top_k=K, context=4, max_tokens=MAX_TOKENS, progress=False)
    assert by_dir.unit == "direction"
    assert [(e.activation, e.text_index, e.position, e.context_activations) for e in by_dir.examples] == \
        [(e.activation, e.text_index, e.position, e.context_activations) for e in result.examples]


def test_html_highlights_and_escapes(fv):
    texts = ["The tag <b>bold</b> & \"quotes\" here.", "Plain words only."]
    res = fv.activate_neuron(texts, HOOK, NEURON, top_k=3, context=20, progress=False)
    page = res._repr_html_()
    # every token of the first text is in each example's context (context=20): '<', '&', '"' come escaped
    assert page.count("<b>") == 1 and "<b>bold" not in page and "&lt;" in page and "&amp;" in page
    assert "&quot;" in page and "bold" in page
    top = res.examples[0]
    assert "outline:2px solid black" in page
    from html import escape
    assert escape(top.token.replace("\n", "\u21b5"), quote=True) in page
    assert 'title="' in page and "rgba(" in page


def test_interpolation(fv, default_model):
    model, prompt, s = default_model, "The weather today is", 8.0
    n1, n2 = NEURON, 200
    tokens = model.to_tokens(prompt)
    with torch.no_grad():
        before = model(tokens)
    frame = fv.neuron_interpolation(prompt, HOOK, n1, n2, num_interpolations=3, max_new_tokens=6, scale=s)
    assert list(frame["alpha"]) == [0.0, 0.5, 1.0] and len(frame) == 3

    def by_hand(act, hook):
        act = act.clone()
        act[..., n1] += s
        return act

    with model.hooks([(HOOK, by_hand)]):
        expected = model.generate(tokens, max_new_tokens=6)[0, tokens.shape[1]:].tolist()
    assert frame["ids"][0] == expected and frame["text"][0] == model.to_string(expected)
    again = fv.neuron_interpolation(prompt, HOOK, n1, n2, num_interpolations=3, max_new_tokens=6, scale=s)
    assert again["ids"].tolist() == frame["ids"].tolist()
    with torch.no_grad():
        after = model(tokens)
    assert torch.equal(before, after)


def test_interpolation_default_scale(fv, monkeypatch):
    monkeypatch.setattr(fv_mod, "SCALE_TOKENS", 64)
    frame = fv.neuron_interpolation("Hello", 5, NEURON, 200, num_interpolations=2, max_new_tokens=2)
    s1 = fv.activate_neuron(corpus.default(), HOOK, NEURON, top_k=1, max_tokens=64, progress=False)[0].activation
    assert frame["scale1"][0] == s1 and len(frame["ids"][1]) == 2


def test_errors(fv, texts, default_model):
    d = default_model.cfg.d_mlp
    with pytest.raises(ArrakisIndexError, match=rf"neuron {d} is out of range: valid neurons are 0\.\.{d - 1}"):
        fv.activate_neuron(texts, HOOK, d)
    with pytest.raises(HookNameError, match=r"'blocks\.5\.mlp\.hook_post'"):
        fv.activate_neuron(texts, "blocks.5.mlp.hook_pots", 0)
    with pytest.raises(ArrakisValueError, match="the corpus is empty"):
        fv.activate_neuron([], HOOK, 0, progress=False)
    with pytest.raises(ArrakisValueError, match="has no text with at least 1 token"):
        fv.activate_neuron(["", "  "], HOOK, 0, progress=False)
    with pytest.raises(ArrakisValueError, match="top_k must be a positive int, got 0"):
        fv.activate_neuron(texts, HOOK, 0, top_k=0)
    with pytest.raises(ArrakisValueError, match=f"must have {d} entries"):
        fv.activate_neuron(texts, HOOK, torch.ones(7))
    with pytest.raises(ArrakisValueError, match="one vector per token"):
        fv.activate_neuron(texts, "blocks.0.attn.hook_pattern", 0)
    with pytest.raises(ArrakisIndexError, match="neuron"):
        fv.neuron_interpolation("Hi", HOOK, 0, -d - 1, scale=1.0)
