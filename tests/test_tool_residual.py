"""residual tool: decomposition, movement and input attribution, checked against plain PyTorch on the HF modules."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import arrakis_jupyter.tools.residual  # noqa: F401  (registers the tool)
from arrakis_jupyter.errors import ArrakisIndexError, ArrakisValueError
from arrakis_jupyter.tools.registry import get_tool_class
from arrakis_jupyter.tools.residual import ResidualTools
from conftest import tiny

ARCHS = ["llama", "gpt2"]  # llama: grouped-query attention, RMSNorm, rotary; gpt2: LayerNorm, learned positions
PROMPT, TARGET = "The capital of France is", " Paris"


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    return tiny(request.param)


def hf_blocks(model):
    return model.hf_model.transformer.h if model.cfg.hf_model_type == "gpt2" else model.hf_model.model.layers


def hf_block_outputs(model, tokens) -> torch.Tensor:
    """The output of every HF decoder layer [layer, batch, pos, d_model], from plain PyTorch forward hooks."""
    outs, handles = [], []
    for block in hf_blocks(model):
        handles.append(block.register_forward_hook(
            lambda mod, args, out: outs.append((out[0] if isinstance(out, tuple) else out).detach())))
    try:
        with torch.no_grad():
            model.hf_model(tokens)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(outs)


def hf_f(model, tokens, embeds, target, output="logit"):
    """f(embeds) through the HF model's own ``inputs_embeds`` path: [n] for embeds [n, pos, d_model]."""
    logits = model.hf_model(inputs_embeds=embeds).logits[:, -1].float()
    return logits[:, target] if output == "logit" else logits.log_softmax(-1)[:, target]


def hf_ig(model, tokens, target, baseline, steps, output="logit"):
    """Integrated gradients written directly: Gauss-Legendre nodes, one autograd call per node."""
    x = model.hf_model.get_input_embeddings()(tokens).detach()
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    total = torch.zeros_like(x)
    with torch.enable_grad():
        for a, w in zip((nodes + 1) / 2, weights / 2):
            e = (baseline + float(a) * (x - baseline)).requires_grad_(True)
            (g,) = torch.autograd.grad(hf_f(model, tokens, e, target, output).sum(), e)
            total += float(w) * g
    return (total * (x - baseline)).sum(-1)[0]


def test_registered_under_arrakis_key():
    assert get_tool_class("residual") is ResidualTools


