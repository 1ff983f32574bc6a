"""surgery tool: new models with layers deleted, permuted or replaced, checked against HF models built afresh.

The expected model of every surgery is a Hugging Face model constructed from scratch (``from_config``) with a
config that has the new number of layers and per-layer attention kinds, loaded with the weights of the source
layers in their new slots; its logits must equal the surgered model's exactly (the same float operations).
Tiny models have windows (sliding / local attention) shorter than the 9-token inputs, so mixing up the
per-layer masks shows. KV-cached decoding is compared with full forward passes (atol 1e-5, float32).
"""
from __future__ import annotations

import copy

import pytest
import torch
import transformers
from conftest import ARCHS, tiny

from arrakis_jupyter import HookedAutoModel
from arrakis_jupyter.errors import ArrakisIndexError, ArrakisValueError
from arrakis_jupyter.tools.registry import get_tool_class
from arrakis_jupyter.tools.surgery import LossChange, ModelSurgery

N = 4  # layers of the tiny models here
# windows of 3 tokens, so that per-layer masks matter on 9-token inputs
OVERRIDES = {"gpt-neo": {"window_size": 3},  # layers global, local, global, local
             "qwen2": {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 2},  # full, full, sliding x2
             "mistral": {"sliding_window": 3}}
FOUR = ["llama", "gpt2", "gpt-neox", "qwen2"]


def make(arch: str) -> HookedAutoModel:
    return tiny(arch, num_hidden_layers=N, **OVERRIDES.get(arch, {}))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(3))


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens)


def hf_logits(hf_model, tokens):
    # as HookedAutoModel.forward runs it (grad mode and use_cache can change the kernels / memory layout)
    with torch.no_grad():
        return hf_model(input_ids=tokens, use_cache=False).logits


def snapshot(model):
    """The original's state: weights, config, attention cache indices, layer modules and hook names."""
    sd = {k: v.detach().clone() for k, v in model.hf_model.state_dict().items()}
    idx = [getattr(m, a) for layer in model.adapter.layers() for m in layer.modules()
           for a in ("layer_idx", "layer_id") if isinstance(m.__dict__.get(a), int)]
    return sd, model.hf_model.config.to_dict(), idx, list(model.adapter.layers()), model.hook_names()


def assert_untouched(model, snap):
    sd, cfg, idx, layers, names = snap
    now = model.hf_model.state_dict()
    assert set(now) == set(sd) and all(torch.equal(now[k], v) for k, v in sd.items())
    assert model.hf_model.config.to_dict() == cfg
    assert snapshot(model)[2] == idx
    assert all(a is b for a, b in zip(model.adapter.layers(), layers)) and len(layers) == len(model.adapter.layers())
    assert model.hook_names() == names and model.cfg.n_layers == len(layers)


def layers_prefix(model) -> str:
    return model._module_names[model.adapter.layers()]


def rebuilt(model: HookedAutoModel, sources: list) -> transformers.PreTrainedModel:
    """An HF model built from scratch whose layer i has the weights of ``sources[i]`` (an original layer index or
    a module), with a fresh config of len(sources) layers and the per-layer attention kinds of the sources."""
    hf = model.hf_model
    d = hf.config.to_dict()
    kinds = d.get("layer_types") or d.get("attention_layers")
    src_index = [s if isinstance(s, int) else i for i, s in enumerate(sources)]  # a module keeps its slot's kind
    mt = model.cfg.hf_model_type
    d[{"gpt2": "n_layer", "gpt_neo": "num_layers"}.get(mt, "num_hidden_layers")] = len(sources)
    if mt == "gpt_neo":
        d["attention_types"] = [[[kinds[j]], 1] for j in src_index]
        d.pop("attention_layers", None)
    elif d.get("layer_types"):
        d["layer_types"] = [kinds[j] for j in src_index]
    cfg = type(hf.config).from_dict(d)
    fresh = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    prefix = layers_prefix(model)
    state = {k: v for k, v in hf.state_dict().items() if not k.startswith(prefix + ".")}
    old = model.adapter.layers()
    for i, s in enumerate(sources):
        layer = old[s] if isinstance(s, int) else s
        state.update({f"{prefix}.{i}.{k}": v for k, v in layer.state_dict().items()})
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)  # lm_head: tied
    return fresh


