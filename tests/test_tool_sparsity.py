"""The ``sparsity`` tool: activation sparsity, polysemantic neurons, reversible pruning.

What is checked, and against what:
- Per-neuron sparsity equals a direct computation: ``run_with_cache`` on each input separately, the
  real tokens' activations concatenated, ``(|a| <= threshold).float().mean(0)`` by hand. Exact equality
  (the same float32 values) on tiny ``llama`` (SiLU, gated; default threshold 1e-2 x mean |a|, the mean itself
  to 1e-9 relative), ``gpt2`` (GELU) and a ReLU ``gpt2`` (default threshold exactly 0), and on the default
  model (SmolLM2-135M) with a few texts one per batch. Padded batches of texts may flip activations
  within float error of the threshold: there the fractions agree to 3 tokens per neuron.
- Polysemanticity on a constructed ReLU ``gpt2`` whose layer-0 neurons are set by hand: neuron 0 fires on
  token 5 only (score 0), neuron 1 on tokens 10, 20, 30, 40, each 5 times among its top 20 (score
  ln 4, exactly to 1e-12), neuron 2 never (NaN, not listed). On the default model: scores equal a
  hand computation of the top-20 token entropy from ``run_with_cache`` (1e-12); the frame is sorted
  and has the stated columns.
- Pruning: inside the context the pruned neurons' ``mlp.hook_post`` is exactly 0, the others of the
  first pruned layer are bit-identical to the unpruned run, and the logits equal a copy of the model
  whose ``W_out`` rows of the pruned neurons are zeroed (1e-5); after the context the model's logits
  and weights are bit-identical and no PyTorch hook is left. ``sparsity_threshold > 1`` prunes nothing
  and changes nothing (bit-identical logits, equal losses). The reported losses equal
  ``corpus.corpus_loss`` computed directly, without and with the same neurons zeroed by a hand-written
  hook (exact).
- Bad input: unknown / out-of-range layer or hook name, a non-per-token hook, an empty corpus,
  thresholds out of range: errors that name the value and what is accepted.
"""
from __future__ import annotations

import copy
import math
from collections import Counter

import pandas as pd
import pytest
import torch
from conftest import VOCAB, tiny

import arrakis_jupyter.tools.sparsity  # noqa: F401  (registers the tool)
from arrakis_jupyter import corpus
from arrakis_jupyter.errors import ArrakisIndexError, ArrakisValueError, HookNameError
from arrakis_jupyter.tools.registry import get_tool_class
from arrakis_jupyter.tools.sparsity import (
    PrunedNetwork,
    SparsityAnalyzer,
    SparsityResult,
)

TEXTS = ["The State of the Union is strong.", "We will balance the budget in 1998 and 1999, and then",
         "Short", "Our economy grew faster than at any time in a generation."]
COLUMNS = ["layer", "neuron", "score", "effective_types", "n_types", "n_active", "max_activation", "examples"]


def id_inputs(n: int = 5, seed: int = 1) -> list[torch.Tensor]:
    """Token-id inputs of different lengths and shapes ([pos] and [batch, pos])."""
    g = torch.Generator().manual_seed(seed)
    items = [torch.randint(0, VOCAB, (3 + 4 * i,), generator=g) for i in range(n)]
    return items + [torch.randint(0, VOCAB, (2, 7), generator=g)]


@torch.no_grad()
def by_hand(model, inputs, hook: str) -> torch.Tensor:
    """Activations [n_tokens, d] at ``hook``: each input run on its own, real tokens concatenated (texts of
    one token are skipped, as ``corpus.token_batches`` does: such a text has no next token to predict)."""
    acts = []
    for item in inputs:
        if isinstance(item, str) and model.to_tokens(item).shape[1] < 2:
            continue
        _, cache = model.run_with_cache(item, names_filter=hook)
        a = cache[hook]
        acts.append(a.reshape(-1, a.shape[-1]).float())
    return torch.cat(acts)


