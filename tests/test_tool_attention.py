"""The ``attention`` tool: patterns, top keys, ablation and merging as reversible hooks, head scores.

Tiny random models of two architectures: llama (grouped-query, 4 heads / 2 kv heads) and gpt2
(multi-head, learned positions). They are built with initializer_range=0.2 (sharper attention than
the default 0.02) and run in float64, so checks against direct computations use tight tolerances.
"""
from __future__ import annotations

import pytest
import torch

import arrakis_jupyter.tools.attention  # noqa: F401 - registers the tool
from arrakis_jupyter.errors import ArrakisIndexError, ArrakisValueError
from arrakis_jupyter.tools import get_tool_class
from arrakis_jupyter.tools.attention import SCORE_KINDS, AttentionTools, HeadIntervention
from conftest import tiny

ATOL = 1e-10


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tool(request) -> AttentionTools:
    model = tiny(request.param, initializer_range=0.2)
    model.hf_model.double()
    return AttentionTools(model)


def ids(batch: int = 2, pos: int = 12, high: int = 101, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, high, (batch, pos), generator=torch.Generator().manual_seed(seed))


def cached(model, tokens, names):
    with torch.no_grad():
        return model.run_with_cache(tokens, names_filter=names)


def test_registered_under_the_arrakis_key():
    assert get_tool_class("attention") is AttentionTools