def attn_indices(model) -> list[int]:
    """The cache index each decoder layer's attention uses."""
    out = []
    for layer in model.adapter.layers():
        vals = {m.__dict__[a] for m in layer.modules() for a in ("layer_idx", "layer_id") if a in m.__dict__
                and isinstance(m.__dict__[a], int)}
        assert len(vals) == 1, vals
        out.append(vals.pop())
    return out


# ---- registration, copies ------------------------------------------------------------------------------

def test_registered_and_get_model():
    m = make("llama")
    tool = get_tool_class("surgery")(m)
    assert isinstance(tool, ModelSurgery) and tool.get_model() is m


@pytest.mark.parametrize("arch", FOUR)
def test_deleting_nothing_is_an_exact_copy_sharing_weights(arch, tokens):
    m = make(arch)
    before = logits(m, tokens)
    new = ModelSurgery(m).delete_layers([])
    assert torch.equal(logits(new, tokens), before)
    assert new.hf_model is not m.hf_model and new.hf_model.config is not m.hf_model.config
    assert new.adapter.layers() is not m.adapter.layers()
    assert all(a is not b for a, b in zip(new.adapter.layers(), m.adapter.layers()))
    # weights are shared, not copied
    assert all(p.data_ptr() == q.data_ptr() for p, q in zip(new.hf_model.parameters(), m.hf_model.parameters()))
    copied = ModelSurgery(m).delete_layers([], copy_weights=True)
    assert torch.equal(logits(copied, tokens), before)
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(copied.hf_model.parameters(), m.hf_model.parameters()))
    assert new.layer_origin == list(range(N))


# ---- deletion / permutation / replacement against models built from scratch ---------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_delete_matches_fresh_model_and_leaves_original_untouched(arch, tokens):
    m = make(arch)
    snap, before = snapshot(m), logits(m, tokens)
    new = ModelSurgery(m).delete_layers([1])
    out = logits(new, tokens)
    assert torch.equal(out, hf_logits(rebuilt(m, [0, 2, 3]), tokens))
    assert not torch.allclose(out, before, atol=1e-3)
    assert new.cfg.n_layers == N - 1 and len(new.adapter.layers()) == N - 1
    assert new.hook_names() == tiny(arch, num_hidden_layers=N - 1, **OVERRIDES.get(arch, {})).hook_names()
    assert "blocks.2.hook_resid_post" in new.hook_name_set and "blocks.3.hook_resid_post" not in new.hook_name_set
    assert new.hf_model.config.num_hidden_layers == N - 1 and attn_indices(new) == [0, 1, 2]
    # the original: weights, config, layer indices, logits
    assert_untouched(m, snap)
    assert torch.equal(logits(m, tokens), before)


@pytest.mark.parametrize("arch", ARCHS)
def test_permutation_matches_fresh_model(arch, tokens):
    m = make(arch)
    snap, before = snapshot(m), logits(m, tokens)
    tool = ModelSurgery(m)
    assert torch.equal(logits(tool.permute_layers(list(range(N))), tokens), before)
    order = [2, 0, 3, 1]
    new = tool.permute_layers(order)
    assert torch.equal(logits(new, tokens), hf_logits(rebuilt(m, order), tokens))
    assert new.layer_origin == order and attn_indices(new) == [0, 1, 2, 3]
    kinds = getattr(m.hf_model.config, "layer_types", None)
    if arch == "qwen2":  # the per-layer attention kinds travel with the layers
        assert new.hf_model.config.layer_types == [kinds[j] for j in order] != kinds
    # a subset of the layers, in a new order
    sub = tool.permute_layers([3, 1])
    assert sub.cfg.n_layers == 2 and torch.equal(logits(sub, tokens), hf_logits(rebuilt(m, [3, 1]), tokens))
    assert_untouched(m, snap)
    assert torch.equal(logits(m, tokens), before)


