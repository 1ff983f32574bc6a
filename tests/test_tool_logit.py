"""The ``logit``, ``logit_lens`` and ``decomposer`` tools on tiny random models and the default model.

Tiny models: ``llama`` (RMSNorm, grouped-query attention 4:2, no biases) and ``gpt2`` (LayerNorm,
learned positions) whose biases and norm weights are randomised so that the final norm's bias,
the attention output bias and the norm weight all matter. Tolerances (float32): 1e-4 absolute on
the tiny models (measured differences are ~1e-7), 1e-3 on the default model (logits ~20).
References are computed independently: HF's own final norm module and lm_head, PyTorch forward
hooks on the HF modules, and the frozen-scale norm written out by hand.
"""
from __future__ import annotations

import pytest
import torch

from arrakis_jupyter.errors import ArrakisIndexError, ArrakisValueError
from arrakis_jupyter.tools import get_tool_class
from arrakis_jupyter.tools.decomposer import ResidualDecomposer
from arrakis_jupyter.tools.logit_attribution import LogitAttributor
from arrakis_jupyter.tools.logit_lens import LogitLens
from conftest import ARCHS, VOCAB, tiny

ATOL = 1e-4
PROMPT = "The capital of France is"
TOKENS = torch.randint(0, VOCAB, (9,), generator=torch.Generator().manual_seed(1))
TARGET, OTHER = 17, 42


def _randomised_gpt2():
    model = tiny("gpt2")
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.hf_model.named_parameters():
            if name.endswith("bias") or ".ln" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    return tiny("llama") if request.param == "llama" else _randomised_gpt2()


def _hf(model, tokens, layer=None):
    """(HF logits [pos, vocab], the residual after decoder layer ``layer`` [pos, d_model], read with a
    PyTorch hook on the HF layer; ``layer=-1``: the embeddings entering layer 0)."""
    seen = {}
    block = model.adapter.layers()[max(layer, 0)] if layer is not None else None

    def grab(module, args, kwargs, output=None):
        x = (args[0] if args else kwargs["hidden_states"]) if output is None else output
        seen["resid"] = (x[0] if isinstance(x, tuple) else x)[0].detach()

    handle = None
    if layer is not None:
        handle = (block.register_forward_pre_hook(grab, with_kwargs=True) if layer < 0
                  else block.register_forward_hook(grab, with_kwargs=True))
    try:
        with torch.no_grad():
            logits = model.hf_model(tokens[None]).logits[0]
    finally:
        if handle is not None:
            handle.remove()
    return logits, seen.get("resid")


def _hf_lens(model, resid):
    """Logit lens with HF's own final norm module and lm_head."""
    with torch.no_grad():
        return model.hf_model.get_output_embeddings()(model.adapter.ln_final()(resid))


def _frozen_final_norm(model, component, final_resid):
    """The final norm's linear part with the scale of ``final_resid``, written out by hand."""
    ln = model.adapter.ln_final()
    eps = getattr(ln, "eps", None) or ln.variance_epsilon
    if model.cfg.normalization == "layernorm":
        scale = (final_resid.var(-1, unbiased=False) + eps).sqrt()
        return (component - component.mean(-1, keepdim=True)) / scale * ln.weight
    return component / (final_resid.pow(2).mean(-1) + eps).sqrt() * ln.weight


# ---- logit attribution -------------------------------------------------------------------------

def test_tools_are_registered():
    assert get_tool_class("logit") is LogitAttributor
    assert get_tool_class("logit_lens") is LogitLens
    assert get_tool_class("decomposer") is ResidualDecomposer


