"""The ``composer`` tool: Q/K/V-composition scores and attention path patching.

Tiny random models of two architectures: llama (grouped-query, 4 heads / 2 kv heads, rotary,
RMSNorm) and gpt2 (multi-head, learned positions, LayerNorm, biases), with initializer_range=0.2.
Scores are checked against the per-pair matrix formula in float64; path patching (in float64
models) against an independent recomputation of dest's q, k or v from cached activations.
"""
from __future__ import annotations

import pytest
import torch

import arrakis_jupyter.tools.composition  # noqa: F401 - registers the tool
from arrakis_jupyter.errors import ArrakisIndexError, ArrakisValueError
from arrakis_jupyter.tools import get_tool_class
from arrakis_jupyter.tools.composition import AttentionComposer
from conftest import tiny

ARCHS = ["llama", "gpt2"]


def make(arch: str, n_layers: int = 2) -> AttentionComposer:
    model = tiny(arch, initializer_range=0.2, num_hidden_layers=n_layers)
    return AttentionComposer(model)


@pytest.fixture(scope="module", params=ARCHS)
def composer(request) -> AttentionComposer:
    return make(request.param, n_layers=3)


def ln1_modules(model):
    hf = model.hf_model
    if hasattr(hf, "transformer"):
        return [b.ln_1 for b in hf.transformer.h]
    return [b.input_layernorm for b in hf.model.layers]


def canonical(model, ln_weight=None):
    """Float64 W_Q, W_K, W_V [layer, (kv_)head, d_model, d_head], W_O; ``ln_weight`` [layer, d_model] scales
    the reading weights' input rows."""
    Q, K, V, O = (w.detach().double() for w in (model.W_Q, model.W_K, model.W_V, model.W_O))
    if ln_weight is not None:
        Q, K, V = (w * ln_weight[:, None, :, None] for w in (Q, K, V))
    return Q, K, V, O


