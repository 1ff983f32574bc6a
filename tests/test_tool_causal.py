"""The ``causal`` tool: activation patching, attribution patching, causal tracing, neuron interventions.

What is checked, and against what:
- Activation patching equals TransformerLens 4's ``transformer_lens.patching`` run on a
  ``TransformerBridge.boot_transformers(..., hf_model=deepcopy(model.hf_model))`` of the same in-memory
  model: tiny ``llama`` (grouped-query attention 4:2) and ``gpt2`` with O(1) random weights, every hook
  (resid_pre, attn_out, mlp_out, z, pattern) and grid (layer_pos, layer, head, head_pos), for one
  corrupted sequence (the path that reuses the unpatched run's early layers and KV cache) and a batch
  of two (plain batched runs);
  and the default model (SmolLM2-135M, 9:3 heads) on a subset of resid_pre cells. Tolerance 1e-3
  absolute; measured differences are <= 2.4e-6 (tiny) and 1.4e-5 (default model, metric ~10).
- The batched sweep equals a one-cell-at-a-time loop of ``run_with_hooks`` on all nine tiny
  architectures (1e-5), with runs starting after position 0 from the KV cache, so skipping earlier
  layers and positions is exact for every supported family.
- Attribution patching equals central finite differences of actual patching with the cell's
  difference scaled down, (m(corr + e*d) - m(corr - e*d)) / 2e with d = clean - corrupted on the
  cell's entries and e = 3e-3, in float64 (the linear regime of patching), to 3e-4 absolute on values
  up to ~0.4 (measured <= 4.2e-5; the norms and the softmax run in float32 inside the model). The
  model's parameter gradients stay untouched.
- Causal tracing of "The Eiffel Tower is located in the city of" -> " Paris" on the default model:
  the corrupted probability is below a tenth of the clean one (0.015 vs 0.70); restoring the final
  layer at the last position gives the clean probability (1e-5), restoring it anywhere else the
  corrupted one (1e-6). On the tiny models every cell (also the attn/mlp windows) equals a
  hand-written ROME run: noise on the embeddings, clean values written back over the window (1e-6).
- Neuron interventions equal editing the weights instead: scaling the neuron's row of the MLP output
  projection (in a copy) by ``scale`` gives the same logits (1e-5); the model is left unchanged.
- Bad input: wrong layer / head / neuron / position index, tokens of different lengths, a metric
  that does not return a scalar (or is not differentiable, for attribution), unknown hook / grid.
"""
from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

import arrakis_jupyter.tools.causal  # noqa: F401  (registers the tool)
from arrakis_jupyter.errors import ArrakisIndexError, ArrakisValueError
from arrakis_jupyter.tools import LabelledTensor, get_tool_class
from arrakis_jupyter.tools.causal import CausalTracer, NeuronEffect, TraceResult
from conftest import ARCHS, VOCAB, tiny, offline_guard

TL_TOL = 1e-3
TL_NAMES = {"llama": "meta-llama/Llama-3.2-1B", "gpt2": "openai-community/gpt2"}
TWO_ARCHS = ["llama", "gpt2"]


def _randomised(arch: str, dtype=torch.float32):
    """A tiny model with O(1) weights (matrices N(0, 1/fan_in)), so that patching effects are large."""
    model = tiny(arch)
    model.hf_model.to(dtype)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.hf_model.named_parameters():
            if p.ndim == 2:
                fan_in = p.shape[0] if ".c_" in name else p.shape[1]  # GPT-2 Conv1D is [in, out]
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / fan_in ** 0.5)
    return model


