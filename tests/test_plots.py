"""arrakis_jupyter.plots: PlotSpec, the data layer (checked against direct computations from the cache
and the raw HF modules), Bokeh and matplotlib figures, both call styles, and the error messages."""
from __future__ import annotations

import functools
import importlib.util
import io
import sys
import math

import numpy as np
import pytest
import torch
from conftest import VOCAB, tiny

from arrakis_jupyter.errors import (
    ArrakisError,
    ArrakisIndexError,
    ArrakisKeyError,
    ArrakisValueError,
)
from arrakis_jupyter.plots import (
    PLOT_TYPES,
    BokehWrapper,
    MatplotlibWrapper,
    PlotBundle,
    PlotData,
    PlotSpec,
    plot_data,
)

HAS_MPL = importlib.util.find_spec("matplotlib") is not None
NO_MPL = "matplotlib is not installed (optional dependency: pip install matplotlib)"
SEQ = 6  # repeated block length of the test input: [batch 2, 2 * SEQ]


def _repeated_tokens(seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    block = torch.stack([torch.randperm(VOCAB, generator=g)[:SEQ] for _ in range(2)])
    return torch.cat([block, block], dim=1)


@functools.cache
def _run(arch: str):
    """(model, tokens, cache of every hook) of a tiny model on a repeated random sequence."""
    model = tiny(arch)
    tokens = _repeated_tokens()
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    return model, tokens, cache


@pytest.fixture(params=["llama", "gpt2"])
def run(request):
    return _run(request.param)


def data(run, spec: PlotSpec, tokens=True) -> PlotBundle:
    model, toks, cache = run
    return plot_data(model, cache, spec, toks if tokens else None)


# ---- PlotSpec -------------------------------------------------------------------------------------------
def test_plot_spec_normalises_and_keeps_kwargs():
    s = PlotSpec("attention", "blocks.0.attn.hook_pattern", head=2, title="t")
    assert s.plot_type == "attention" and s.data_keys == ["blocks.0.attn.hook_pattern"]
    assert s.title == "t" and s.kwargs == {"head": 2}
    assert PlotSpec("attention", ("a", "b")).data_keys == ["a", "b"]
    assert PlotSpec("residual_stream").data_keys == []
    assert PlotSpec("attention", "k", kwargs={"head": 1}).kwargs == {"head": 1}
    assert s == PlotSpec(plot_type="attention", data_keys=["blocks.0.attn.hook_pattern"], title="t", head=2)
    assert "head=2" in repr(s) and s.replace(head=3).kwargs == {"head": 3} and s.kwargs == {"head": 2}
    assert len(PLOT_TYPES) == 8


def test_plot_spec_rejects_unknown_type_and_bad_keys():
    with pytest.raises(ArrakisValueError, match=r"unknown plot_type 'atention'.*attention, neuron_activation, "
                                                r"attention_stats.*layer_norms.*Did you mean 'attention'"):
        PlotSpec("atention", "blocks.0.attn.hook_pattern")
    with pytest.raises(ArrakisValueError, match="data_keys must be a hook name or a list"):
        PlotSpec("attention", [0, 1])
    with pytest.raises(ArrakisValueError, match="title must be a str"):
        PlotSpec("attention", "k", title=3)


# ---- data layer against direct computations -----------------------------------------------------------
def test_attention_is_the_cached_pattern(run):
    _, _, cache = run
    b = data(run, PlotSpec("attention", "blocks.1.attn.hook_pattern", head=2, batch=1))
    (p,) = b.panels
    assert p.kind == "heatmap" and (p.x_name, p.y_name) == ("key", "query")
    np.testing.assert_array_equal(p.values, cache["blocks.1.attn.hook_pattern"][1, 2].numpy())
    assert p.x_labels == p.y_labels == [str(i) for i in range(2 * SEQ)]  # no tokenizer: positions
    both = data(run, PlotSpec("attention", ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"], head=[0, -1]))
    assert [(q.meta["layer"], q.meta["head"]) for q in both.panels] == [(0, 0), (0, 3), (1, 0), (1, 3)]
    assert both.ncols == 2
    np.testing.assert_array_equal(both.panels[3].values, cache["blocks.1.attn.hook_pattern"][0, 3].numpy())


def test_attention_stats_match_direct_formulas(run):
    _, _, cache = run
    keys = ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    for batch in (None, 1):
        b = data(run, PlotSpec("attention_stats", keys, batch=batch))
        ent, mx, first = (p.values for p in b.panels)
        assert ent.shape == (2, 4) and b.panels[0].y_labels == ["L0", "L1"] and b.panels[0].x_labels[-1] == "H3"
        rows = [0, 1] if batch is None else [batch]
        for li, key in enumerate(keys):
            for h in range(4):
                e, m, f, n = 0.0, 0.0, 0.0, 0
                for r in rows:
                    for q in range(1, 2 * SEQ):
                        w = cache[key][r, h, q, : q + 1].double()
                        e += -sum(float(x) * math.log(float(x)) for x in w if x > 0)
                        m += float(w.max())
                        f += float(w[0])
                        n += 1
                assert ent[li, h] == pytest.approx(e / n, abs=1e-5)
                assert mx[li, h] == pytest.approx(m / n, abs=1e-6)
                assert first[li, h] == pytest.approx(f / n, abs=1e-6)
    # default keys: every cached pattern
    assert data(run, PlotSpec("attention_stats")).panels[0].keys == keys


def test_induction_scores_equal_a_hand_loop(run):
    model, tokens, cache = run
    keys = ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    b = data(run, PlotSpec("induction_heads", keys))  # seq_len inferred: the tokens are two copies
    (p,) = b.panels
    assert p.meta["seq_len"] == SEQ and p.values.shape == (2, 4)
    for li, key in enumerate(keys):
        for h in range(4):
            total, n = 0.0, 0
            for r in range(2):
                for i in range(SEQ, 2 * SEQ):
                    total += float(cache[key][r, h, i, i - SEQ + 1])
                    n += 1
            assert p.values[li, h] == pytest.approx(total / n, abs=1e-6)
    explicit = data(run, PlotSpec("induction_heads", keys, seq_len=SEQ), tokens=False)
    np.testing.assert_allclose(explicit.panels[0].values, p.values, atol=0)
    one_row = data(run, PlotSpec("induction_heads", keys, batch=1)).panels[0].values
    loop = [[float(cache[k][1, h, SEQ:, 1:SEQ + 1].diagonal().mean()) for h in range(4)] for k in keys]
    np.testing.assert_allclose(one_row, loop, atol=1e-6)
    # a prefix token (BOS) before the two copies: still inferred, scores read after the prefix
    prefixed = torch.cat([torch.zeros(2, 1, dtype=torch.long), tokens], dim=1)
    with torch.no_grad():
        _, c2 = model.run_with_cache(prefixed, names_filter=lambda n: n.endswith("hook_pattern"))
    q = plot_data(model, c2, PlotSpec("induction_heads"), prefixed).panels[0]
    want = c2["blocks.1.attn.hook_pattern"][:, 2, 1 + SEQ:, 2:SEQ + 2].diagonal(dim1=-2, dim2=-1).mean()
    assert q.meta["seq_len"] == SEQ and q.values[1, 2] == pytest.approx(float(want), abs=1e-6)


def test_neuron_activation_top_k_and_explicit(run):
    _, _, cache = run
    key = "blocks.1.mlp.hook_post"
    acts = cache[key][0]
    (p,) = data(run, PlotSpec("neuron_activation", key)).panels
    want = sorted(range(acts.shape[1]), key=lambda n: -float(acts[:, n].abs().max()))[:10]
    assert p.meta["neurons"] == want and p.x_labels == [f"N{n}" for n in want]
    np.testing.assert_array_equal(p.values, acts[:, want].numpy())
    assert p.values.shape == (2 * SEQ, 10) and p.diverging
    (p2,) = data(run, PlotSpec("neuron_activation", key, neurons=[5, 3], batch=1)).panels
    np.testing.assert_array_equal(p2.values, cache[key][1][:, [5, 3]].numpy())
    (p3,) = data(run, PlotSpec("neuron_activation", key, neurons=7)).panels
    assert p3.values.shape == (2 * SEQ, 1)
    assert len(data(run, PlotSpec("neuron_activation", top_k=4)).panels) == 2  # default: every mlp.hook_post


def test_neuron_trajectories_are_the_activations(run):
    _, _, cache = run
    keys = ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]
    (p,) = data(run, PlotSpec("neuron_activation_trajectories", keys, neuron=3, neurons=[1, 3])).panels
    assert p.kind == "lines" and p.series == ["L0 N3", "L0 N1", "L1 N3", "L1 N1"]
    want = np.stack([cache[k][0, :, n].numpy() for k in keys for n in (3, 1)])
    np.testing.assert_array_equal(p.values, want)
    (d,) = data(run, PlotSpec("neuron_activation_trajectories", keys)).panels  # top 3 per layer
    assert len(d.series) == 6


def _causal_softmax(scores: torch.Tensor) -> torch.Tensor:
    n = scores.shape[-1]
    mask = torch.ones(n, n, dtype=torch.bool).triu(1)
    return scores.masked_fill(mask, float("-inf")).softmax(-1)


def test_qk_dot_product_gpt2_from_hf_weights():
    model, tokens, cache = _run("gpt2")
    with torch.no_grad():
        block = model.hf_model.transformer.h[1]
        x = block.ln_1(cache["blocks.1.hook_resid_pre"])
        q, k, _ = block.attn.c_attn(x).split(64, dim=2)
        q, k = q.view(2, 2 * SEQ, 4, 16), k.view(2, 2 * SEQ, 4, 16)
    for keys in (["blocks.1.attn.hook_q", "blocks.1.attn.hook_k"], ["blocks.1.attn.hook_rot_k", "blocks.1.attn.hook_rot_q"]):
        panels = plot_data(model, cache, PlotSpec("qk_dot_product", keys, head=[0, 1, 2, 3], batch=1), tokens).panels
        for h, p in enumerate(panels):
            manual = q[1, :, h] @ k[1, :, h].T / math.sqrt(16)
            np.testing.assert_allclose(p.values, manual.numpy(), atol=1e-5)
            np.testing.assert_allclose(_causal_softmax(torch.from_numpy(p.values)).numpy(),
                                       cache["blocks.1.attn.hook_pattern"][1, h].numpy(), atol=1e-5)
    masked = plot_data(model, cache, PlotSpec("qk_dot_product", keys, masked=True)).panels[0].values
    assert np.isnan(masked[0, 1]) and not np.isnan(np.tril(masked)).any()
    assert panels[0].meta["scale"] == 0.25
    eighth = plot_data(model, cache, PlotSpec("qk_dot_product", keys, scale=0.125)).panels[0]
    np.testing.assert_allclose(eighth.values, (q[0, :, 0] @ k[0, :, 0].T / 8).numpy(), atol=1e-5)


def test_qk_dot_product_llama_rotary_grouped_query():
    run = _run("llama")
    model, _, cache = run
    assert model.cfg.positional_embedding == "rotary" and model.cfg.n_kv_heads == 2
    keys = ["blocks.0.attn.hook_rot_q", "blocks.0.attn.hook_rot_k"]
    q, k = cache[keys[0]][0], cache[keys[1]][0]  # [pos, 4, 16], [pos, 2, 16]
    panels = data(run, PlotSpec("qk_dot_product", keys, head=[0, 1, 2, 3])).panels
    assert [p.meta["kv_head"] for p in panels] == [0, 0, 1, 1]
    for h, p in enumerate(panels):
        np.testing.assert_allclose(p.values, (q[:, h] @ k[:, h // 2].T / 4).numpy(), atol=1e-6)
        np.testing.assert_allclose(_causal_softmax(torch.from_numpy(p.values)).numpy(),
                                   cache["blocks.0.attn.hook_pattern"][0, h].numpy(), atol=1e-5)
    with pytest.warns(UserWarning, match="before rotary"):
        data(run, PlotSpec("qk_dot_product", ["blocks.0.attn.hook_q", "blocks.0.attn.hook_k"]))


def test_residual_stream_norms(run):
    _, _, cache = run
    (p,) = data(run, PlotSpec("residual_stream")).panels  # default: every resid_post
    assert p.keys == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert p.y_labels == ["L0 resid_post", "L1 resid_post"]
    want = torch.stack([torch.norm(cache[k][0], dim=-1) for k in p.keys])
    np.testing.assert_allclose(p.values, want.numpy(), atol=1e-6)
    keys = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.1.hook_resid_post"]
    (bars,) = data(run, PlotSpec("residual_stream", keys, pos=-1, batch=1)).panels
    assert bars.kind == "bars" and bars.x_labels == ["L0 resid_pre", "L0 resid_mid", "L1 resid_post"]
    np.testing.assert_allclose(bars.values[0], [float(torch.norm(cache[k][1, -1])) for k in keys], atol=1e-5)


def test_layer_norm_scales(run):
    model, _, cache = run
    (p,) = data(run, PlotSpec("layer_norms")).panels  # every hook_scale, forward order
    assert p.keys[-1] == "ln_final.hook_scale" and p.y_labels[:2] == ["L0 ln1", "L0 ln2"]
    np.testing.assert_array_equal(p.values, torch.stack([cache[k][0, :, 0] for k in p.keys]).numpy())
    resid = cache["blocks.1.hook_resid_pre"][0]
    if model.cfg.normalization == "layernorm":
        eps = model.hf_model.transformer.h[1].ln_1.eps
        direct = (resid.var(-1, unbiased=False) + eps).sqrt()
    else:
        eps = model.hf_model.model.layers[1].input_layernorm.variance_epsilon
        direct = (resid.pow(2).mean(-1) + eps).sqrt()
    (one,) = data(run, PlotSpec("layer_norms", "blocks.1.ln1.hook_scale")).panels
    np.testing.assert_allclose(one.values[0], direct.numpy(), rtol=1e-5)


# ---- labels and inputs -----------------------------------------------------------------------------------
class _StubTokenizer:
    bos_token_id = None

    def decode(self, ids):
        return "\n" if ids[0] == 0 else f"t{ids[0]}"


def test_token_labels_with_a_tokenizer(run, monkeypatch):
    model, tokens, _ = run
    monkeypatch.setattr(model, "tokenizer", _StubTokenizer())
    (p,) = data(run, PlotSpec("attention", "blocks.0.attn.hook_pattern", batch=1)).panels
    assert p.x_labels[0] == f"0:t{int(tokens[1, 0])}" and len(set(p.x_labels)) == 2 * SEQ
    t = torch.tensor([[0, 5]])
    _, c = model.run_with_cache(t, names_filter="blocks.0.attn.hook_pattern")
    assert plot_data(model, c, PlotSpec("attention"), t).panels[0].x_labels == ["0:\\n", "1:t5"]
    with pytest.raises(ArrakisValueError, match="tokens have 2 positions but the cached activations have 12"):
        plot_data(model, run[2], PlotSpec("attention", "blocks.0.attn.hook_pattern"), t)


def test_batchless_and_plain_dict_caches(run):
    model, tokens, cache = run
    key = "blocks.0.attn.hook_pattern"
    with torch.no_grad():
        _, one = model.run_with_cache(tokens[:1], names_filter=key)
    (p,) = plot_data(model, one.remove_batch_dim(), PlotSpec("attention", key)).panels  # [head, q, k]
    np.testing.assert_array_equal(p.values, cache[key][0, 0].numpy())
    fig = BokehWrapper.plot(cache={key: cache[key]}, spec=PlotSpec("attention", key))  # no model at all
    assert fig.title.text == "L0 H0 attention pattern"


# ---- Bokeh -----------------------------------------------------------------------------------------------
def _specs():
    return [
        (PlotSpec("attention", "blocks.0.attn.hook_pattern", title="A"), 1),
        (PlotSpec("attention", ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"], head=[0, 1]), 4),
        (PlotSpec("attention_stats"), 3),
        (PlotSpec("induction_heads"), 1),
        (PlotSpec("neuron_activation", ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"], title="N"), 2),
        (PlotSpec("neuron_activation_trajectories", ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"], neuron=1), 1),
        (PlotSpec("qk_dot_product", ["blocks.1.attn.hook_rot_q", "blocks.1.attn.hook_rot_k"], head=1), 1),
        (PlotSpec("residual_stream"), 1),
        (PlotSpec("residual_stream", pos=0), 1),
        (PlotSpec("layer_norms"), 1),
    ]


def _figures(obj):
    from bokeh.models import Column, GridPlot
    from bokeh.plotting import figure

    if isinstance(obj, figure):
        return [obj]
    if isinstance(obj, Column):
        return [f for child in obj.children for f in _figures(child)]
    if isinstance(obj, GridPlot):
        return [child for child, *_ in obj.children]
    return []


def test_bokeh_figures_build(run):
    from bokeh.embed import file_html
    from bokeh.models import ColorBar, Column, Div, GlyphRenderer, GridPlot, LayoutDOM
    from bokeh.models.glyphs import Image, Line, VBar
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    model, tokens, cache = run
    for i, (spec, n_panels) in enumerate(_specs()):
        obj = BokehWrapper.plot(cache=cache, spec=spec, model=model, tokens=tokens)
        assert isinstance(obj, LayoutDOM)
        figs = _figures(obj)
        assert len(figs) == n_panels, spec
        bundle = data(run, spec)
        for fig, panel in zip(figs, bundle.panels):
            glyphs = [type(r.glyph) for r in fig.renderers if isinstance(r, GlyphRenderer)]
            if panel.kind == "heatmap":
                assert glyphs.count(Image) == 1 and len(glyphs) == 2  # image + invisible hover cells
                assert any(isinstance(x, ColorBar) for x in fig.right)
                assert list(fig.x_range.factors) == panel.x_labels
                assert list(fig.y_range.factors) == panel.y_labels[::-1]
            elif panel.kind == "lines":
                assert glyphs.count(Line) == len(panel.series)
            else:
                assert glyphs == [VBar]
        if n_panels == 1:
            assert isinstance(obj, figure) and obj.title.text == (spec.title or bundle.panels[0].title)
        elif spec.title:
            assert isinstance(obj, Column) and isinstance(obj.children[0], Div) and spec.title in obj.children[0].text
        else:
            assert isinstance(obj, GridPlot)
        if i in (0, 1):  # standalone HTML, BokehJS inline (no CDN)
            html = file_html(obj, resources=INLINE, title="t")
            assert "cdn.bokeh.org" not in html and "Bokeh" in html


def test_both_call_styles(run):
    model, tokens, cache = run
    arrakis = BokehWrapper.plot(BokehWrapper, cache=cache, plot_type="attention",
                                data_keys=["blocks.1.attn.hook_pattern"], title="arrakis", head=1)
    assert arrakis.title.text == "arrakis"
    ours = BokehWrapper.plot(cache=cache, spec=PlotSpec("attention", "blocks.1.attn.hook_pattern", head=1),
                             model=model, tokens=tokens)
    lib = BokehWrapper()  # an instance, as set_plotting_lib(BokehWrapper()) would pass it
    inst = lib.plot(lib, cache=cache, plot_type="attention", data_keys="blocks.1.attn.hook_pattern", head=1)
    img = [r.glyph for f in (arrakis, ours, inst) for r in f.renderers if type(r.glyph).__name__ == "Image"]
    assert len(img) == 3
    positional = BokehWrapper.plot(cache, PlotSpec("induction_heads"), input_ids=tokens)
    assert "seq_len 6" in positional.title.text
    override = BokehWrapper.plot(cache=cache, spec=PlotSpec("attention", "blocks.1.attn.hook_pattern"), head=3)
    assert override.title.text == "L1 H3 attention pattern"
    with pytest.raises(ArrakisValueError, match="plot got both spec"):
        BokehWrapper.plot(cache=cache, spec=PlotSpec("attention"), plot_type="layer_norms")
    with pytest.raises(ArrakisValueError, match="needs cache="):
        BokehWrapper.plot(spec=PlotSpec("attention"))


# ---- matplotlib -----------------------------------------------------------------------------------------
def test_matplotlib_missing_names_the_install(run, monkeypatch):
    _, _, cache = run
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an environment without it looks like
    with pytest.raises(ImportError, match="pip install matplotlib"):
        MatplotlibWrapper.plot(cache=cache, spec=PlotSpec("attention", "blocks.0.attn.hook_pattern"))
    with pytest.raises(ImportError, match="pip install matplotlib"):
        MatplotlibWrapper.plot(MatplotlibWrapper, cache=cache, plot_type="attention", data_keys=[], title=None)


@pytest.mark.skipif(not HAS_MPL, reason=NO_MPL)
def test_matplotlib_figures_build(run):
    from matplotlib.figure import Figure

    model, tokens, cache = run
    for spec, n_panels in _specs():
        fig = MatplotlibWrapper.plot(cache=cache, spec=spec, model=model, tokens=tokens)
        assert isinstance(fig, Figure)
        axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
        assert len(axes) == n_panels, spec
        if n_panels == 1:
            assert axes[0].get_title() == (spec.title or data(run, spec).panels[0].title)
    fig = MatplotlibWrapper.plot(MatplotlibWrapper, cache=cache, plot_type="residual_stream", data_keys=[], title="r")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # renders (Agg), no display
    assert buf.getvalue().startswith(b"\x89PNG")


# ---- errors ----------------------------------------------------------------------------------------------
def test_errors_name_the_problem(run):
    model, tokens, cache = run
    with pytest.raises(ArrakisValueError, match="accepted plot types: attention, neuron_activation"):
        BokehWrapper.plot(BokehWrapper, cache=cache, plot_type="heatmap", data_keys=[], title=None)
    with pytest.raises(ArrakisKeyError, match=r"'blocks.0.attn.hook_patern' is not in the cache.*"
                                              r"Did you mean 'blocks.0.attn.hook_pattern'"):
        data(run, PlotSpec("attention", "blocks.0.attn.hook_patern"))
    with pytest.raises(ArrakisValueError, match=r"plot type 'attention' takes blocks.\{L\}.attn.hook_pattern keys; "
                                                r"'blocks.0.hook_resid_pre' is a hook_resid_pre activation"):
        data(run, PlotSpec("attention", "blocks.0.hook_resid_pre"))
    with pytest.raises(ArrakisValueError, match="takes blocks.{L}.hook_resid_pre, blocks.{L}.hook_resid_mid"):
        data(run, PlotSpec("residual_stream", "blocks.0.attn.hook_pattern"))
    with pytest.raises(ArrakisIndexError, match="head 4 is out of range: valid heads are 0..3"):
        data(run, PlotSpec("attention", "blocks.0.attn.hook_pattern", head=4))
    with pytest.raises(ArrakisIndexError, match="valid heads are 0..3"):
        data(run, PlotSpec("qk_dot_product", ["blocks.0.attn.hook_rot_q", "blocks.0.attn.hook_rot_k"], head=9))
    with pytest.raises(ArrakisIndexError, match=r"batch 2 is out of range.*0\.\.1"):
        data(run, PlotSpec("neuron_activation", "blocks.0.mlp.hook_post", batch=2))
    with pytest.raises(ArrakisIndexError, match="neuron 128 is out of range: valid neurons are 0..127"):
        data(run, PlotSpec("neuron_activation", "blocks.0.mlp.hook_post", neurons=[1, 128]))
    with pytest.raises(ArrakisIndexError, match="valid positions are 0..11"):
        data(run, PlotSpec("residual_stream", pos=12))
    with pytest.raises(ArrakisValueError, match="unknown option.*'haed'.*Did you mean 'head'"):
        data(run, PlotSpec("attention", "blocks.0.attn.hook_pattern", haed=1))
    with pytest.raises(ArrakisValueError, match="keys must be of one layer"):
        data(run, PlotSpec("qk_dot_product", ["blocks.0.attn.hook_rot_q", "blocks.1.attn.hook_rot_k"]))
    with pytest.raises(ArrakisValueError, match="qk_dot_product takes two data_keys"):
        data(run, PlotSpec("qk_dot_product", "blocks.0.attn.hook_rot_q"))
    with pytest.raises(ArrakisValueError, match="hook_rot_q with hook_rot_k"):
        data(run, PlotSpec("qk_dot_product", ["blocks.0.attn.hook_rot_q", "blocks.0.attn.hook_k"]))
    with pytest.raises(ArrakisValueError, match="needs seq_len="):
        data(run, PlotSpec("induction_heads"), tokens=False)
    with pytest.raises(ArrakisValueError, match=r"seq_len must be an int in \[2, 6\]"):
        data(run, PlotSpec("induction_heads", seq_len=7))
    with torch.no_grad():
        _, small = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_pattern")
    with pytest.raises(ArrakisKeyError, match="'blocks.1.hook_resid_post' was not cached in this run"):
        plot_data(model, small, PlotSpec("residual_stream", "blocks.1.hook_resid_post"))
    with pytest.raises(ArrakisValueError, match="cache holds no blocks.{L}.hook_resid_post"):
        plot_data(model, small, PlotSpec("residual_stream"))
    assert issubclass(ArrakisIndexError, ArrakisError) and PlotData.__name__ == "PlotData"