def direct_score(model, kind, la, ha, lb, hb, weights=None) -> float:
    """||W_OV^A M||_F / (||W_OV^A||_F ||M||_F) with full [d_model, d_model] matrices, float64."""
    r = model.cfg.n_rep
    Q, K, V, O = weights or canonical(model)
    ov_a = V[la, ha // r] @ O[la, ha]
    qk_b = Q[lb, hb] @ K[lb, hb // r].T
    m = {"q": qk_b, "k": qk_b.T, "v": V[lb, hb // r] @ O[lb, hb]}[kind]
    return float((ov_a @ m).norm() / (ov_a.norm() * m.norm()))


def direct_table(model, kind, weights=None) -> torch.Tensor:
    """The same formula for every pair at once: [layer_a, head_a, layer_b, head_b], NaN where layer_b <= layer_a."""
    r, n_l = model.cfg.n_rep, model.cfg.n_layers
    Q, K, V, O = weights or canonical(model)
    K, V = K.repeat_interleave(r, 1), V.repeat_interleave(r, 1)  # query head h reads kv head h // n_rep
    ov = V @ O                                                       # [layer, head, d_model, d_model]
    qk = Q @ K.transpose(-1, -2)
    m = {"q": qk, "k": qk.transpose(-1, -2), "v": ov}[kind]
    prod = torch.einsum("ahij,bgjk->ahbgik", ov, m).norm(dim=(-2, -1))
    out = prod / (ov.norm(dim=(-2, -1))[:, :, None, None] * m.norm(dim=(-2, -1))[None, None])
    later = torch.arange(n_l)[:, None] < torch.arange(n_l)[None, :]
    return out.masked_fill(~later[:, None, :, None], float("nan"))


def test_registered_under_the_arrakis_key():
    assert get_tool_class("composer") is AttentionComposer


@pytest.mark.parametrize("kind", ["q", "k", "v"])
def test_composition_scores_equal_the_direct_matrix_formula(composer, kind):
    model, n = composer.model, composer.model.cfg.n_heads
    scores = composer.composition_scores(kind)
    assert scores.dims == ("layer_a", "head_a", "layer_b", "head_b") and scores.shape == (3, n, 3, n)
    expected = direct_table(model, kind)
    assert torch.equal(torch.isnan(scores.values), torch.isnan(expected))  # NaN exactly where layer_b <= layer_a
    assert int((~torch.isnan(expected)).sum()) == 3 * n * n
    torch.testing.assert_close(scores.values.double(), expected, atol=0, rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize("kind", ["Q", "K", "V"])
def test_composition_scores_match_transformer_lens(composer, kind):
    """TransformerLens's composition_scores on the same kv-expanded weights, as its all_composition_scores does."""
    from transformer_lens.FactoredMatrix import FactoredMatrix
    from transformer_lens.utilities import composition_scores

    m = composer.model
    Q, K, V, O = (w.detach().float() for w in (m.W_Q, m.W_K, m.W_V, m.W_O))
    K, V = K.repeat_interleave(m.cfg.n_rep, 1), V.repeat_interleave(m.cfg.n_rep, 1)
    left = FactoredMatrix(V, O)
    qk = FactoredMatrix(Q, K.transpose(-2, -1))
    right = {"Q": qk, "K": qk.T, "V": left}[kind]
    tl = composition_scores(left, right, broadcast_dims=True)
    ours = composer.composition_scores(kind).values
    later = ~torch.isnan(ours)
    assert int(later.sum()) == 3 * m.cfg.n_heads ** 2  # pairs (0,1), (0,2), (1,2)
    torch.testing.assert_close(ours[later], tl[later], atol=0, rtol=1e-4)


def test_fold_norm_scales_the_readers_weights_by_its_norm_weight():
    composer = make("llama", n_layers=3)
    torch.manual_seed(7)
    with torch.no_grad():
        for norm in ln1_modules(composer.model):
            norm.weight.uniform_(0.0, 3.0)
    w = torch.stack([n.weight.detach().double() for n in ln1_modules(composer.model)])
    for kind in "qkv":
        folded = composer.composition_scores(kind, fold_norm=True).values.double()
        expected = direct_table(composer.model, kind, canonical(composer.model, w))
        torch.testing.assert_close(folded, expected, atol=0, rtol=1e-5, equal_nan=True)
        plain = composer.composition_scores(kind).values.double()
        assert (folded - plain).nan_to_num().abs().max() > 1e-3


def test_head_composition_and_top_compositions_agree_with_the_table(composer):
    scores = {k: composer.composition_scores(k).values for k in "qkv"}
    pair = composer.head_composition((0, 1), "L2H3")
    assert list(pair.index) == ["q", "k", "v"] and pair.name == "L0H1->L2H3"
    for k in "qkv":
        assert pair[k] == pytest.approx(float(scores[k][0, 1, 2, 3]), rel=1e-5)
    top = composer.top_compositions("v", k=5)
    flat = scores["v"].nan_to_num(-1).flatten().sort(descending=True).values[:5]
    assert list(top.score) == pytest.approx(flat.tolist(), rel=1e-6)
    r = top.iloc[0]
    assert float(scores["v"][r.layer_a, r.head_idx_a, r.layer_b, r.head_idx_b]) == pytest.approx(r.score)
    assert (top.layer_b > top.layer_a).all()
    with pytest.warns(UserWarning, match="not in a later layer"):  # Arrakis's docs example: same layer
        same = composer.head_composition((0, 0), (0, 1))
    assert same["q"] == pytest.approx(direct_score(composer.model, "q", 0, 0, 0, 1), rel=1e-5)
    with pytest.warns(UserWarning, match="ignores alpha"):
        composer.head_composition((0, 0), (1, 1), 0.5)


# ---- path patching ------------------------------------------------------------------------------------

def metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1].double().log_softmax(-1)[:, 5].mean()


def manual_path_effect(model, clean, corrupted, src, dest, component, freeze_norm, whole_kv_head=False):
    """Dest (in the layer after src) recomputed by hand from cached activations, then the base run with
    only dest's z (k, v) or q replaced. ``corrupted=None``: base = clean and src's output is removed.
    ``whole_kv_head``: the naive alternative, which replaces the k or v of dest's whole kv head."""
    (ls, hs), (ld, hd) = src, dest
    g = hd // model.cfg.n_rep
    base = clean if corrupted is None else corrupted
    pre = f"blocks.{ld}."
    names = [f"blocks.{ls}.attn.hook_z", pre + "hook_resid_pre", pre + "ln1.hook_normalized", pre + "ln1.hook_scale",
             pre + "attn.hook_pattern"]
    with torch.no_grad():
        base_logits, cb = model.run_with_cache(base, names_filter=names)
        z_clean = (torch.zeros_like(cb[names[0]]) if corrupted is None
                   else model.run_with_cache(clean, names_filter=names)[1][names[0]])
        delta = (z_clean - cb[names[0]])[:, :, hs] @ model.W_O[ls, hs]
        norm = ln1_modules(model)[ld]
        if freeze_norm:
            d = delta - delta.mean(-1, keepdim=True) if isinstance(norm, torch.nn.LayerNorm) else delta
            x = cb[pre + "ln1.hook_normalized"] + d / cb[pre + "ln1.hook_scale"] * norm.weight
        else:
            x = norm(cb[pre + "hook_resid_pre"] + delta)
        W, b = {"q": (model.W_Q[ld, hd], model.b_Q[ld, hd]), "k": (model.W_K[ld, g], model.b_K[ld, g]),
                "v": (model.W_V[ld, g], model.b_V[ld, g])}[component]
        new = x @ W + b  # [batch, pos, d_head]

        def replace(idx, value):
            def fn(t, hook):
                t = t.clone()
                t[:, :, idx] = value
                return t
            return fn

        if whole_kv_head:
            patched = model.run_with_hooks(base, [(pre + f"attn.hook_{component}", replace(g, new))])
            return float(metric(patched) - metric(base_logits))
        if component == "q":  # query heads are separate: replacing dest's q touches nothing else
            patched = model.run_with_hooks(base, [(pre + "attn.hook_q", replace(hd, new))])
            return float(metric(patched) - metric(base_logits))
        if component == "v":
            z = cb[pre + "attn.hook_pattern"][:, hd] @ new
        else:  # rotate the new key with the model's rotary (identity for gpt2), then attend by hand
            rot_names = [pre + "attn.hook_rot_q", pre + "attn.hook_rot_k", pre + "attn.hook_v"]
            _, rot = model.run_with_cache(base, names_filter=rot_names,
                                          fwd_hooks=[(pre + "attn.hook_k", replace(g, new))])
            q, k, v = rot[rot_names[0]][:, :, hd], rot[rot_names[1]][:, :, g], rot[rot_names[2]][:, :, g]
            s = q @ k.transpose(-1, -2) / model.cfg.d_head ** 0.5
            s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
            z = s.softmax(-1) @ v
        patched = model.run_with_hooks(base, [(pre + "attn.hook_z", replace(hd, z))])
        return float(metric(patched) - metric(base_logits))


@pytest.fixture(scope="module", params=ARCHS)
def composer64(request) -> AttentionComposer:
    c = make(request.param)
    c.model.hf_model.double()
    return c


@pytest.mark.parametrize("component,freeze_norm,corrupt", [("q", False, True), ("k", False, True), ("v", False, True),
                                                           ("q", True, True), ("k", True, False), ("v", False, False)])
def test_path_patching_equals_a_direct_recomputation_of_dest(composer64, component, freeze_norm, corrupt):
    g = torch.Generator().manual_seed(11)
    clean, corrupted = torch.randint(0, 101, (2, 10), generator=g), torch.randint(0, 101, (2, 10), generator=g)
    kwargs = dict(corrupted_ids=corrupted if corrupt else None, metric=metric, component=component,
                  freeze_norm=freeze_norm)
    got = composer64.attention_path_patching(clean, (0, 1), (1, 2), **kwargs)
    expected = manual_path_effect(composer64.model, clean, corrupted if corrupt else None, (0, 1), (1, 2),
                                  component, freeze_norm)
    assert abs(expected) > 1e-4  # a real effect, not a trivially zero one
    print(f"{component} freeze={freeze_norm} corrupt={corrupt}: {got:.9g} vs {expected:.9g}")
    assert got == pytest.approx(expected, rel=0, abs=1e-6)  # HF RMSNorm and the frozen norm compute in float32


@pytest.mark.parametrize("component", ["k", "v"])
def test_path_patching_leaves_heads_sharing_dests_kv_head_alone(component):
    composer = make("llama")
    composer.model.hf_model.double()
    g = torch.Generator().manual_seed(12)
    clean, corrupted = torch.randint(0, 101, (2, 10), generator=g), torch.randint(0, 101, (2, 10), generator=g)
    got = composer.attention_path_patching(clean, "L0H0", "L1H3", corrupted, metric, component=component)
    exact = manual_path_effect(composer.model, clean, corrupted, (0, 0), (1, 3), component, False)
    # L1H3 shares kv head 1 with L1H2: patching the whole kv head would move L1H2 too
    naive = manual_path_effect(composer.model, clean, corrupted, (0, 0), (1, 3), component, False, whole_kv_head=True)
    assert got == pytest.approx(exact, rel=0, abs=1e-6)
    assert abs(naive - exact) > 1e-4
    same = composer.attention_path_patching(clean, (0, 0), (1, 3), clean, metric, component="qkv")
    assert same == pytest.approx(0.0, abs=1e-12)  # clean == corrupted: nothing changes


def test_path_patching_without_a_path_and_bad_input():
    composer = make("gpt2")
    tokens = torch.arange(8)
    with pytest.warns(UserWarning, match="no path"):  # Arrakis's docs example: two heads of one layer
        assert composer.attention_path_patching(tokens, (0, 0), (0, 1)) == 0.0
    with pytest.raises(ArrakisIndexError, match=r"layer 2 is out of range: valid layers are 0\.\.1"):
        composer.attention_path_patching(tokens, (2, 0), (1, 1))
    with pytest.raises(ArrakisIndexError, match=r"head 4 is out of range: valid heads are 0\.\.3"):
        composer.attention_path_patching(tokens, (0, 0), "L1H4")
    with pytest.raises(ArrakisIndexError, match="layer 5"):
        composer.head_composition((5, 0), (1, 0))
    with pytest.raises(ArrakisValueError, match=r"\(layer, head\) or a label like 'L3H5', got 'head 3'"):
        composer.head_composition("head 3", (1, 0))
    with pytest.raises(ArrakisValueError, match="component must be 'q', 'k', 'v' or a combination"):
        composer.attention_path_patching(tokens, (0, 0), (1, 1), component="z")
    with pytest.raises(ArrakisValueError, match=r"corrupted_ids has shape \(1, 7\); input_ids has \(1, 8\)"):
        composer.attention_path_patching(tokens, (0, 0), (1, 1), corrupted_ids=torch.arange(7))
    with pytest.raises(ArrakisValueError, match="kind must be one of 'q', 'k', 'v'"):
        composer.composition_scores("qk")


@pytest.mark.slow
def test_default_model_previous_token_head_k_composes_into_the_top_induction_head(default_model):
    """The induction circuit: an induction head's keys read a previous-token head's output."""
    from arrakis_jupyter.tools.attention import AttentionTools

    attention = AttentionTools(default_model)
    induction = attention.top_heads(attention.head_scores("induction", seq_len=20, batch=2), k=1).iloc[0]
    k = AttentionComposer(default_model).composition_scores("k").values[:, :, induction.layer, induction.head_idx]
    writer = divmod(int(k.nan_to_num(-1).argmax()), k.shape[1])
    previous = attention.head_scores("previous_token", seq_len=20, batch=2).values
    print(f"\nstrongest K-composition into {induction.label}: L{writer[0]}H{writer[1]} ({float(k[writer]):.3f}, "
          f"median {float(k.nanmedian()):.3f}), previous-token score {float(previous[writer]):.3f}")
    assert previous[writer] > 0.5
    assert k[writer] > 3 * k.nanmedian()
