"""profile_forward: module names, call counts, timings, real memory peaks, and hook cleanup."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from arrakis_jupyter.errors import ArrakisValueError
from arrakis_jupyter.profiling import (
    GRANULARITIES,
    _MemoryTracker,
    _profile_modules,
    profile_forward,
)

MIB = 2**20
BATCH, POS = 4, 64


@pytest.fixture(scope="module")
def models():
    return {"llama": tiny("llama"), "gpt2": tiny("gpt2")}


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 101, (BATCH, POS), generator=torch.Generator().manual_seed(0))


def expected_names(arch: str, granularity: str) -> list[str]:
    names = ["embed"] + (["pos_embed"] if arch == "gpt2" else [])
    for i in range(2):
        names += [f"blocks.{i}"] if granularity == "layer" else [f"blocks.{i}.{p}" for p in ("ln1", "attn", "ln2", "mlp")]
    return names + ["ln_final", "unembed"]


def hook_counts(root: nn.Module) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in root.modules()]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_names_calls_and_times(models, tokens, arch, granularity):
    model = models[arch]
    with torch.no_grad(), profile_forward(model, granularity) as prof:
        assert prof.table.empty  # filled when the context exits
        for _ in range(3):
            model(tokens)
    t = prof.table
    assert list(t.columns) == ["module", "calls", "total_ms", "mean_ms", "peak_mib", "share_time"]
    assert t["module"].tolist() == expected_names(arch, granularity)
    assert prof.granularity == granularity and prof.forward_passes == 3
    assert (t["calls"] == 3).all()
    assert (t["total_ms"] > 0).all()
    assert t["mean_ms"].tolist() == pytest.approx((t["total_ms"] / 3).tolist())
    assert t["total_ms"].sum() <= prof.total_ms + 0.5  # modules run inside the whole-model hooks; 0.5 ms slack
    assert t["share_time"].sum() == pytest.approx(1.0)  # rows never nest at either granularity
    assert (t["peak_mib"] > 0).all()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_block_peak_covers_mlp_activation(models, tokens, arch):
    model = models[arch]
    hidden_mib = BATCH * POS * model.cfg.d_mlp * 4 / MIB  # one [batch, pos, d_mlp] float32 activation
    with torch.no_grad(), profile_forward(model) as prof:
        model(tokens)
    with torch.no_grad(), profile_forward(model, "component") as comp:
        model(tokens)
    peaks = dict(zip(prof.table["module"], prof.table["peak_mib"]))
    cpeaks = dict(zip(comp.table["module"], comp.table["peak_mib"]))
    for i in range(2):
        assert peaks[f"blocks.{i}"] >= hidden_mib
        assert cpeaks[f"blocks.{i}.mlp"] >= hidden_mib
    # the logits [batch, pos, d_vocab] float32 are the unembedding's whole allocation
    assert cpeaks["unembed"] == pytest.approx(BATCH * POS * model.cfg.d_vocab * 4 / MIB)


def test_logits_unchanged_and_no_memory_tracking(models, tokens):
    model = models["llama"]
    with torch.no_grad():
        ref = model(tokens)
        with profile_forward(model, "component") as prof:
            out = model(tokens)
        with profile_forward(model, track_memory=False) as fast:
            out2 = model(tokens)
    assert torch.equal(out, ref) and torch.equal(out2, ref)
    assert prof.table["peak_mib"].notna().all()
    assert fast.table["peak_mib"].isna().all()
    assert not any(k.endswith("/peak_mib") for k in fast.metrics())


def test_metrics_and_serialisation(models, tokens):
    model = models["gpt2"]
    with torch.no_grad(), profile_forward(model) as prof:
        model(tokens)
        model(tokens)
    m = prof.metrics()
    assert m["profile/total_ms"] == prof.total_ms and m["profile/forward_passes"] == 2
    expected = {f"profile/{row['module']}/{col}": float(row[col])
                for row in prof.table.to_dict("records") for col in ("total_ms", "peak_mib")}
    assert {k: v for k, v in m.items() if k.count("/") == 2} == expected
    assert m["profile/blocks.1/total_ms"] == prof.table.set_index("module").loc["blocks.1", "total_ms"]
    d = json.loads(json.dumps(prof.to_dict()))
    assert d["granularity"] == "layer" and d["forward_passes"] == 2
    assert [r["module"] for r in d["rows"]] == expected_names("gpt2", "layer")
    assert "blocks.1" in repr(prof) and "blocks.1" in prof._repr_html_()


def test_hooks_removed_after_exit_and_exception(models, tokens):
    model = models["llama"]
    before = hook_counts(model.hf_model)
    with torch.no_grad(), profile_forward(model, "component"):
        assert hook_counts(model.hf_model) != before
        model(tokens)
    assert hook_counts(model.hf_model) == before and _get_current_dispatch_mode() is None

    with pytest.raises(RuntimeError, match="boom"), profile_forward(model) as prof:
        model(tokens)
        raise RuntimeError("boom")
    assert hook_counts(model.hf_model) == before and _get_current_dispatch_mode() is None
    assert prof.forward_passes == 1  # filled on the way out

    def fail(mod, args):
        raise RuntimeError("inside forward")

    handle = model.adapter.mlp(model.adapter.layers()[1]).register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="inside forward"), profile_forward(model) as prof:
            model(tokens)
    finally:
        handle.remove()
    assert hook_counts(model.hf_model) == before and _get_current_dispatch_mode() is None
    assert prof.table.set_index("module").loc["blocks.0", "calls"] == 1


def test_bad_granularity(models):
    with pytest.raises(ArrakisValueError, match=r"granularity must be one of 'layer', 'component', got 'block'"), \
            profile_forward(models["llama"], "block"):
        pass
    with pytest.raises(ArrakisValueError, match=r"takes a HookedAutoModel, got LlamaForCausalLM"), \
            profile_forward(models["llama"].hf_model):
        pass


# ---- the memory tracker on known allocations ------------------------------------------------------

def test_memory_tracker_counts_known_allocations():
    with _MemoryTracker() as tracker:
        token = tracker.enter_region()
        x = torch.ones(2 * MIB)  # 8 MiB float32
        x.add_(1)  # in place: same storage
        y = x.view(-1, 2)[:, 0]  # a view: same storage
        assert tracker.live == 8 * MIB
        del x, y
        assert tracker.live == 0  # freed
        z = torch.empty(MIB // 4, dtype=torch.float64)  # 2 MiB, after the 8 MiB were freed
        assert tracker.exit_region(token) == 8 * MIB
        del z
    assert tracker.live == 0


class Temporary(nn.Module):
    """Allocates an 8 MiB temporary and frees it before returning."""

    def forward(self, x):
        tmp = torch.ones(2 * MIB)
        return x + tmp.sum()


class Outer(nn.Module):
    """Holds a 4 MiB tensor while calling its child twice (re-entrancy: the same module twice per forward)."""

    def __init__(self):
        super().__init__()
        self.inner = Temporary()

    def forward(self, x):
        held = torch.zeros(MIB)
        return self.inner(self.inner(x)) + held[0]


class Recursive(nn.Module):
    def forward(self, x, depth=2):
        return x if depth == 0 else self(x + 1, depth - 1)


def test_nested_peaks_and_reentrancy():
    outer = Outer()
    with _profile_modules([("outer", outer), ("inner", outer.inner)], outer, "layer") as prof:
        outer(torch.zeros(3))
        outer(torch.zeros(3))
    t = prof.table.set_index("module")
    assert t.loc["inner", "calls"] == 4 and t.loc["outer", "calls"] == 2 and prof.forward_passes == 2
    # inner: its 8 MiB temporary (+ a few scalars); outer: its 4 MiB held tensor on top of that
    assert t.loc["inner", "peak_mib"] == pytest.approx(8, abs=0.01)
    assert t.loc["outer", "peak_mib"] == pytest.approx(12, abs=0.01)
    assert t.loc["outer", "share_time"] == pytest.approx(1.0)  # inner is nested: not a top-level row

    rec = Recursive()
    with _profile_modules([("rec", rec)], rec, "layer", track_memory=False) as prof:
        rec(torch.zeros(3))
    assert prof.table.loc[0, "calls"] == 3 and prof.forward_passes == 3