@pytest.fixture(scope="module", params=["llama", "gpt2", "gpt2-relu"])
def small(request):
    if request.param == "gpt2-relu":
        return tiny("gpt2", activation_function="relu")
    return tiny(request.param)


def test_registered_as_sparsity():
    assert get_tool_class("sparsity") is SparsityAnalyzer


# ---- sparsity ----------------------------------------------------------------------------------------

def test_sparsity_equals_a_direct_computation_on_tiny_models(small):
    tool = SparsityAnalyzer(small)
    inputs = id_inputs()
    for layer, hook in [(1, "mlp.hook_post"), (0, "hook_resid_post")]:
        res = tool.compute_activation_sparsity(inputs, layer, hook=hook, progress=False)
        a = by_hand(small, inputs, f"blocks.{layer}.{hook}")
        assert isinstance(res, SparsityResult) and res.hook == f"blocks.{layer}.{hook}"
        assert res.n_tokens == a.shape[0] == sum(t.numel() for t in inputs)
        if hook == "mlp.hook_post" and small.cfg.act_fn == "relu":
            assert res.threshold == 0.0 and "exact zeros" in res.threshold_rule and res.mean_abs is None
        else:  # smooth activations / residual stream: 1e-2 x the mean |a| over the same tokens
            mean_abs = float(a.double().abs().mean())
            assert res.mean_abs == pytest.approx(mean_abs, rel=1e-9)
            assert res.threshold == pytest.approx(1e-2 * mean_abs, rel=1e-9) and "mean |a|" in res.threshold_rule
        expected = (a.abs() <= res.threshold).float().mean(0)
        assert res.per_neuron.dims == ("neuron",) and res.per_neuron.values.dtype == torch.float32
        assert torch.equal(res.per_neuron.values, expected)
        assert torch.equal(res.counts, (a.abs() <= res.threshold).sum(0))
        assert res.overall == pytest.approx(float((a.abs() <= res.threshold).double().mean()), abs=1e-12)
        assert float(res) == res.overall and list(res.to_frame().columns) == ["sparsity", "inactive_tokens"]
    # an explicit threshold, a full hook name, negative layer index, a one-shot generator
    res = tool.compute_activation_sparsity((t for t in inputs), "blocks.0.mlp.hook_pre", threshold=0.05,
                                           progress=False)
    a = by_hand(small, inputs, "blocks.0.mlp.hook_pre")
    assert res.threshold_rule == "given" and torch.equal(res.per_neuron.values, (a.abs() <= 0.05).float().mean(0))
    gen = tool.compute_activation_sparsity((t for t in inputs), -1, progress=False)
    assert torch.equal(gen.per_neuron.values, tool.compute_activation_sparsity(inputs, 1, progress=False)
                       .per_neuron.values)
    capped = tool.compute_activation_sparsity(inputs, 1, max_tokens=10, threshold=0.0, progress=False)
    assert capped.n_tokens == 10 and torch.equal(
        capped.per_neuron.values, (by_hand(small, inputs[:2], "blocks.1.mlp.hook_post")[:10] == 0).float().mean(0))


def test_relu_sparsity_of_a_known_neuron():
    """A ReLU neuron whose weights make it fire on one token id: its sparsity is the share of other tokens."""
    model = constructed()
    inputs = constructed_inputs()
    res = SparsityAnalyzer(model).compute_activation_sparsity(inputs, 0, progress=False)
    n = sum(t.numel() for t in inputs)
    assert res.threshold == 0.0
    assert res.counts[:3].tolist() == [n - 3, n - 20, n] and res.per_neuron[2] == 1.0