@pytest.mark.parametrize("arch", ARCHS)
def test_identity_replacement_equals_deletion(arch, tokens):
    m = make(arch)
    tool = ModelSurgery(m)
    deleted = tool.delete_layers([1, 2])
    ident = tool.replace_layers([1, 2], "identity")
    assert ident.cfg.n_layers == N and ident.layer_origin == [0, "identity(L1)", "identity(L2)", 3]
    assert torch.equal(logits(ident, tokens), logits(deleted, tokens))
    # every hook point still exists and fires on a skipped layer: it writes exactly nothing
    _, cache = ident.run_with_cache(tokens)
    assert torch.equal(cache["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_pre"])
    assert not cache["blocks.1.hook_attn_out"].any() and not cache["blocks.1.hook_mlp_out"].any()
    assert not cache["blocks.1.attn.hook_result"].any()
    assert ident.W_O[1].abs().sum() == 0 and ident.W_out[2].abs().sum() == 0 and m.W_O[1].abs().sum() > 0


@pytest.mark.parametrize("arch", FOUR)
def test_replacing_with_the_same_layer_is_exact_and_foreign_layers_match_fresh_model(arch, tokens):
    m = make(arch)
    snap, before = snapshot(m), logits(m, tokens)
    tool = ModelSurgery(m)
    same = tool.replace_layers([1, 2], torch.nn.ModuleList([m.adapter.layers()[1], m.adapter.layers()[2]]))
    assert torch.equal(logits(same, tokens), before) and same.layer_origin == [0, "replacement[0]", "replacement[1]", 3]
    # a layer moved to another slot keeps its own attention kind (Qwen2: full layer 0 in sliding slot 2)
    moved = tool.replace_layers(2, m.adapter.layers()[0])
    assert torch.equal(logits(moved, tokens), hf_logits(rebuilt(m, [0, 1, 0, 3]), tokens))
    if arch == "qwen2":
        assert moved.hf_model.config.layer_types == ["full_attention"] * 3 + ["sliding_attention"]
    # a layer of another model of the same architecture and width
    foreign = copy.deepcopy(m.adapter.layers()[2])
    with torch.no_grad():
        for p in foreign.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    foreign_snap = {k: v.clone() for k, v in foreign.state_dict().items()}
    new = tool.replace_layers(2, foreign)
    assert torch.equal(logits(new, tokens), hf_logits(rebuilt(m, [0, 1, foreign, 3]), tokens))
    assert attn_indices(new) == [0, 1, 2, 3] and attn_indices_of(moved.adapter.layers()[2]) == 2
    assert attn_indices_of(m.adapter.layers()[0]) == 0  # the replacement itself is not renumbered
    assert all(torch.equal(foreign.state_dict()[k], v) for k, v in foreign_snap.items())
    assert new.adapter.layers()[2] is not foreign
    assert next(new.adapter.layers()[2].parameters()).data_ptr() == next(foreign.parameters()).data_ptr()
    # a layer used twice: two module objects, two cache slots, shared weights
    twice = tool.replace_layers(3, m.adapter.layers()[2])
    assert torch.equal(logits(twice, tokens), hf_logits(rebuilt(m, [0, 1, 2, 2]), tokens))
    assert twice.adapter.layers()[2] is not twice.adapter.layers()[3] and attn_indices(twice) == [0, 1, 2, 3]
    assert_untouched(m, snap)
    assert torch.equal(logits(m, tokens), before)


def attn_indices_of(layer) -> int:
    vals = {m.__dict__[a] for m in layer.modules() for a in ("layer_idx", "layer_id") if a in m.__dict__}
    assert len(vals) == 1
    return vals.pop()


