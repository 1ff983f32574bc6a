"""Cached activations checked against an independent reference: TransformerLens 4's TransformerBridge.

For a tiny GPT-2 and a tiny Llama with grouped-query attention (4 query heads, 2 key/value heads),
``TransformerBridge.boot_transformers`` wraps a deep copy of the very same in-memory HF model (it
rewires the model it is given in place and forces eager attention, so it never touches the model
under test) and both run the same token ids. Every layer's ``hook_resid_pre``, ``hook_resid_post``,
``attn.hook_pattern`` [batch, head, q, k], ``attn.hook_z`` [batch, pos, head, d_head],
``hook_attn_out`` and ``hook_mlp_out``, and the final logits, must agree; so must every other hook
point the two have in common.

Tolerance: float32 throughout, ``|ours - bridge| <= atol + rtol * |bridge|`` elementwise with ``atol=1e-5``
and ``rtol=1e-6`` (about 8 float32 ulps) for every quantity. The rtol matters only for GPT-2's logits,
which reach |47| on these weights (tied N(0, 1) embeddings) and differ by float32 reordering noise of
up to ~1.4e-5 there (about 7e-7 relative; HF sdpa / our hooked core vs the bridge's eager path); every
other GPT-2 quantity agrees to <= ~2e-6, and the Llama run is bit-identical (max difference 0; 1.9e-6 for
the plain, unhooked sdpa forward's logits). Weights are
re-drawn at O(1) scale (norm weights and biases away from 1 and 0, biases non-zero) so that patterns are
far from uniform and activations are O(1): a bug cannot hide below the tolerance in the default
0.02-std initialisation, where everything is tiny.

Conventions that differ, converted explicitly (never by loosening the tolerance):
- ``*.hook_normalized``: the bridge hooks the normalised vector *before* the norm's weight and bias
  (``x_centred / scale`` for LayerNorm, ``x / scale`` for RMSNorm); ours is the norm module's output,
  weight and bias applied (what legacy HookedTransformer's LayerNorm hooks). We compare ours with
  ``bridge * weight + bias``.
- ``hook_pos_embed``: ours is the position-embedding module's output, [1, pos, d_model]; the bridge's is
  [batch, pos, d_model]. Ours is broadcast to the bridge's shape.
- ``hook_logits`` (ours) is the bridge's ``hook_unembed``.
- Compared nowhere (the bridge has no such hook): ``attn.hook_result`` (the bridge would need
  ``use_attn_result``), and GPT-2's ``attn.hook_rot_q``/``hook_rot_k`` (no rotary embedding there).
``hook_z`` needs no conversion: both are [batch, pos, head, d_head]; masked attention scores are
``finfo(float32).min`` in both and are compared like the rest.

Everything runs offline: ``HF_HUB_OFFLINE=1`` (and huggingface_hub's already-read constant) is set
and ``socket.connect`` raises while the bridge boots and runs. The bridge needs a tokenizer with a
``name_or_path`` (it re-loads it with ``add_bos_token=True``), so a word-level tokenizer whose vocabulary
is exactly the model's is saved to a temporary directory and loaded from there. The model name handed
to ``boot_transformers`` is only recorded: with ``hf_model=`` the architecture adapter is chosen from
``hf_model.config.model_type`` ("gpt2" -> GPT2LMHeadModel, "llama" -> LlamaForCausalLM).
"""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import offline_guard

from arrakis_jupyter.model.config import HookedAutoConfig
from arrakis_jupyter.model.hooked import HookedAutoModel

ATOL = 1e-5
RTOL = 1e-6
VOCAB = 200
N_LAYERS = 3
ARCHS = {
    # our architecture name -> (model name given to boot_transformers, adapter TL must pick, kv heads)
    "gpt2": ("openai-community/gpt2", "GPT2LMHeadModel", 4),
    "llama": ("meta-llama/Llama-3.2-1B", "LlamaForCausalLM", 2),
}
PER_LAYER = ["hook_resid_pre", "hook_resid_post", "attn.hook_pattern", "attn.hook_z", "hook_attn_out",
             "hook_mlp_out"]