def test_attention_patterns_are_the_heads_softmax_weights(tool):
    tokens = ids()
    ref = cached(tool.model, tokens, "blocks.1.attn.hook_pattern")[1]["blocks.1.attn.hook_pattern"]
    one = tool.attention_patterns(tokens[:1], 1, 2)
    assert one.dims == ("query", "key") and one.shape == (12, 12)
    assert one.labels("query")[:2] == [f"0:{int(tokens[0, 0])}", f"1:{int(tokens[0, 1])}"]
    torch.testing.assert_close(one.values, ref[0, 2].float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(one.values.sum(-1), torch.ones(12), atol=1e-6, rtol=0)
    assert torch.all(one.values.triu(1) == 0)  # causal
    both = tool.attention_patterns(tokens, 1, 2)
    assert both.dims == ("batch", "query", "key") and both.shape == (2, 12, 12)
    torch.testing.assert_close(both.values, ref[:, 2].float(), atol=1e-6, rtol=0)
    row1 = tool.attention_patterns(tokens, 1, 2, batch_idx=1)
    torch.testing.assert_close(row1.values, ref[1, 2].float(), atol=1e-6, rtol=0)
    assert row1.to_frame().shape == (12, 12)


def test_top_attended_ids_lists_the_largest_weights(tool):
    tokens = ids(batch=1)
    pattern = tool.attention_patterns(tokens, 0, 1).values
    df = tool.top_attended_ids(tokens, 0, 1, num_tokens=3)
    assert list(df.columns) == ["batch", "query_pos", "query_token", "rank", "key_pos", "key_id", "key_token",
                                "weight"]
    assert len(df) == 1 + 2 + 3 * 10  # query q has min(3, q + 1) keys
    for q, group in df.groupby("query_pos"):
        order = sorted(range(q + 1), key=lambda k: -float(pattern[q, k]))[:3]
        assert list(group.sort_values("rank").key_pos) == order
        assert list(group.weight) == pytest.approx([float(pattern[q, k]) for k in order], abs=1e-6)
    assert all(df.key_id == [int(tokens[0, k]) for k in df.key_pos])
    last = tool.top_attended_ids(tokens, 0, 1, num_tokens=1, query_pos=-1)
    assert len(last) == 1 and last.query_pos[0] == 11 and last.key_pos[0] == int(pattern[11].argmax())


def test_zero_ablation_removes_exactly_the_heads_output_and_is_reversible(tool):
    model, tokens = tool.model, ids()
    names = ["blocks.0.attn.hook_z", "blocks.0.hook_attn_out"]
    before = {k: v.clone() for k, v in model.hf_model.state_dict().items()}
    logits, clean = cached(model, tokens, names)
    ablation = tool.ablate_head(0, 3)
    assert isinstance(ablation, HeadIntervention)
    with ablation:
        ablated_logits, abl = cached(model, tokens, names)
    assert torch.all(abl["blocks.0.attn.hook_z"][:, :, 3] == 0)
    torch.testing.assert_close(abl["blocks.0.attn.hook_z"][:, :, :3], clean["blocks.0.attn.hook_z"][:, :, :3])
    # the attention output loses exactly z_h @ W_O[h] (computed here from the canonical weights)
    removed = clean["blocks.0.attn.hook_z"][:, :, 3] @ model.W_O[0, 3].detach()
    torch.testing.assert_close(clean["blocks.0.hook_attn_out"] - abl["blocks.0.hook_attn_out"], removed,
                               atol=ATOL, rtol=0)
    assert (ablated_logits - logits).abs().max() > 1e-4
    with torch.no_grad():
        assert torch.equal(model(tokens), logits)  # hooks gone
        torch.testing.assert_close(ablation.run(tokens), ablated_logits, atol=0, rtol=0)
    assert all(torch.equal(before[k], v) for k, v in model.hf_model.state_dict().items())  # no weight edit


def test_mean_ablation_uses_the_heads_mean_z(tool):
    model, tokens = tool.model, ids()
    z = cached(model, tokens, "blocks.1.attn.hook_z")[1]["blocks.1.attn.hook_z"]
    with tool.ablate_head(1, [0, 2], kind="mean", input_ids=tokens):
        abl = cached(model, tokens[:1, :5], "blocks.1.attn.hook_z")[1]["blocks.1.attn.hook_z"]
    for h in (0, 2):
        torch.testing.assert_close(abl[0, :, h], z[:, :, h].mean((0, 1)).expand(5, -1), atol=ATOL, rtol=0)
    torch.testing.assert_close(abl[0, :, 1], z[0, :5, 1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("what", ["pattern", "z"])
def test_merge_heads_mixes_both_heads_and_is_reversible(tool, what):
    model, tokens, cfg = tool.model, ids(), tool.model.cfg
    names = ["blocks.1.attn.hook_pattern", "blocks.1.attn.hook_v", "blocks.1.attn.hook_z"]
    with torch.no_grad():
        plain = model(tokens)
    _, clean = cached(model, tokens, names)
    with tool.merge_heads(1, 0, 3, alpha=0.3, what=what):
        _, merged = cached(model, tokens, names)
    key = "blocks.1.attn.hook_pattern" if what == "pattern" else "blocks.1.attn.hook_z"
    dim = 1 if what == "pattern" else 2
    mix = 0.3 * clean[key].select(dim, 0) + 0.7 * clean[key].select(dim, 3)
    for h in (0, 3):
        torch.testing.assert_close(merged[key].select(dim, h), mix, atol=ATOL, rtol=0)
    for h in (1, 2):
        torch.testing.assert_close(merged[key].select(dim, h), clean[key].select(dim, h), atol=ATOL, rtol=0)
    if what == "pattern":  # each head keeps its own values: z_h = mixed pattern @ v_(h // n_rep)
        v = clean["blocks.1.attn.hook_v"]
        for h in (0, 3):
            z = torch.einsum("bqk,bkd->bqd", mix, v[:, :, h // cfg.n_rep])
            torch.testing.assert_close(merged["blocks.1.attn.hook_z"][:, :, h], z, atol=ATOL, rtol=0)
    with torch.no_grad():
        assert torch.equal(model(tokens), plain)  # hooks gone


def direct_scores(patterns: torch.Tensor, tokens: torch.Tensor, kind: str) -> torch.Tensor:
    """Loop-by-loop definition: patterns [batch, head, q, k] -> [head]."""
    total, count = torch.zeros(patterns.shape[1], dtype=torch.float64), 0
    for b in range(tokens.shape[0]):
        t = tokens[b].tolist()
        for q in range(len(t)):
            if kind == "previous_token":
                keys = [q - 1] if q >= 1 else []
            elif kind == "bos":
                keys = [0] if q >= 1 else []
            elif kind == "duplicate_token":
                keys = [p for p in range(q) if t[p] == t[q]]
            else:
                keys = [p + 1 for p in range(q) if t[p] == t[q]]
            if keys:
                total += patterns[b, :, q, keys].double().sum(-1)
                count += 1
    return total / count


@pytest.mark.parametrize("kind", SCORE_KINDS)
def test_head_scores_equal_a_direct_computation_from_patterns(tool, kind):
    model, cfg = tool.model, tool.model.cfg
    tokens = ids(batch=2, pos=30, high=8)  # few distinct ids: many repeats
    scores = tool.head_scores(kind, tokens)
    assert scores.dims == ("layer", "head") and scores.shape == (2, 4) and scores.name == kind
    _, cache = cached(model, tokens, lambda n: n.endswith("hook_pattern"))
    for layer in range(cfg.n_layers):
        expected = direct_scores(cache[f"blocks.{layer}.attn.hook_pattern"], tokens, kind)
        torch.testing.assert_close(scores.values[layer].double(), expected, atol=1e-6, rtol=0)


def test_default_input_is_a_repeated_block_and_scores_are_the_diagonal_formulas(tool):
    model, L = tool.model, 20
    tokens = tool.repeated_random_tokens(seq_len=L, batch=3, seed=5)
    assert tokens.shape == (3, 2 * L) and torch.equal(tokens[:, :L], tokens[:, L:])
    assert all(len(set(row[:L].tolist())) == L for row in tokens)  # distinct within a block
    assert torch.equal(tokens, tool.repeated_random_tokens(seq_len=L, batch=3, seed=5))
    _, cache = cached(model, tokens, lambda n: n.endswith("hook_pattern"))
    second = torch.arange(L, 2 * L)
    for kind in SCORE_KINDS:
        scores = tool.head_scores(kind, seq_len=L, batch=3, seed=5).values
        for layer in range(2):
            p = cache[f"blocks.{layer}.attn.hook_pattern"].double()  # [batch, head, q, k]
            expected = {
                "previous_token": p.diagonal(offset=-1, dim1=-2, dim2=-1).mean((0, -1)),
                "bos": p[..., 1:, 0].mean((0, -1)),
                "induction": p[..., second, second - L + 1].mean((0, -1)),  # diagonal offset -(L - 1)
                "duplicate_token": p[..., second, second - L].mean((0, -1)),
            }[kind]
            torch.testing.assert_close(scores[layer].double(), expected, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_default_model_has_induction_heads(default_model):
    tool = AttentionTools(default_model)
    scores = tool.head_scores("induction", seq_len=50, batch=4, seed=0)
    top = tool.top_heads(scores, k=3)
    print("\ntop induction heads of SmolLM2-135M:\n", top.to_string(index=False))
    assert (top.score > 0.5).all(), top
    assert list(top.score) == pytest.approx(scores.values.flatten().sort(descending=True).values[:3].tolist())
    assert all(scores.values[r.layer, r.head_idx] == r.score and r.label == f"L{r.layer}H{r.head_idx}"
               for r in top.itertuples())
    assert float(scores.values.median()) < 0.1  # a few specialised heads, not a property of all heads


def test_bad_layer_head_and_arguments_raise_clear_errors(tool):
    tokens = ids()
    with pytest.raises(ArrakisIndexError, match=r"layer 2 is out of range: valid layers are 0\.\.1"):
        tool.attention_patterns(tokens, 2, 0)
    with pytest.raises(ArrakisIndexError, match=r"head 4 is out of range: valid heads are 0\.\.3"):
        tool.top_attended_ids(tokens, 0, 4)
    with pytest.raises(ArrakisIndexError, match="head 7"):
        tool.ablate_head(0, [1, 7])
    with pytest.raises(ArrakisIndexError, match="layer -3"):
        tool.merge_heads(-3, 0, 1)
    with pytest.raises(ArrakisIndexError, match="head 5"):
        tool.merge_heads(0, 0, 5)
    with pytest.raises(ArrakisIndexError, match="batch_idx 2"):
        tool.attention_patterns(tokens, 0, 0, batch_idx=2)
    with pytest.raises(ArrakisValueError, match="previous_token, induction, duplicate_token, bos; got 'inductoin'"):
        tool.head_scores("inductoin")
    with pytest.raises(ArrakisValueError, match="num_tokens must be a positive int, got 0"):
        tool.top_attended_ids(tokens, 0, 0, num_tokens=0)
    with pytest.raises(ArrakisValueError, match=r"alpha must be a number in \[0, 1\], got 1.5"):
        tool.merge_heads(0, 0, 1, alpha=1.5)
    with pytest.raises(ArrakisValueError, match="kind must be 'zero' or 'mean', got 'max'"):
        tool.ablate_head(0, 0, kind="max")
    with pytest.raises(ArrakisValueError, match="kind='mean' needs input_ids"):
        tool.ablate_head(0, 0, kind="mean")
    with pytest.raises(ArrakisValueError, match="no query position"):
        tool.head_scores("duplicate_token", torch.arange(10))