def test_logit_attribution_parts_sum_to_the_logit(model):
    """Convention: frozen final-norm scale of the real forward pass; norm bias + b_U = ``constant``."""
    logits, _ = _hf(model, TOKENS)
    tool = LogitAttributor(model)
    for pos in (-1, 3):
        res = tool.logit_attribution(TOKENS, TARGET, pos=pos)
        assert res.logit == pytest.approx(float(logits[pos, TARGET]), abs=1e-5)
        assert abs(res.total - res.logit) < ATOL
        assert res.to_frame()["attribution"].sum() == pytest.approx(res.logit, abs=ATOL)
    cfg, labels = model.cfg, res.attributions.labels("component")
    is_gpt2 = cfg.normalization == "layernorm"
    assert len(labels) == 1 + is_gpt2 + cfg.n_layers * (cfg.n_heads + 1 + is_gpt2)
    assert labels[:2] == (["embed", "pos_embed"] if is_gpt2 else ["embed", "L0H0"])
    assert ("0_attn_bias" in labels) == is_gpt2 and labels[-1] == f"{cfg.n_layers - 1}_mlp_out"
    ln_bias = model.adapter.ln_final().bias.detach() if is_gpt2 else torch.zeros(cfg.d_model)
    expected_const = float(ln_bias @ model.hf_model.get_output_embeddings().weight[TARGET].detach())
    assert res.constant == pytest.approx(expected_const, abs=1e-5)
    assert (abs(res.constant) > 1e-2) == is_gpt2  # the randomised LayerNorm bias really contributes


def test_logit_attribution_of_one_head_matches_a_direct_computation(model):
    tool = LogitAttributor(model)
    res = tool.logit_attribution(TOKENS, TARGET, pos=5)
    _, cache = model.run_with_cache(TOKENS, names_filter=lambda n: n.endswith(("hook_z", "hook_resid_post")))
    layer, head = 1, 2
    with torch.no_grad():
        head_out = cache[f"blocks.{layer}.attn.hook_z"][0, 5, head] @ model.W_O[layer, head]
        final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"][0, 5]
        w_u = model.hf_model.get_output_embeddings().weight[TARGET]
        expected = float(_frozen_final_norm(model, head_out, final) @ w_u)
    got = float(res.attributions.to_frame().loc[f"L{layer}H{head}", "attribution"])
    assert got == pytest.approx(expected, abs=1e-5)
    assert res.top(3).index[0] == res.attributions.to_frame()["attribution"].abs().idxmax()


def test_logit_difference_is_the_difference_of_attributions(model):
    tool = LogitAttributor(model)
    a, b = tool.logit_attribution(TOKENS, TARGET), tool.logit_attribution(TOKENS, OTHER)
    diff = tool.logit_attribution(TOKENS, TARGET, other=OTHER)
    torch.testing.assert_close(diff.attributions.values, a.attributions.values - b.attributions.values,
                               atol=1e-5, rtol=0)
    assert diff.logit == pytest.approx(a.logit - b.logit, abs=1e-5)
    assert abs(diff.total - diff.logit) < ATOL and diff.other == OTHER


@pytest.mark.parametrize("arch", ARCHS)
def test_logit_attribution_sums_on_every_architecture(arch):
    res = LogitAttributor(tiny(arch)).logit_attribution(TOKENS, TARGET, other=OTHER)
    assert abs(res.total - res.logit) < ATOL