def test_sparsity_equals_a_direct_computation_on_the_default_model(default_model):
    m = default_model
    tool = SparsityAnalyzer(m)
    hook = "blocks.6.mlp.hook_post"
    a = by_hand(m, TEXTS, hook)
    res = tool.compute_activation_sparsity(TEXTS, 6, batch_size=1, progress=False)
    assert m.cfg.act_fn == "silu" and res.n_tokens == a.shape[0]
    assert res.mean_abs == pytest.approx(float(a.double().abs().mean()), rel=1e-9)
    assert torch.equal(res.per_neuron.values, (a.abs() <= res.threshold).float().mean(0))
    assert 0 < res.overall < 0.2
    # padded batches: real positions agree with unpadded runs only to float error (see test_corpus)
    batched = tool.compute_activation_sparsity(TEXTS, 6, threshold=res.threshold, batch_size=4, progress=False)
    assert batched.n_tokens == res.n_tokens
    assert (batched.counts - res.counts).abs().max() <= 3
    resid = tool.compute_activation_sparsity(TEXTS, "blocks.2.hook_resid_post", threshold=0.1, batch_size=1,
                                             progress=False)
    a2 = by_hand(m, TEXTS, "blocks.2.hook_resid_post")
    assert torch.equal(resid.per_neuron.values, (a2.abs() <= 0.1).float().mean(0))


# ---- polysemanticity ----------------------------------------------------------------------------------

SPECIAL = [5, 10, 20, 30, 40]


def constructed():
    """A ReLU gpt2 whose layer-0 MLP input is exactly the token embedding (no positions, attention output
    zero), with orthogonal zero-mean embeddings for the SPECIAL tokens: neuron 0 reads token 5, neuron 1
    tokens 10, 20, 30, 40 (weights 1.0, 1.1, 1.2, 1.3), neuron 2 nothing; bias -1 each."""
    model = tiny("gpt2", activation_function="relu")
    h = model.hf_model.transformer
    d = model.cfg.d_model
    g = torch.Generator().manual_seed(7)
    basis, _ = torch.linalg.qr(torch.cat([torch.ones(d, 1), torch.randn(d, len(SPECIAL), generator=g)], 1))
    q = basis[:, 1:].T  # [5, d] orthonormal, orthogonal to the ones vector (zero mean)
    emb = torch.randn(VOCAB, d, generator=g)
    emb = emb - emb @ basis @ basis.T  # zero mean, orthogonal to every SPECIAL direction
    emb[SPECIAL] = q
    with torch.no_grad():
        h.wte.weight.copy_(emb)
        h.wpe.weight.zero_()
        block = h.h[0]
        block.attn.c_proj.weight.zero_()
        block.attn.c_proj.bias.zero_()
        block.ln_2.weight.fill_(1.0)
        block.ln_2.bias.zero_()
        w, b = block.mlp.c_fc.weight, block.mlp.c_fc.bias  # Conv1D: x @ w + b, w [d, d_mlp]
        w[:, :3] = 0
        w[:, 0] = q[0]
        for i, c in zip(range(1, 5), (1.0, 1.1, 1.2, 1.3)):
            w[:, 1] += c * q[i]
        b[:3] = -1.0
    return model


def constructed_inputs() -> list[torch.Tensor]:
    """Token 5 three times, 10/20/30/40 five times each, other tokens filling in (100 tokens, 4 inputs)."""
    g = torch.Generator().manual_seed(3)
    others = torch.tensor([t for t in range(VOCAB) if t not in SPECIAL])
    seq = torch.cat([torch.tensor([5] * 3 + [10, 20, 30, 40] * 5), others[torch.randint(0, len(others), (77,),
                                                                                        generator=g)]])
    seq = seq[torch.randperm(len(seq), generator=g)]
    return [seq[:20], seq[20:45], seq[45:70], seq[70:]]