def _pair(batch: int, n_pos: int = 7, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(4, VOCAB, (batch, n_pos), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = (corrupted[:, 2] + 7) % VOCAB
    return clean, corrupted


def logit_diff(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, -1, 5] - logits[:, -1, 7]).mean()


def _boot(name: str, hf_model, tokenizer):
    with pytest.MonkeyPatch.context() as mp:
        offline_guard(mp)
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers(name, hf_model=copy.deepcopy(hf_model), tokenizer=tokenizer,
                                                     device="cpu")
    bridge.eval()
    return bridge


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
    """A word-level tokenizer over exactly the tiny models' vocabulary (the bridge needs one with a path)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="t0", pad_token="t1", bos_token="t2", eos_token="t3")
    path = tmp_path_factory.mktemp("word_level_tokenizer")
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module", params=TWO_ARCHS)
def tl_pair(request, word_tokenizer):
    model = _randomised(request.param)
    return model, _boot(TL_NAMES[request.param], model.hf_model, word_tokenizer)


@pytest.fixture(scope="module", params=TWO_ARCHS)
def small(request):
    return _randomised(request.param)


# ---- activation patching vs TransformerLens -----------------------------------------------------------

def _whole_activation(corrupted_activation, index, clean_activation):
    return clean_activation.clone()


@pytest.mark.parametrize("batch", [1, 2])
def test_patch_matches_transformer_lens(tl_pair, batch):
    from transformer_lens import patching

    model, bridge = tl_pair
    clean, corrupted = _pair(batch)
    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(clean)
    tool = CausalTracer(model)
    cases = [  # (hook, by, TL function, how TL's axes map to ours)
        ("resid_pre", "layer_pos", patching.get_act_patch_resid_pre, None),
        ("attn_out", "layer_pos", patching.get_act_patch_attn_out, None),
        ("mlp_out", "layer_pos", patching.get_act_patch_mlp_out, None),
        ("z", "head_pos", patching.get_act_patch_attn_head_out_by_pos, None),
        ("z", "head", patching.get_act_patch_attn_head_out_all_pos, None),
        ("pattern", "head", patching.get_act_patch_attn_head_pattern_all_pos, None),
        ("pattern", "head_pos", patching.get_act_patch_attn_head_pattern_by_pos, (0, 2, 1)),  # TL: layer, head, dest
        ("mlp_out", "layer", None, None),
    ]
    if batch > 1:  # the plain (unshared) batched path: one case per kind of activation layout
        cases = [cases[i] for i in (0, 4, 6, 7)]
    for hook, by, fn, perm in cases:
        with torch.no_grad():
            if fn is None:
                ref = patching.generic_activation_patch(bridge, corrupted, clean_cache, logit_diff, _whole_activation,
                                                        hook, index_axis_names=("layer",))
            else:
                ref = fn(bridge, corrupted, clean_cache, logit_diff)
        ref = ref.permute(*perm) if perm else ref
        ours = tool.patch(clean, corrupted, logit_diff, hook=hook, by=by, chunk_size=5, progress=False)
        assert isinstance(ours, LabelledTensor) and ours.values.dtype == torch.float32
        assert ours.shape == ref.shape, (hook, by)
        assert float(ref.std()) > 0.01, f"{hook}/{by}: the reference does not vary; the comparison would be vacuous"
        torch.testing.assert_close(ours.values, ref.float(), atol=TL_TOL, rtol=0, msg=f"{hook} by {by}")


def test_patch_labels_and_subsets(tl_pair):
    model, _ = tl_pair
    clean, corrupted = _pair(1)
    tool = CausalTracer(model)
    full = tool.patch(clean, corrupted, logit_diff, hook="z", by="head_pos", progress=False)
    assert full.dims == ("layer", "pos", "head")
    assert full.coords["pos"][2] == f"2: {int(clean[0, 2])}" and full.coords["head"] == [0, 1, 2, 3]
    part = tool.patch(clean, corrupted, logit_diff, hook="z", by="head_pos", layers=[1], positions=[-1, 2],
                      heads=[3, 0], progress=False)
    assert part.coords == {"layer": [1], "pos": [full.coords["pos"][6], full.coords["pos"][2]], "head": [3, 0]}
    torch.testing.assert_close(part.values, full.values[1:][:, [6, 2]][:, :, [3, 0]], atol=1e-6, rtol=0)
    assert isinstance(full.to_frame(), pd.DataFrame)


def test_patch_default_model_matches_transformer_lens(default_model):
    from transformer_lens import patching

    clean = default_model.to_tokens("The Eiffel Tower is located in the city of")
    corrupted = default_model.to_tokens("The Colosseum is located in the city of")
    paris, rome = default_model.to_single_token(" Paris"), default_model.to_single_token(" Rome")

    def metric(logits):
        return (logits[:, -1, paris] - logits[:, -1, rome]).mean()

    layers, positions = [0, 14, 29], [3, 9]
    ours = CausalTracer(default_model).patch(clean, corrupted, metric, layers=layers, positions=positions,
                                             progress=False)
    bridge = _boot("HuggingFaceTB/SmolLM2-135M-Instruct", default_model.hf_model, default_model.tokenizer)
    index = pd.DataFrame({"layer": [l for l in layers for _ in positions], "pos": positions * len(layers)})
    with torch.no_grad():
        _, cache = bridge.run_with_cache(clean)
        ref = patching.generic_activation_patch(bridge, corrupted, cache, metric, patching.layer_pos_patch_setter,
                                                "resid_pre", index_df=index)
    assert float(ref.max() - ref.min()) > 5  # restoring the subject's last token early matters a lot here
    torch.testing.assert_close(ours.values.reshape(-1), ref.float(), atol=TL_TOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_sweep_equals_one_run_per_cell(arch):
    """Shared-prefix batching vs a plain loop, on every architecture (resid_pre, attn_out, z, pattern)."""
    model = tiny(arch)
    clean, corrupted = _pair(1, n_pos=6)
    _, cache = model.run_with_cache(clean)
    tool = CausalTracer(model)
    positions = [1, 4]  # a subset keeps the one-run-per-cell loop short
    for hook, by in [("resid_pre", "layer_pos"), ("attn_out", "layer"), ("z", "head"), ("pattern", "head_pos")]:
        ours = tool.patch(clean, corrupted, logit_diff, hook=hook, by=by, positions=positions, chunk_size=3,
                          progress=False)
        _, _, cells = tool._grid(corrupted, hook, by, None, positions, None)
        expected = []
        for (name,), index, _ in cells:
            def write(act, hook, index=index):
                act = act.clone()
                act[(slice(None),) + index] = cache[hook.name][(slice(None),) + index]
                return act
            with torch.no_grad():
                expected.append(float(logit_diff(model.run_with_hooks(corrupted, fwd_hooks=[(name, write)]))))
        torch.testing.assert_close(ours.values.reshape(-1), torch.tensor(expected), atol=1e-5, rtol=0,
                                   msg=f"{arch} {hook} by {by}")
        if by.endswith("pos"):  # the runs started after position 0, from the unpatched run's KV cache
            assert all(p0 >= 1 for _, p0, _ in tool._last_plan), tool._last_plan


def test_long_sweeps_show_a_progress_bar(capsys):
    model = tiny("gpt2")
    clean, corrupted = _pair(1)
    CausalTracer(model).patch(clean, corrupted, logit_diff, chunk_size=2)
    assert "patching resid_pre by layer_pos" in capsys.readouterr().err


# ---- attribution patching --------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", TWO_ARCHS)
def test_attribution_patching_is_the_linearisation_of_patching(arch):
    model = _randomised(arch, torch.float64)
    clean, corrupted = _pair(1)

    def metric(logits):
        return logits[:, -1].log_softmax(-1)[:, 5].mean()

    tool = CausalTracer(model)
    _, clean_cache = model.run_with_cache(clean)
    _, corr_cache = model.run_with_cache(corrupted)
    eps = 3e-3
    for hook, by in [("resid_pre", "layer_pos"), ("attn_out", "layer_pos"), ("mlp_out", "layer"),
                     ("z", "head_pos"), ("z", "head"), ("pattern", "head"), ("pattern", "head_pos")]:
        attr = tool.attribution_patch(clean, corrupted, metric, hook=hook, by=by)
        _, _, cells = tool._grid(corrupted, hook, by, None, None, None)
        fd = []
        for (name,), index, _ in cells:
            values = []
            for e in (eps, -eps):
                def nudge(act, hook, e=e, index=index):
                    sel = (slice(None),) + index
                    act = act.clone()
                    act[sel] = act[sel] + e * (clean_cache[hook.name][sel] - corr_cache[hook.name][sel])
                    return act
                with torch.no_grad():
                    values.append(float(metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, nudge)]))))
            fd.append((values[0] - values[1]) / (2 * eps))
        fd = torch.tensor(fd, dtype=torch.float64).reshape(attr.shape)
        assert float(fd.abs().max()) > 0.05, f"{hook}/{by}: vacuous"
        torch.testing.assert_close(attr.values.double(), fd, atol=3e-4, rtol=0,
                                   msg=lambda m: f"{arch} {hook} by {by}: {m}")
    assert all(p.grad is None for p in model.hf_model.parameters())


# ---- causal tracing ----------------------------------------------------------------------------------------

def test_causal_tracing_of_a_fact_on_the_default_model(default_model):
    prompt = "The Eiffel Tower is located in the city of"
    result = CausalTracer(default_model).trace_token_probability(
        prompt, " Paris", subject="The Eiffel Tower", layers=[8, 29], positions=[2, 5, 9], n_samples=5,
        progress=False)
    assert isinstance(result, TraceResult) and result.subject_positions == [0, 1, 2, 3]
    with torch.no_grad():
        clean = float(default_model(prompt)[0, -1].softmax(-1)[default_model.to_single_token(" Paris")])
    assert result.clean_prob == pytest.approx(clean, abs=1e-6) and clean > 0.5
    assert result.corrupted_prob < 0.1 * result.clean_prob
    scores = result.scores
    assert scores.dims == ("layer", "pos") and scores.coords["pos"] == ["2: iffel", "5:  located", "9:  of"]
    assert abs(float(scores[1, 2]) - result.clean_prob) < 1e-5  # final layer, last position: the clean run
    torch.testing.assert_close(scores[1, :2], torch.full((2,), result.corrupted_prob), atol=1e-6, rtol=0)
    assert float(scores[0, 0]) > 5 * result.corrupted_prob  # the subject in a middle layer carries the fact


@pytest.mark.parametrize("kind", ["hidden", "attn", "mlp"])
def test_tracing_equals_a_hand_written_rome_run(small, kind):
    model, tokens, target = small, _pair(1, n_pos=5)[0], 9
    window, subject, n_samples = 3, (1, 3), 4
    tool = CausalTracer(model)
    result = tool.trace_token_probability(tokens, target, subject=subject, kind=kind, window=window,
                                          n_samples=n_samples, seed=11, chunk_size=3, progress=False)
    assert any(p0 > 0 for _, p0, _ in tool._last_plan)  # the KV-cache path was taken
    site = {"hidden": "hook_resid_post", "attn": "hook_attn_out", "mlp": "hook_mlp_out"}[kind]
    std = 3.0 * float(model.W_E.detach().std())
    assert result.noise_std == pytest.approx(std)
    noise = torch.randn(n_samples, 2, model.cfg.d_model, generator=torch.Generator().manual_seed(11)) * std
    _, cache = model.run_with_cache(tokens)
    rows = tokens.repeat(n_samples, 1)

    def noised(act, hook):
        act = act.clone()
        act[:, 1:3] += noise
        return act

    def run(extra=()):
        with torch.no_grad():
            logits = model.run_with_hooks(rows, fwd_hooks=[("hook_embed", noised), *extra])
        return float(logits[:, -1].softmax(-1)[:, target].mean())

    assert result.corrupted_prob == pytest.approx(run(), abs=1e-6)
    with torch.no_grad():
        clean_prob = float(model(tokens)[0, -1].softmax(-1)[target])
    assert result.clean_prob == pytest.approx(clean_prob, abs=1e-6)
    n_layers, n_pos = model.cfg.n_layers, tokens.shape[1]
    expected = torch.zeros(n_layers, n_pos)
    for layer in range(n_layers):
        span = [layer] if kind == "hidden" else range(max(0, layer - 1), min(n_layers, layer + 2))
        for pos in range(n_pos):
            def restore(act, hook, pos=pos):
                act = act.clone()
                act[:, pos] = cache[hook.name][:, pos]
                return act
            expected[layer, pos] = run([(f"blocks.{k}.{site}", restore) for k in span])
    torch.testing.assert_close(result.scores.values, expected, atol=1e-6, rtol=0)
    assert float(expected.max() - expected.min()) > 1e-3


# ---- neuron interventions -------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [0.0, 3.0])
def test_neuron_intervention_equals_editing_the_weights(small, scale):
    model, tokens = small, _pair(1)[0]
    layer, neuron = 1, 17
    before_weights = {n: p.detach().clone() for n, p in model.hf_model.named_parameters()}
    effect = CausalTracer(model).intervene_on_neuron(tokens, layer, neuron, scale=scale, top_k=5)
    assert isinstance(effect, NeuronEffect) and effect.pos == tokens.shape[1] - 1
    edited = copy.deepcopy(model.hf_model)
    out_proj = model.adapter.mlp_out(model.adapter.mlp(model.adapter.layers()[layer]))
    name = next(n for n, m in model.hf_model.named_modules() if m is out_proj)
    w = edited.get_submodule(name).weight
    with torch.no_grad():
        if type(out_proj).__name__ == "Conv1D":  # [d_mlp, d_model]
            w[neuron] *= scale
        else:  # nn.Linear [d_model, d_mlp]
            w[:, neuron] *= scale
        ref = edited(tokens).logits[0, -1]
        plain = model.hf_model(tokens).logits[0, -1]
    torch.testing.assert_close(effect.logits_after, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(effect.logits_before, plain, atol=1e-5, rtol=0)
    assert float((effect.logits_after - effect.logits_before).abs().max()) > 1e-3
    assert all(torch.equal(p, before_weights[n]) for n, p in model.hf_model.named_parameters())
    assert list(effect.top.columns) == ["token_id", "token", "prob_before", "prob_after", "delta_prob", "delta_logit"]
    delta = (effect.logits_after.softmax(-1) - effect.logits_before.softmax(-1)).abs()
    assert effect.top["delta_prob"].abs().max() == pytest.approx(float(delta.max()), abs=1e-7)
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.mlp.hook_post")
    torch.testing.assert_close(effect.activation, cache[f"blocks.{layer}.mlp.hook_post"][0, :, neuron])


# ---- registry and bad input ----------------------------------------------------------------------------------

def test_registered_as_causal():
    assert get_tool_class("causal") is CausalTracer


def test_bad_input_is_a_clear_error():
    model = tiny("llama")
    tool = CausalTracer(model)
    clean, corrupted = _pair(1)
    with pytest.raises(ArrakisIndexError, match="layer 2 is out of range: valid layers are 0..1"):
        tool.patch(clean, corrupted, logit_diff, layers=[0, 2])
    with pytest.raises(ArrakisIndexError, match="head 4 is out of range: valid heads are 0..3"):
        tool.patch(clean, corrupted, logit_diff, hook="z", by="head", heads=[4])
    with pytest.raises(ArrakisIndexError, match="layer 5 is out of range"):
        tool.attribution_patch(clean, corrupted, logit_diff, layers=[5])
    with pytest.raises(ArrakisIndexError, match="head -5 is out of range"):
        tool.attribution_patch(clean, corrupted, logit_diff, hook="pattern", by="head", heads=[-5])
    with pytest.raises(ArrakisIndexError, match="position 7 is out of range"):
        tool.patch(clean, corrupted, logit_diff, positions=[7])
    with pytest.raises(ArrakisValueError, match=r"same shape; got \(1, 7\) and \(1, 6\)"):
        tool.patch(clean, corrupted[:, :6], logit_diff)
    with pytest.raises(ArrakisValueError, match=r"same shape; got \(2, 7\) and \(1, 7\)"):
        tool.attribution_patch(clean.repeat(2, 1), corrupted, logit_diff)
    with pytest.raises(ArrakisValueError, match=r"metric must return a scalar .* got a tensor of shape \(1,\)"):
        tool.patch(clean, corrupted, lambda logits: logits[:, -1, 5])
    with pytest.raises(ArrakisValueError, match="metric must return a scalar .* got str"):
        tool.patch(clean, corrupted, lambda logits: "high")
    with pytest.raises(ArrakisValueError, match=r"shape \(1, 7\)"):
        tool.attribution_patch(clean, corrupted, lambda logits: logits[:, :, 5])
    with pytest.raises(ArrakisValueError, match="differentiable"):
        tool.attribution_patch(clean, corrupted, lambda logits: logits[0, -1, 5].detach())
    with pytest.raises(ArrakisValueError, match="differentiable"):
        tool.attribution_patch(clean, corrupted, lambda logits: 1.0)
    with pytest.raises(ArrakisValueError,
                       match="hook must be one of 'resid_pre', 'attn_out', 'mlp_out', 'z', 'pattern'"):
        tool.patch(clean, corrupted, logit_diff, hook="resid_mid")
    with pytest.raises(ArrakisValueError, match="by='head' is not available for hook='resid_pre'"):
        tool.patch(clean, corrupted, logit_diff, by="head")
    with pytest.raises(ArrakisIndexError, match="layer 2 is out of range"):
        tool.intervene_on_neuron(clean, 2, 0)
    with pytest.raises(ArrakisIndexError, match="neuron 128 is out of range: valid neurons are 0..127"):
        tool.intervene_on_neuron(clean, 1, 128)
    with pytest.raises(ArrakisIndexError, match="layer -3 is out of range"):
        tool.trace_token_probability(clean, 5, layers=[-3])
    with pytest.raises(ArrakisValueError, match="kind must be one of 'hidden', 'attn', 'mlp'"):
        tool.trace_token_probability(clean, 5, kind="resid")
    with pytest.raises(ArrakisValueError, match=r"subject span .* got \(3, 3\)"):
        tool.trace_token_probability(clean, 5, subject=(3, 3))
    with pytest.raises(ArrakisValueError, match="takes one sequence at a time, got a batch of 2"):
        tool.trace_token_probability(clean.repeat(2, 1), 5)


def test_subject_string_not_in_prompt(default_model):
    tool = CausalTracer(default_model)
    with pytest.raises(ArrakisValueError, match="subject 'Big Ben' does not occur in the prompt's tokens"):
        tool.trace_token_probability("The Eiffel Tower is located in the city of", " Paris", subject="Big Ben")
    with pytest.raises(ArrakisValueError, match="is 2 tokens"):
        tool.trace_token_probability("The Eiffel Tower is located in the city of", " Paris Paris")