def test_track_token_circulation(model):
    tool = LogitAttributor(model)
    n = model.cfg.n_layers
    logits, _ = _hf(model, TOKENS)
    attribution = tool.logit_attribution(TOKENS, TARGET)
    _, cache = model.run_with_cache(TOKENS, names_filter=lambda n: n.endswith(("resid_pre", "resid_post")))
    final = cache[f"blocks.{n - 1}.hook_resid_post"][0, -1]
    w_u = model.hf_model.get_output_embeddings().weight[TARGET].detach()
    for per_window in (1, 2):
        df = tool.track_token_circulation(TOKENS, TARGET, n_layers=per_window)
        assert list(df.index) == (["0-0", "1-1"] if per_window == 1 else ["0-1"])
        assert df["lens_logit_out"].iloc[-1] == pytest.approx(float(logits[-1, TARGET]), abs=ATOL)
        assert df["lens_rank_out"].iloc[-1] == int((logits[-1] > logits[-1, TARGET]).sum()) + 1
        for window, row in df.iterrows():
            a, b = int(row["first_layer"]), int(row["last_layer"])
            resid_in = cache[f"blocks.{a}.hook_resid_pre"][0, -1]
            resid_out = cache[f"blocks.{b}.hook_resid_post"][0, -1]
            lens = _hf_lens(model, torch.stack([resid_in, resid_out]))
            assert row["lens_logit_in"] == pytest.approx(float(lens[0, TARGET]), abs=ATOL)
            assert row["lens_logit_out"] == pytest.approx(float(lens[1, TARGET]), abs=ATOL)
            assert row["lens_prob_out"] == pytest.approx(float(lens[1].softmax(-1)[TARGET]), abs=1e-6)
            assert row["lens_delta"] == pytest.approx(row["lens_logit_out"] - row["lens_logit_in"], abs=1e-5)
            with torch.no_grad():  # the window's direct effect: what it added to the residual, frozen norm
                direct = float(_frozen_final_norm(model, resid_out - resid_in, final) @ w_u)
            assert row["direct"] == pytest.approx(direct, abs=ATOL)
        embeds = attribution.attributions.to_frame().loc[lambda d: d.index.str.contains("embed"), "attribution"]
        assert df["direct"].sum() + embeds.sum() + attribution.constant == pytest.approx(attribution.logit, abs=ATOL)


# ---- logit lens ---------------------------------------------------------------------------------

def test_logit_lens_last_layer_equals_the_model_and_earlier_layers_equal_hf_norm(model):
    tool = LogitLens(model)
    logits, _ = _hf(model, TOKENS)
    last = tool.logit_lens(TOKENS, TARGET, -1)
    assert last.layer == model.cfg.n_layers - 1 and last.pos == len(TOKENS) - 1
    assert last.logit == pytest.approx(float(logits[-1, TARGET]), abs=1e-5) == pytest.approx(last.model_logit)
    assert last.prob == pytest.approx(float(logits[-1].softmax(-1)[TARGET]), abs=1e-6)
    assert last.rank == last.model_rank == int((logits[-1] > logits[-1, TARGET]).sum()) + 1
    _, resid0 = _hf(model, TOKENS, layer=0)
    lens0 = _hf_lens(model, resid0[2])
    first = tool.logit_lens(TOKENS, TARGET, 0, pos=2)
    assert first.logit == pytest.approx(float(lens0[TARGET]), abs=1e-5)
    assert first.rank == int((lens0 > lens0[TARGET]).sum()) + 1
    assert abs(first.logit - float(logits[2, TARGET])) > 1e-3  # layer 0 really is a different reading


def test_layer_attributions(model):
    df = LogitLens(model).layer_attributions(TOKENS, OTHER)
    n = model.cfg.n_layers
    assert list(df.index) == list(range(n)) and list(df.columns) == ["logit", "prob", "rank", "logit_delta"]
    for layer in range(n):
        _, resid = _hf(model, TOKENS, layer=layer)
        lens = _hf_lens(model, resid[-1])
        assert df.loc[layer, "logit"] == pytest.approx(float(lens[OTHER]), abs=ATOL)
        assert df.loc[layer, "prob"] == pytest.approx(float(lens.softmax(-1)[OTHER]), abs=1e-6)
        assert df.loc[layer, "rank"] == int((lens > lens[OTHER]).sum()) + 1
    embed_lens = _hf_lens(model, _hf(model, TOKENS, layer=-1)[1][-1])
    assert df.loc[0, "logit_delta"] == pytest.approx(df.loc[0, "logit"] - float(embed_lens[OTHER]), abs=ATOL)
    assert df.loc[1, "logit_delta"] == pytest.approx(df.loc[1, "logit"] - df.loc[0, "logit"], abs=1e-5)