def _randomise(hf_model: torch.nn.Module, gen: torch.Generator) -> None:
    """O(1)-scale weights: embeddings N(0, 1), matrices N(0, 1/fan_in), biases N(0, 1/64),
    norm weights 1 + N(0, 0.2^2), norm biases N(0, 0.2^2)."""
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "ln" in name or "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
            elif any(k in name for k in ("wte", "wpe", "embed_tokens")):
                p.copy_(noise)
            elif p.ndim == 2:  # GPT-2 Conv1D is [in, out], nn.Linear [out, in]
                fan_in = p.shape[0] if ".c_" in name else p.shape[1]
                p.copy_(noise / fan_in ** 0.5)
            else:
                p.copy_(noise / 8.0)


def _build_model(name: str) -> HookedAutoModel:
    torch.manual_seed(0)
    model = HookedAutoModel(HookedAutoConfig(
        name=name, vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=N_LAYERS,
        num_attention_heads=4, num_key_value_heads=ARCHS[name][2], max_position_embeddings=64))
    _randomise(model.hf_model, torch.Generator().manual_seed(1234))
    return model


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="t0", pad_token="t1", bos_token="t2",
                                  eos_token="t3")
    path = tmp_path_factory.mktemp("word_level_tokenizer")
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module", params=list(ARCHS))
def pair(request, tokenizer_dir, tokens):
    """(our model, bridge, our logits, our cache, bridge logits, bridge cache, plain HF logits) for one arch."""
    name = request.param
    ours = _build_model(name)
    with pytest.MonkeyPatch.context() as mp:
        offline_guard(mp)
        from transformers import AutoTokenizer
        from transformer_lens.model_bridge import TransformerBridge

        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        assert len(tok) == VOCAB
        bridge = TransformerBridge.boot_transformers(ARCHS[name][0], hf_model=copy.deepcopy(ours.hf_model),
                                                     tokenizer=tok, device="cpu")
        with torch.no_grad():
            ref_logits, ref_cache = bridge.run_with_cache(tokens)
    with torch.no_grad():
        logits, cache = ours.run_with_cache(tokens)
        plain = ours(tokens)
    return dict(name=name, ours=ours, bridge=bridge, logits=logits, cache=cache, ref_logits=ref_logits,
                ref_cache=ref_cache, plain=plain)


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> float:
    """assert_close at (ATOL, RTOL) with the max abs difference in the message; returns it."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs bridge {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype == torch.float32, f"{what}: dtypes {actual.dtype}, {expected.dtype}"
    diff = (actual - expected).abs()
    worst = float(diff.max()) if diff.numel() else 0.0
    excess = diff - (ATOL + RTOL * expected.abs())
    if diff.numel() and float(excess.max()) > 0:
        idx = tuple(int(i) for i in torch.nonzero(excess == excess.max())[0])
        raise AssertionError(f"{what}: |ours - bridge| = {float(diff[idx]):.3g} at {idx} (ours {float(actual[idx]):.7g}, "
                             f"bridge {float(expected[idx]):.7g}) exceeds atol={ATOL} + rtol={RTOL} * |bridge|; "
                             f"max |ours - bridge| over the tensor = {worst:.3g}")
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL, msg=what)
    return worst


# ---- the reference itself ---------------------------------------------------------------------------

def test_bridge_wraps_an_independent_copy_with_the_same_shape(pair):
    ours, bridge = pair["ours"], pair["bridge"]
    cfg, ref = ours.cfg, bridge.cfg
    assert ref.architecture == ARCHS[pair["name"]][1]
    assert (ref.n_layers, ref.d_model, ref.n_heads, ref.d_head, ref.d_mlp, ref.d_vocab) == \
        (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab)
    assert (ref.n_key_value_heads or ref.n_heads) == cfg.n_kv_heads
    if pair["name"] == "llama":
        assert cfg.n_kv_heads < cfg.n_heads  # grouped-query attention is exercised
    # no storage shared with the model under test, which boot left as it was (sdpa, HF modules)
    ours_ptrs = {p.data_ptr() for p in ours.hf_model.parameters()}
    assert not ours_ptrs & {p.data_ptr() for p in bridge.original_model.parameters()}
    assert ours.hf_model.config._attn_implementation == "sdpa"
    assert all(type(m).__module__.startswith(("transformers.", "torch.")) for m in ours.hf_model.modules())
    # and the comparison is not vacuous: patterns are far from uniform
    pattern = pair["ref_cache"]["blocks.1.attn.hook_pattern"]
    uniform = 1.0 / torch.arange(1, pattern.shape[-1] + 1)  # a query at position q attends to q + 1 keys
    assert float((pattern.max(-1).values - uniform).mean()) > 0.2


# ---- required quantities ------------------------------------------------------------------------------

def test_logits_match(pair):
    _close(pair["logits"], pair["ref_logits"], "logits (run_with_cache)")
    _close(pair["plain"], pair["ref_logits"], "logits (plain forward, HF sdpa attention)")
    _close(pair["cache"]["hook_logits"], pair["ref_cache"]["hook_unembed"], "hook_logits vs bridge hook_unembed")


@pytest.mark.parametrize("site", PER_LAYER)
def test_per_layer_activation_matches(pair, site):
    cache, ref = pair["cache"], pair["ref_cache"]
    for layer in range(N_LAYERS):
        name = f"blocks.{layer}.{site}"
        assert name in ref, f"bridge has no {name}"
        _close(cache[name], ref[name], name)


# ---- every other hook point the two share -----------------------------------------------------------

def _norm_module(ours: HookedAutoModel, hook: str) -> torch.nn.Module:
    a = ours.adapter
    if hook.startswith("ln_final."):
        return a.ln_final()
    layer, which = int(hook.split(".")[1]), hook.split(".")[2]
    block = a.layers()[layer]
    return a.ln1(block) if which == "ln1" else a.ln2(block)


def _bridge_to_ours(pair, name: str) -> torch.Tensor:
    """The bridge's activation for our hook ``name``, in our convention (see the module docstring)."""
    ref = pair["ref_cache"]
    if name == "hook_logits":
        return ref["hook_unembed"]
    t = ref[name]
    if name.endswith(".hook_normalized"):
        norm = _norm_module(pair["ours"], name)
        t = t * norm.weight.detach()
        if getattr(norm, "bias", None) is not None:
            t = t + norm.bias.detach()
    return t