# ---- generation and the KV cache ------------------------------------------------------------------------

@pytest.mark.parametrize("arch", FOUR + ["gpt-neo", "mistral"])
def test_kv_cache_and_generation_on_surgered_models(arch, tokens):
    m = make(arch)
    tool = ModelSurgery(m)
    for new in (tool.permute_layers([3, 0, 2]), tool.replace_layers(3, m.adapter.layers()[0])):
        hf = new.hf_model
        with torch.no_grad():
            full = hf(tokens).logits
            out = hf(tokens[:, :5], use_cache=True)
            cache = out.past_key_values
            assert torch.allclose(out.logits, full[:, :5], atol=1e-5)
            for t in range(5, tokens.shape[1]):  # one token at a time through the cache, past the window of 3
                step = hf(tokens[:, t:t + 1], past_key_values=cache, use_cache=True)
                assert torch.allclose(step.logits[:, -1], full[:, t], atol=1e-5), (arch, t)
        # greedy generate (KV cache) == greedy decoding with full forward passes
        gen = new.generate(tokens[:1], max_new_tokens=5)
        seq = tokens[:1]
        for _ in range(5):
            seq = torch.cat([seq, logits(new, seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert torch.equal(gen, seq)


# ---- the default model -------------------------------------------------------------------------------------

def test_default_model_loss_and_generation(default_model):
    prompt = "The capital of France is"
    before = logits(default_model, prompt)
    tool = ModelSurgery(default_model)
    one = tool.delete_layers([15])
    many = tool.delete_layers(list(range(10, 20)))
    assert (one.cfg.n_layers, many.cfg.n_layers) == (29, 20)
    small = tool.loss_change(one, max_tokens=256)
    big = tool.loss_change(many, max_tokens=256)
    print(f"\nSmolLM2-135M, 256 corpus tokens: delete layer 15: {small}\ndelete layers 10-19: {big}")
    assert small.original == big.original and 2.0 < small.original < 5.0
    assert 0.02 < small.difference < 1.0  # measured +0.12 nats
    assert big.difference > 1.5 and big.difference > 5 * small.difference  # measured +2.95 nats
    # generation on the surgered copy: KV-cached greedy == full-forward greedy
    ids = one.to_tokens(prompt)
    gen = one.generate(ids, max_new_tokens=4)
    seq = ids
    for _ in range(4):
        seq = torch.cat([seq, logits(one, seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(gen, seq)
    text = one.generate(prompt, max_new_tokens=4)
    assert isinstance(text, str) and text.startswith(prompt) and len(text) > len(prompt)
    assert torch.equal(logits(default_model, prompt), before)  # bit-identical
    assert default_model.cfg.n_layers == 30 and len(default_model.adapter.layers()) == 30


# ---- loss_change on token ids, report_loss, context managers ------------------------------------------------

def test_loss_change_on_token_ids(tokens, capsys):
    m = make("llama")
    tool = ModelSurgery(m)
    same = tool.loss_change(tool.delete_layers([]), corpus=tokens)
    assert isinstance(same, LossChange) and same.difference == 0.0 and same.n_tokens == 2 * 8
    expected = torch.nn.functional.cross_entropy(logits(m, tokens)[:, :-1].reshape(-1, 101), tokens[:, 1:].reshape(-1))
    assert abs(same.original - float(expected)) < 1e-5
    deleted = tool.delete_layers([0, 1, 2])
    change = tool.loss_change(deleted, corpus=tokens)
    expected_new = torch.nn.functional.cross_entropy(logits(deleted, tokens)[:, :-1].reshape(-1, 101),
                                                     tokens[:, 1:].reshape(-1))
    assert abs(change.modified - float(expected_new)) < 1e-5 and change.difference != 0
    assert list(change.to_frame()["loss"]) == [change.original, change.modified, change.difference]
    tool.delete_layers([1], report_loss=tokens)
    assert "LossChange(original=" in capsys.readouterr().out
    with pytest.raises(ArrakisValueError, match="no tokenizer"):
        tool.loss_change(deleted, corpus=["some text"])
    with pytest.raises(ArrakisValueError, match="HookedAutoModel"):
        tool.loss_change(deleted.hf_model, corpus=tokens)


def test_context_managers_negative_indices_and_last_created(tokens):
    m = make("gpt2")
    last = HookedAutoModel.last_created()
    tool = ModelSurgery(m)
    with tool.deleted(-1) as a:
        assert a.layer_origin == [0, 1, 2] and torch.equal(logits(a, tokens), logits(tool.delete_layers(3), tokens))
    with tool.permuted([1, 0]) as b, tool.replaced([0], ["identity"]) as c:
        assert b.cfg.n_layers == 2 and c.layer_origin[0] == "identity(L0)"
    assert HookedAutoModel.last_created() is last  # surgery does not change the magics' default model


# ---- bad input ----------------------------------------------------------------------------------------------

def test_errors():
    m = make("llama")
    tool = ModelSurgery(m)
    layer = m.adapter.layers()[0]
    with pytest.raises(ArrakisIndexError, match=r"layer 4 is out of range: valid layers are 0\.\.3"):
        tool.delete_layers([4])
    with pytest.raises(ArrakisIndexError, match=r"must be ints in 0\.\.3, got 1\.5"):
        tool.delete_layers([1.5])
    with pytest.raises(ArrakisValueError, match=r"duplicate layer indices \[1\]"):
        tool.delete_layers([1, -3])
    with pytest.raises(ArrakisValueError, match="would delete all 4 layers"):
        tool.delete_layers(range(4))
    with pytest.raises(ArrakisValueError, match=r"duplicate layer indices \[0\]"):
        tool.permute_layers([0, 0, 1, 2])
    with pytest.raises(ArrakisValueError, match=r"permutation of 0\.\.3; \[1, 0\] is not one: it lacks layers \[2, 3\]"):
        tool.permute_layers([1, 0], allow_subset=False)
    with pytest.raises(ArrakisValueError, match="list of layer indices"):
        tool.permute_layers(2)
    with pytest.raises(ArrakisValueError, match="got no indices"):
        tool.permute_layers([])
    with pytest.raises(ArrakisValueError, match=r"2 indices \[0, 1\] but 1 replacements"):
        tool.replace_layers([0, 1], [layer])
    with pytest.raises(ArrakisValueError, match="2 indices .* but one module"):
        tool.replace_layers([0, 1], layer)
    with pytest.raises(ArrakisValueError, match=r"replacement 0 \(for layer 1\) must be an nn.Module .* got Tensor"):
        tool.replace_layers([1], [torch.zeros(3)])
    with pytest.raises(ArrakisValueError, match="is a Linear; the model's decoder layers are LlamaDecoderLayer"):
        tool.replace_layers(1, torch.nn.Linear(64, 64))
    with pytest.raises(ArrakisValueError, match="only accepted string is 'identity'"):
        tool.replace_layers(1, "skip")
    wide = tiny("llama", hidden_size=128, num_hidden_layers=1).adapter.layers()[0]
    with pytest.raises(ArrakisValueError, match=r"has shape \(128.*model's layers have \(64"):
        tool.replace_layers(1, wide)
    with pytest.raises(ArrakisValueError, match="is torch.float64 on cpu, the model's is torch.float32"):
        tool.replace_layers(1, copy.deepcopy(layer).double())
    with pytest.raises(ArrakisValueError, match="max_tokens must be"):
        tool.loss_change(m, corpus=torch.zeros(1, 4, dtype=torch.long), max_tokens=0)
    assert m.cfg.n_layers == N and len(m.adapter.layers()) == N  # nothing changed on the way