def test_polysemanticity_of_constructed_neurons():
    model = constructed()
    inputs = constructed_inputs()
    post = by_hand(model, inputs, "blocks.0.mlp.hook_post")
    ids = torch.cat(inputs)
    # the construction does what it says
    assert torch.equal(post[:, 0] > 0, ids == 5) and torch.equal(post[:, 1] > 0, torch.isin(ids, torch.tensor(SPECIAL[1:])))
    assert (post[:, 2] == 0).all()
    tool = SparsityAnalyzer(model)
    full = tool.polysemanticity(0, inputs, top_k=20, progress=False).set_index("neuron")
    assert full.loc[0, "score"] == 0 and full.loc[0, "n_active"] == 3 and full.loc[0, "examples"] == "'5' x3"
    assert full.loc[1, "score"] == pytest.approx(math.log(4), abs=1e-12) and full.loc[1, "n_types"] == 4
    assert full.loc[1, "n_active"] == 20 and full.loc[1, "effective_types"] == pytest.approx(4, abs=1e-12)
    assert math.isnan(full.loc[2, "score"]) and full.loc[2, "n_active"] == 0
    found = tool.find_polysemantic_neurons(1, 0, inputs, top_k=20, progress=False)
    assert list(found.columns) == COLUMNS and 1 in set(found.neuron) and not {0, 2} & set(found.neuron)
    assert (found.score > 1).all() and found.score.is_monotonic_decreasing
    # with top_k=5 neuron 1's top activations are token 40's (the largest weight): monosemantic
    top5 = tool.polysemanticity(0, inputs, top_k=5, progress=False).set_index("neuron")
    assert top5.loc[1, "score"] == 0 and top5.loc[1, "examples"] == "'40' x5"


def test_polysemanticity_on_the_default_model(default_model):
    m = default_model
    tool = SparsityAnalyzer(m)
    texts = TEXTS + ["Tonight I want to talk about jobs, schools, and the safety of our streets.",
                     "The Congress must act on this budget before the end of the year."]
    frame = tool.polysemanticity([1, 4], texts, top_k=20, batch_size=1, progress=False)
    assert list(frame.columns) == COLUMNS and len(frame) == 2 * m.cfg.d_mlp
    assert frame.score.dropna().is_monotonic_decreasing and frame.score.between(0, math.log(20)).all()
    ids = torch.cat([m.to_tokens(t)[0] for t in texts if m.to_tokens(t).shape[1] > 1])
    for layer in (1, 4):
        post = by_hand(m, texts, f"blocks.{layer}.mlp.hook_post")
        for neuron in (0, 17, 1000):
            top = post[:, neuron].topk(20)
            kept = [m.tokenizer.decode([int(i)]) for i, v in zip(ids[top.indices], top.values) if v > 0]
            counts = Counter(s.strip().casefold() or s for s in kept)
            h = -sum(c / len(kept) * math.log(c / len(kept)) for c in counts.values())
            row = frame[(frame.layer == layer) & (frame.neuron == neuron)].iloc[0]
            assert row.score == pytest.approx(abs(h), abs=1e-12) and row.n_active == len(kept)
            assert row.max_activation == pytest.approx(float(top.values[0]), abs=0)
    found = tool.find_polysemantic_neurons(2.0, layer=6, max_tokens=128, progress=False)  # the default corpus
    assert list(found.columns) == COLUMNS and len(found) > 0 and (found.score > 2.0).all()
    assert found.score.is_monotonic_decreasing and set(found.layer) == {6}
    assert isinstance(found.examples.iloc[0], str) and " x" in found.examples.iloc[0]


# ---- pruning -----------------------------------------------------------------------------------------

def torch_hooks(model) -> int:
    return sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) for mod in model.hf_model.modules())


@torch.no_grad()
def loss_by_hand(model, inputs) -> float:
    """Token-weighted mean next-token loss, each input on its own."""
    nll = [model.loss(model(t if t.ndim == 2 else t[None]), t if t.ndim == 2 else t[None], per_token=True).flatten()
           for t in inputs]
    return float(torch.cat(nll).double().mean())