# ---- decomposition -----------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [0, 1, -1])
def test_decomposition_sums_to_the_residual_after_the_layer(model, tokens, layer):
    result = ResidualTools(model).residual_decomposition(tokens, layer)
    l = layer % model.cfg.n_layers
    labels = ["embed"] + (["pos_embed"] if model.cfg.hf_model_type == "gpt2" else []) + \
        [f"{i}_{k}" for i in range(l + 1) for k in ("attn_out", "mlp_out")]
    assert result.components.labels("component") == labels and result.layer == l
    resid = hf_block_outputs(model, tokens)[l]
    comps = result.components.values
    assert comps.shape == (len(labels), 2, 9, 64)
    torch.testing.assert_close(comps.sum(0), resid, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(result.residual, resid, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(result.norms.values, comps.norm(dim=-1))
    proj = (comps * resid).sum(-1) / resid.norm(dim=-1)
    torch.testing.assert_close(result.projections.values, proj, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(proj.sum(0), resid.norm(dim=-1), atol=2e-6, rtol=1e-5)
    frame = result.to_frame()
    assert list(frame.columns) == ["token", "norm", "projection", "fraction"] and len(frame) == len(labels) * 18
    np.testing.assert_allclose(frame["fraction"].groupby(level=["batch", "position"]).sum(), 1.0, atol=1e-5)
    assert frame.loc[("embed", 1, 3), "token"] == str(int(tokens[1, 3]))
    torch.testing.assert_close(result[f"{l}_mlp_out"], comps[labels.index(f"{l}_mlp_out")])
    with pytest.raises(ArrakisValueError, match=r"no component '7_attn_out'; components are \['embed'"):
        result["7_attn_out"]


# ---- movement -------------------------------------------------------------------------------------
@pytest.mark.parametrize("l1,l2", [(0, 1), (1, 0), (1, 1)])
def test_movement_matches_direct_computation(model, tokens, l1, l2):
    frame = ResidualTools(model).residual_movement(tokens, l1, l2)
    outs = hf_block_outputs(model, tokens)
    r1, r2 = outs[l1].reshape(18, -1), outs[l2].reshape(18, -1)
    cos = (r1 * r2).sum(-1) / (r1.norm(dim=-1) * r2.norm(dim=-1))
    expected = {"norm_1": r1.norm(dim=-1), "norm_2": r2.norm(dim=-1), "norm_change": (r2 - r1).norm(dim=-1),
                "relative_change": (r2 - r1).norm(dim=-1) / r1.norm(dim=-1), "cosine": cos}
    for col, value in expected.items():
        np.testing.assert_allclose(frame[col].to_numpy(), value.numpy(), rtol=1e-5, atol=1e-6, err_msg=col)
    np.testing.assert_allclose(np.cos(np.deg2rad(frame["angle_deg"].to_numpy())), cos.numpy(), atol=1e-4)
    assert frame.index.names == ["batch", "position"] and len(frame) == 18
    assert frame.attrs == {"layer_1": l1, "layer_2": l2}
    if l1 == l2:
        assert (frame["norm_change"] == 0).all() and np.allclose(frame["cosine"], 1.0, atol=1e-6)
    else:
        assert (frame["norm_change"] > 0).all()


# ---- attribution -------------------------------------------------------------------------------
BASELINE = {"gpt2": "zero", "llama": 0}  # zero embeddings; token 0 for llama (zero is RMSNorm's singular point)


def test_gradient_x_input_matches_autograd_on_hf_inputs_embeds(model, tokens):
    t = tokens[:1]
    x = model.hf_model.get_input_embeddings()(t).detach()
    for baseline, b in (("zero", torch.zeros_like(x)), (5, model.hf_model.get_input_embeddings().weight[5].detach())):
        result = ResidualTools(model).feature_attribution(t, 7, method="gradient_x_input", baseline=baseline)
        with torch.enable_grad():
            e = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(hf_f(model, t, e, 7).sum(), e)
        torch.testing.assert_close(result.attributions.values, (g * (x - b)).sum(-1)[0], rtol=1e-4, atol=1e-7)
        assert result.steps == 1 and result.attributions.labels("pos")[2] == f"2:{int(t[0, 2])}"


@pytest.mark.parametrize("output", ["logit", "logprob"])
def test_integrated_gradients_satisfy_completeness(model, tokens, output):
    """Attributions sum to f(input) - f(baseline) within 1% (measured: below 1e-5 on these models)."""
    name = model.cfg.hf_model_type
    t = tokens[1:]
    result = ResidualTools(model).feature_attribution(t, 42, steps=64, baseline=BASELINE[name], output=output)
    x = model.hf_model.get_input_embeddings()(t).detach()
    b = torch.zeros_like(x) if name == "gpt2" else model.hf_model.get_input_embeddings().weight[0].detach()
    with torch.no_grad():
        f_x, f_b = hf_f(model, t, torch.cat([x, b.expand_as(x)]), 42, output).tolist()
    assert result.f_input == pytest.approx(f_x, rel=1e-5) and result.f_baseline == pytest.approx(f_b, rel=1e-5)
    assert abs(result.delta) > 1e-3  # a non-trivial difference to account for
    assert result.completeness_error < 0.01
    assert abs(float(result.attributions.values.sum()) - (f_x - f_b)) < 0.01 * abs(f_x - f_b)
    # the same integral written directly with the HF model; and a 4x finer midpoint rule agrees
    torch.testing.assert_close(result.attributions.values, hf_ig(model, t, 42, b, 64, output), rtol=1e-3, atol=1e-6)
    fine = torch.zeros(9)
    for a in (np.arange(256) + 0.5) / 256:
        with torch.enable_grad():
            e = (b + float(a) * (x - b)).requires_grad_(True)
            (g,) = torch.autograd.grad(hf_f(model, t, e, 42, output).sum(), e)
        fine += (g * (x - b)).sum(-1)[0] / 256
    torch.testing.assert_close(result.attributions.values, fine, rtol=1e-2, atol=1e-4 * abs(result.delta))


def test_ig_batches_steps_and_leaves_parameters_alone(tokens):
    model = tiny("llama")
    params = dict(model.hf_model.named_parameters())
    params["model.norm.weight"].requires_grad_(False)  # a mixed state that must survive
    before = {n: p.requires_grad for n, p in params.items()}
    tool = ResidualTools(model)
    calls, bars = [], []
    real_outputs, real_progress = tool._outputs, tool.progress
    tool._outputs = lambda *a, **k: calls.append(a[1].shape[0]) or real_outputs(*a, **k)
    tool.progress = lambda it, desc, total=None, disable=None: bars.append((desc, total)) or real_progress(it, desc, total, True)
    with torch.no_grad():  # the tool turns grad on itself
        result = tool.feature_attribution(tokens[:1], 3, steps=40, baseline=0, batch_size=16)
        assert not torch.is_grad_enabled()  # and restores the caller's grad mode
    assert calls == [2, 16, 16, 8]  # (baseline, input), then the 40 steps in 3 forward passes
    assert bars == [("integrated_gradients (40 steps)", 3)] and result.steps == 40
    assert {n: p.requires_grad for n, p in params.items()} == before
    assert all(p.grad is None for p in params.values())


def test_inaccurate_integration_warns(tokens):
    model = tiny("llama")
    with pytest.warns(UserWarning, match=r"integrated gradients: the attributions sum to .* raise steps"):
        result = ResidualTools(model).feature_attribution(tokens[:1], 3, steps=4, baseline="zero")
    assert result.completeness_error > 0.01


def test_default_model_attribution(default_model):
    tool = ResidualTools(default_model)
    paris = default_model.to_single_token(TARGET)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ig = tool.feature_attribution(PROMPT, TARGET, steps=64, fixed_positions=(0,))
    # baseline: the pad token's embedding at positions 1.., the input's at position 0 (the attention sink)
    assert ig.baseline == "embedding of token 2 at every position, input kept at positions [0]"
    assert ig.attributions.labels("pos") == ["0:The", "1: capital", "2: of", "3: France", "4: is"]
    assert float(ig.attributions[0]) == 0.0 and ig.target == paris
    assert ig.completeness_error < 0.01, ig.completeness_error  # measured 0.15%
    tokens = default_model.to_tokens(PROMPT)
    x = default_model.W_E[tokens].detach()
    with torch.no_grad():
        assert ig.f_input == pytest.approx(float(hf_f(default_model, tokens, x, paris)[0]), rel=1e-5)
    gxi = tool.feature_attribution(PROMPT, paris, method="gradient_x_input", baseline="zero")
    with torch.enable_grad():
        e = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(hf_f(default_model, tokens, e, paris).sum(), e)
    torch.testing.assert_close(gxi.attributions.values, (g * x).sum(-1)[0], rtol=1e-4, atol=1e-5)

    decomposition = tool.residual_decomposition(PROMPT, 29)
    resid = hf_block_outputs(default_model, tokens)[29]
    torch.testing.assert_close(decomposition.components.values.sum(0), resid, atol=1e-3, rtol=1e-5)
    assert decomposition.components.shape[0] == 61
    frame = tool.residual_movement(PROMPT, 3, 20)
    assert list(frame["token"]) == default_model.to_str_tokens(PROMPT)
    outs = hf_block_outputs(default_model, tokens)
    np.testing.assert_allclose(frame["norm_change"], (outs[20] - outs[3]).norm(dim=-1)[0], rtol=1e-5)


def test_bad_input_gets_clear_errors(model, tokens, default_model):
    tool = ResidualTools(model)
    with pytest.raises(ArrakisIndexError, match=r"layer 2 is out of range: valid layers are 0..1"):
        tool.residual_decomposition(tokens, 2)
    with pytest.raises(ArrakisIndexError, match=r"layer -3 is out of range"):
        tool.residual_movement(tokens, 0, -3)
    t = tokens[:1]
    with pytest.raises(ArrakisValueError, match=r"target_ids must be one token, got 2: \[3, 4\]"):
        tool.feature_attribution(t, [3, 4])
    with pytest.raises(ArrakisValueError, match="one token, got a tensor of 2 ids"):
        tool.feature_attribution(t, torch.tensor([3, 4]))
    with pytest.raises(ArrakisIndexError, match=r"token id 101 is out of range"):
        tool.feature_attribution(t, 101)
    with pytest.raises(ArrakisValueError, match="method must be one of"):
        tool.feature_attribution(t, 3, method="saliency")
    with pytest.raises(ArrakisValueError, match="output must be 'logit' or 'logprob'"):
        tool.feature_attribution(t, 3, output="prob")
    with pytest.raises(ArrakisValueError, match="steps must be a positive int, got 0"):
        tool.feature_attribution(t, 3, steps=0)
    with pytest.raises(ArrakisValueError, match="one sequence at a time, got a batch of 2"):
        tool.feature_attribution(tokens, 3)
    with pytest.raises(ArrakisValueError, match="needs a tokenizer with a pad token"):
        tool.feature_attribution(t, 3, baseline="pad")
    with pytest.raises(ArrakisValueError, match=r"\[pos, d_model\] = \(9, 64\), got \(3, 64\)"):
        tool.feature_attribution(t, 3, baseline=torch.zeros(3, 64))
    with pytest.raises(ArrakisIndexError, match="fixed position 9 is out of range"):
        tool.feature_attribution(t, 3, fixed_positions=(9,))
    with pytest.raises(ArrakisValueError, match=r"' Paris is' is 2 tokens \(\[' Paris', ' is'\]\), not one"):
        ResidualTools(default_model).feature_attribution(PROMPT, " Paris is")