def test_logit_lens_table(model):
    table = LogitLens(model).logit_lens_table(TOKENS, top_k=3)
    n, p = model.cfg.n_layers, len(TOKENS)
    assert table.token_ids.shape == table.probs.shape == (n, p, 3)
    logits, _ = _hf(model, TOKENS)
    top = logits.softmax(-1).topk(3, dim=-1)
    torch.testing.assert_close(table.token_ids.values[-1], top.indices)
    torch.testing.assert_close(table.probs.values[-1], top.values, atol=1e-6, rtol=0)
    _, resid0 = _hf(model, TOKENS, layer=0)
    top0 = _hf_lens(model, resid0).softmax(-1).topk(3, dim=-1)
    torch.testing.assert_close(table.token_ids.values[0], top0.indices)
    frame = table.to_frame()
    assert len(frame) == n * p * 3 and set(frame.columns) >= {"layer", "pos", "rank", "token_id", "prob"}
    assert table.table().shape == (n, p) and table.tokens[-1][-1][0] == str(int(top.indices[-1, 0]))


# ---- decomposer ------------------------------------------------------------------------------------

def _hf_w_out(model, layer):
    mlp = model.adapter.mlp(model.adapter.layers()[layer])
    w = model.adapter.mlp_out(mlp).weight.detach()
    return (w if model.cfg.normalization == "layernorm" else w.T), model.adapter.mlp_out(mlp)  # [d_mlp, d_model]


def test_mlp_basis(model):
    tool = ResidualDecomposer(model)
    w, _ = _hf_w_out(model, 1)
    raw = tool.mlp_basis(1, normalize=False)
    assert raw.dims == ("neuron", "d_model") and raw.shape == (model.cfg.d_mlp, model.cfg.d_model)
    torch.testing.assert_close(raw.values, w)
    unit = tool.mlp_basis(-1)
    torch.testing.assert_close(unit.values.norm(dim=-1), torch.ones(model.cfg.d_mlp))
    torch.testing.assert_close(unit.values * w.norm(dim=-1, keepdim=True), w, atol=1e-6, rtol=1e-5)


def test_decompose_residual_matches_a_direct_computation(model):
    layer, k = 0, 3
    w, down = _hf_w_out(model, layer)
    seen = {}
    handle = down.register_forward_pre_hook(lambda m, args: seen.update(post=args[0][0].detach()))
    try:
        df = ResidualDecomposer(model).decompose_residual(TOKENS, layer, top_k=k)
    finally:
        handle.remove()
    _, resid = _hf(model, TOKENS, layer=layer)
    assert len(df) == len(TOKENS) * k and list(df["rank"][:k]) == [1, 2, 3]
    for p in range(len(TOKENS)):
        cos = torch.nn.functional.cosine_similarity(resid[p][None], w, dim=-1)
        best = cos.abs().argsort(descending=True)[:k]
        rows = df[df["pos"] == p]
        assert list(rows["neuron"]) == best.tolist()
        torch.testing.assert_close(torch.tensor(rows["cosine"].values, dtype=torch.float32), cos[best],
                                   atol=1e-5, rtol=0)
        coef = resid[p] @ (w[best] / w[best].norm(dim=-1, keepdim=True)).T
        torch.testing.assert_close(torch.tensor(rows["coefficient"].values, dtype=torch.float32), coef,
                                   atol=1e-4, rtol=1e-5)
        act = seen["post"][p, best]
        torch.testing.assert_close(torch.tensor(rows["activation"].values, dtype=torch.float32), act,
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(rows["write"].values, dtype=torch.float32),
                                   act * w[best].norm(dim=-1), atol=1e-5, rtol=0)


# ---- bad input ---------------------------------------------------------------------------------------