def zeroed_copy(model, masks):
    """A deep copy whose MLP output rows of the pruned neurons are zero (gpt2 Conv1D c_proj: [d_mlp, d])."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for layer, mask in masks.items():
            mlp = twin.adapter.mlp(twin.adapter.layers()[layer])
            twin.adapter.mlp_out(mlp).weight[mask] = 0  # Conv1D weight is [d_mlp, d_model]
    return twin


def test_pruning_is_exact_and_reversible():
    model = tiny("gpt2", activation_function="relu")
    inputs = id_inputs()
    probe = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(9))
    before_logits = model(probe)
    before_weights = {k: v.clone() for k, v in model.hf_model.state_dict().items()}
    n_hooks = torch_hooks(model)
    tool = SparsityAnalyzer(model)
    pruned = tool.prune_network(0.6, inputs, progress=False)
    assert isinstance(pruned, PrunedNetwork)
    sparsity = {layer: tool.compute_activation_sparsity(inputs, layer, progress=False) for layer in (0, 1)}
    for layer in (0, 1):
        assert torch.equal(pruned.masks[layer], sparsity[layer].per_neuron.values >= 0.6)
    assert 0 < pruned.n_pruned < 2 * model.cfg.d_mlp and len(pruned.pruned) == pruned.n_pruned
    assert pruned.per_layer.n_pruned.sum() == pruned.n_pruned
    # the model is untouched by building the variant
    assert torch.equal(model(probe), before_logits) and torch_hooks(model) == n_hooks
    first = min(layer for layer, m in pruned.masks.items() if m.any())
    hook = f"blocks.{first}.mlp.hook_post"
    with pruned as m:
        assert m is model and torch_hooks(model) > n_hooks
        logits, cache = model.run_with_cache(probe, names_filter=hook)
    _, clean = model.run_with_cache(probe, names_filter=hook)
    mask = pruned.masks[first]
    assert (cache[hook][..., mask] == 0).all()
    assert torch.equal(cache[hook][..., ~mask], clean[hook][..., ~mask])
    torch.testing.assert_close(logits, zeroed_copy(model, pruned.masks)(probe), rtol=0, atol=1e-5)
    assert not torch.allclose(logits, before_logits, atol=1e-4)  # pruning changed something
    assert torch.equal(pruned(probe), logits)
    # after the context: bit-identical logits, same weights, no hook left
    assert torch.equal(model(probe), before_logits) and torch_hooks(model) == n_hooks
    assert all(torch.equal(v, before_weights[k]) for k, v in model.hf_model.state_dict().items())
    # the reported loss change is the loss computed directly, with and without the zeroed neurons
    assert pruned.loss_before == pytest.approx(loss_by_hand(model, inputs), rel=1e-6)
    assert pruned.loss_after == pytest.approx(loss_by_hand(zeroed_copy(model, pruned.masks), inputs), rel=1e-5)
    with pytest.raises(RuntimeError, match="boom"), pruned:
        raise RuntimeError("boom")
    assert torch_hooks(model) == n_hooks
    with pytest.raises(ArrakisValueError, match="already active"), pruned, pruned:
        pass
    assert torch_hooks(model) == n_hooks


def test_pruning_above_one_changes_nothing():
    model = tiny("llama")
    tool = SparsityAnalyzer(model)
    inputs = id_inputs()
    probe = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(2))
    before = model(probe)
    pruned = tool.prune_network(1.01, inputs, progress=False)
    assert pruned.n_pruned == 0 and pruned.fwd_hooks == [] and pruned.loss_change == 0
    with pruned:
        assert torch.equal(model(probe), before)
    everything = tool.prune_network(0.0, inputs, layers=[1], progress=False)
    assert everything.n_pruned == model.cfg.d_mlp and set(everything.masks) == {1}
    assert everything.loss_after != everything.loss_before


def test_reported_loss_change_is_the_corpus_loss(default_model):
    m = default_model
    tool = SparsityAnalyzer(m)
    res = tool.compute_activation_sparsity(TEXTS, 3, batch_size=2, progress=False)
    cut = float(res.per_neuron.values.quantile(0.9))
    pruned = tool.prune_network(cut, TEXTS, sparsity=[res], batch_size=2, progress=False)
    mask = res.per_neuron.values >= cut
    assert set(pruned.masks) == {3} and pruned.n_pruned == int(mask.sum()) > 0
    assert pruned.loss_before == corpus.corpus_loss(m, TEXTS, batch_size=2)

    def zero(act, hook):
        return act * (~mask).to(act.dtype)

    with m.hooks([("blocks.3.mlp.hook_post", zero)]):
        after = corpus.corpus_loss(m, TEXTS, batch_size=2)
    assert pruned.loss_after == after and pruned.loss_change == after - pruned.loss_before != 0
    assert corpus.corpus_loss(m, TEXTS, batch_size=2) == pruned.loss_before  # the model is unchanged
    assert "PrunedNetwork(" in repr(pruned) and "nats" in repr(pruned)


# ---- bad input ---------------------------------------------------------------------------------------

def test_bad_input_is_named(default_model):
    model = tiny("llama")
    tool = SparsityAnalyzer(model)
    inputs = id_inputs(2)
    with pytest.raises(HookNameError, match=r"Did you mean 'blocks.0.mlp.hook_post'"):
        tool.compute_activation_sparsity(inputs, "blocks.0.mlp.hook_pots")
    with pytest.raises(HookNameError, match=r"accepted: hook_resid_pre, .*Did you mean 'mlp.hook_post'"):
        tool.compute_activation_sparsity(inputs, 0, hook="mlp.hook_pots")
    with pytest.raises(ArrakisIndexError, match=r"layer 7 is out of range: valid layers are 0..1"):
        tool.compute_activation_sparsity(inputs, 7)
    with pytest.raises(ArrakisIndexError, match=r"valid layers are 0..1"):
        tool.compute_activation_sparsity(inputs, "blocks.7.mlp.hook_post")
    with pytest.raises(ArrakisValueError, match="does not hold one vector per token"):
        tool.compute_activation_sparsity(inputs, 0, hook="attn.hook_pattern")
    with pytest.raises(ArrakisValueError, match="id_list is empty"):
        tool.compute_activation_sparsity([], 0)
    with pytest.raises(ArrakisValueError, match="id_list has no tokens"):
        tool.compute_activation_sparsity([torch.tensor([], dtype=torch.long)], 0, threshold=0.1, progress=False)
    with pytest.raises(ArrakisValueError, match="got a single string; wrap it in a list"):
        SparsityAnalyzer(default_model).compute_activation_sparsity("one text", 0)
    with pytest.raises(ArrakisValueError, match="the corpus has no text with at least 2 tokens"):
        SparsityAnalyzer(default_model).compute_activation_sparsity(["", "   "], 0, threshold=0.1, progress=False)
    with pytest.raises(ArrakisValueError, match=r"threshold must be a number in \[0, inf\).*got -0.1"):
        tool.compute_activation_sparsity(inputs, 0, threshold=-0.1)
    with pytest.raises(ArrakisValueError, match=r"threshold must be a number in \[0, inf\).*got nan"):
        tool.compute_activation_sparsity(inputs, 0, threshold=float("nan"))
    with pytest.raises(ArrakisValueError, match=r"must be in \[0, ln top_k\) = \[0, 2.996\).*got 3"):
        tool.find_polysemantic_neurons(3, 0, inputs)
    with pytest.raises(ArrakisValueError, match=r"top_k must be a positive int, got 0"):
        tool.polysemanticity(0, inputs, top_k=0)
    with pytest.raises(ArrakisValueError, match=r"sparsity_threshold must be a number in \[0, inf\).*got -0.5"):
        tool.prune_network(-0.5, inputs)
    with pytest.raises(ArrakisIndexError, match=r"layer 2 is out of range"):
        tool.prune_network(0.5, inputs, layers=[0, 2])
    res = tool.compute_activation_sparsity(inputs, 0, hook="hook_resid_post", progress=False)
    with pytest.raises(ArrakisValueError, match=r"needs the sparsity of MLP neurons.*'blocks.0.hook_resid_post'"):
        tool.prune_network(0.5, inputs, sparsity=res)
    mlp0 = tool.compute_activation_sparsity(inputs, 0, progress=False)
    with pytest.raises(ArrakisValueError, match=r"no sparsity result for layers \[1\]"):
        tool.prune_network(0.5, inputs, layers=[0, 1], sparsity=[mlp0])
    assert isinstance(tool.polysemanticity(0, inputs, progress=False), pd.DataFrame)