NOT_IN_BRIDGE = {
    "gpt2": ("attn.hook_result", "attn.hook_rot_q", "attn.hook_rot_k"),
    "llama": ("attn.hook_result",),
}


def test_hooks_without_a_bridge_counterpart_are_the_documented_ones(pair):
    ref = pair["ref_cache"]
    missing = [n for n in pair["ours"].hook_names() if n not in ref and n != "hook_logits"]
    expected = [f"blocks.{layer}.{s}" for layer in range(N_LAYERS) for s in NOT_IN_BRIDGE[pair["name"]]]
    assert sorted(missing) == sorted(expected)


def test_every_shared_hook_matches(pair):
    cache = pair["cache"]
    compared = 0
    for name in pair["ours"].hook_names():
        if name != "hook_logits" and name not in pair["ref_cache"]:
            continue
        expected = _bridge_to_ours(pair, name)
        actual = cache[name]
        if name == "hook_pos_embed":
            assert actual.shape[0] == 1, "hook_pos_embed: expected our [1, pos, d_model] convention"
            actual = actual.expand_as(expected)
        _close(actual, expected, name)
        compared += 1
    assert compared >= len(pair["ours"].hook_names()) - N_LAYERS * len(NOT_IN_BRIDGE[pair["name"]])


def test_hook_normalized_conventions_really_differ(pair):
    """Guards the conversion above: on these weights the bridge's pre-weight value is not ours."""
    name = "blocks.0.ln1.hook_normalized"
    assert (pair["cache"][name] - pair["ref_cache"][name]).abs().max() > 0.1