def test_bad_input_gives_clear_errors():
    model = tiny("llama")
    lens, attr, dec = LogitLens(model), LogitAttributor(model), ResidualDecomposer(model)
    with pytest.raises(ArrakisIndexError, match="layer 2 is out of range: valid layers are 0..1"):
        lens.logit_lens(TOKENS, TARGET, 2)
    with pytest.raises(ArrakisIndexError, match="layer must be an int"):
        lens.logit_lens(TOKENS, TARGET, "1")
    with pytest.raises(ArrakisIndexError, match=r"layer -3 is out of range"):
        dec.mlp_basis(-3)
    with pytest.raises(ArrakisIndexError, match="layer 7"):
        dec.decompose_residual(TOKENS, 7)
    with pytest.raises(ArrakisIndexError, match=r"token id 101 is out of range: valid token ids are 0..100"):
        attr.logit_attribution(TOKENS, VOCAB)
    with pytest.raises(ArrakisValueError, match="no tokenizer"):
        attr.logit_attribution(TOKENS, " Paris")
    with pytest.raises(ArrakisValueError,
                       match=r"other must be a token id \(int\) or a string that is one token, got 1.5"):
        attr.logit_attribution(TOKENS, TARGET, other=1.5)
    with pytest.raises(ArrakisIndexError, match="position 9 is out of range"):
        lens.layer_attributions(TOKENS, TARGET, pos=9)
    with pytest.raises(ArrakisValueError, match="one sequence at a time, got a batch of 2"):
        attr.track_token_circulation(torch.stack([TOKENS, TOKENS]), TARGET)
    with pytest.raises(ArrakisValueError, match=r"n_layers \(layers per window\) must be an int in \[1, 2\], got 3"):
        attr.track_token_circulation(TOKENS, TARGET, n_layers=3)
    with pytest.raises(ArrakisValueError, match=r"top_k must be an int in \[1, 128\] \(d_mlp\), got 0"):
        dec.decompose_residual(TOKENS, 0, top_k=0)
    with pytest.raises(ArrakisValueError, match=r"top_k must be an int in \[1, 101\], got 102"):
        lens.logit_lens_table(TOKENS, top_k=102)


# ---- the default model (SmolLM2-135M-Instruct) ---------------------------------------------------------

def test_default_model_direct_logit_attribution_of_paris(default_model):
    attr = LogitAttributor(default_model)
    with pytest.raises(ArrakisValueError, match=r"' Paris France' is 2 tokens .*not one"):
        attr.logit_attribution(PROMPT, " Paris France")
    res = attr.logit_attribution(PROMPT, " Paris")
    assert res.target == default_model.to_single_token(" Paris") and res.pos == 4
    assert abs(res.total - res.logit) < 1e-3 and res.constant == 0.0  # RMSNorm, no b_U: no constant
    assert res.logit == pytest.approx(17.37, abs=0.05)  # measured 17.3713 (" Paris" top-1, p = 0.77)
    assert len(res.attributions.values) == 1 + 30 * 9 + 30
    assert res.top(1).index[0] == "29_mlp_out"  # measured: 6.98 of the logit 17.37
    diff = attr.logit_attribution(PROMPT, " Paris", other=" London")
    assert diff.logit > 0 and abs(diff.total - diff.logit) < 1e-3
    assert diff.top(1).index[0] == "L23H4"  # measured: 2.66 of the difference 4.13
    track = attr.track_token_circulation(PROMPT, " Paris", n_layers=7)
    assert list(track.index) == ["0-6", "7-13", "14-20", "21-27", "28-29"]
    assert track["lens_logit_out"].iloc[-1] == pytest.approx(res.logit, abs=1e-3)
    embed = float(res.attributions.to_frame().loc["embed", "attribution"])
    assert track["direct"].sum() + embed == pytest.approx(res.logit, abs=1e-3)


def test_default_model_logit_lens_and_decomposer(default_model):
    lens = LogitLens(default_model)
    df = lens.layer_attributions(PROMPT, " Paris")
    assert df["rank"].iloc[-1] == 1 and df["prob"].iloc[-1] == pytest.approx(0.77, abs=0.01)
    assert df["rank"].iloc[:20].min() > 100  # measured: " Paris" is outside the top 1000 before layer 23
    table = lens.logit_lens_table("The capital", top_k=2)
    assert table.token_ids.shape == (30, 2, 2) and table.tokens[-1][1][0] == " of"
    top = ResidualDecomposer(default_model).decompose_residual(PROMPT, 10, top_k=2)
    assert list(top["token"][::2]) == ["The", " capital", " of", " France", " is"]
    assert top["cosine"].abs().between(0, 1).all() and (top["cosine"].abs().diff()[1::2] <= 0).all()
