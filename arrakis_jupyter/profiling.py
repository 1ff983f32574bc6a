"""Per-layer / per-component wall time and peak memory of forward passes.

``with profile_forward(model) as prof: model(tokens)`` times every block (or every ln1 / attn / ln2 / mlp)
of the forward passes run inside the context, and measures the peak memory each allocates;
``prof.table`` is filled when the context exits.
"""
from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import ArrakisValueError

if TYPE_CHECKING:
    from .model import HookedAutoModel

GRANULARITIES = ("layer", "component")
COLUMNS = ("module", "calls", "total_ms", "mean_ms", "peak_mib", "share_time")
_MIB = 2**20


@dataclass
class ModelProfile:
    """Wall time and peak memory per module; ``table`` has one row per profiled module in forward order.

    ``share_time`` is a row's ``total_ms`` over the summed ``total_ms`` of the top-level rows (modules not
    inside another profiled one). ``total_ms`` is the time of the whole model's forward passes.
    """

    granularity: str
    table: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(COLUMNS)))
    total_ms: float = 0.0
    forward_passes: int = 0

    def metrics(self) -> dict[str, float]:
        """``profile/<module>/total_ms`` and ``profile/<module>/peak_mib`` per module, plus ``profile/total_ms``
        and ``profile/forward_passes``; NaN entries (no memory tracking, a module never called) are left out."""
        out = {"profile/total_ms": float(self.total_ms), "profile/forward_passes": float(self.forward_passes)}
        for row in self.table.itertuples(index=False):
            for col in ("total_ms", "peak_mib"):
                value = float(getattr(row, col))
                if not math.isnan(value):
                    out[f"profile/{row.module}/{col}"] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: granularity, total_ms, forward_passes and the table's rows (NaN as None)."""
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                for row in self.table.to_dict("records")]
        return {"granularity": self.granularity, "total_ms": float(self.total_ms),
                "forward_passes": int(self.forward_passes), "rows": rows}

    def _header(self) -> str:
        return (f"ModelProfile({self.granularity}: {self.forward_passes} forward passes, "
                f"{self.total_ms:.3f} ms in all)")

    def __repr__(self) -> str:
        return self._header() + "\n" + self.table.to_string(index=False)

    def _repr_html_(self) -> str:
        return f"<p>{self._header()}</p>" + self.table._repr_html_()


# ---- memory ------------------------------------------------------------------------------------

class _MemoryTracker(TorchDispatchMode):
    """Live bytes of the tensor storages that aten ops create while the mode is active.

    An op's output counts when its storage is new (not an input's, not already counted); it stops counting
    when the storage is freed (a weakref on the storage object, which PyTorch keeps alive exactly as long as
    the storage). Weights and tensors made before the mode are never counted; memory used inside a kernel
    (fused attention's workspace, cuBLAS scratch) and allocator caching/fragmentation are not seen.
    ``enter_region`` / ``exit_region`` give the peak above the start of nested regions.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self._peak = 0  # highest ``live`` since the innermost open region started
        self._refs: dict[tuple[torch.device, int], weakref.ref] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = None
        for t in _tensors(out):
            key = _storage_key(t)
            if key is None or key in self._refs:
                continue
            if inputs is None:
                inputs = {_storage_key(a) for a in _tensors((args, kwargs))}
            if key not in inputs:
                self._track(t, key)
        return out

    def _track(self, t: torch.Tensor, key: tuple[torch.device, int]) -> None:
        storage = t.untyped_storage()
        nbytes = storage.nbytes()
        self._refs[key] = weakref.ref(storage, lambda _, key=key, nbytes=nbytes: self._free(key, nbytes))
        self.live += nbytes
        self._peak = max(self._peak, self.live)

    def _free(self, key: tuple[torch.device, int], nbytes: int) -> None:
        if self._refs.pop(key, None) is not None:
            self.live -= nbytes

    def enter_region(self) -> tuple[int, int]:
        """Start a (possibly nested) region; pass the token to ``exit_region``."""
        token = (self.live, self._peak)
        self._peak = self.live
        return token

    def exit_region(self, token: tuple[int, int]) -> int:
        """Peak bytes above the region's starting live bytes."""
        start, outer_peak = token
        peak = self._peak - start
        self._peak = max(outer_peak, self._peak)
        return peak

    def __exit__(self, *exc):
        self._refs.clear()  # drop the callbacks: storages freed later no longer report here
        return super().__exit__(*exc)


def _tensors(x: Any) -> Iterator[torch.Tensor]:
    """The tensors in an op's (nested tuple / list / dict) arguments or outputs."""
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (tuple, list)):
        for item in x:
            yield from _tensors(item)
    elif isinstance(x, dict):
        for item in x.values():
            yield from _tensors(item)


def _storage_key(t: torch.Tensor) -> tuple[torch.device, int] | None:
    """(device, storage address) of a dense tensor with real memory, else None."""
    if t.layout != torch.strided or t.device.type == "meta":
        return None
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a storage
        return None
    ptr = storage.data_ptr()
    return (t.device, ptr) if ptr and storage.nbytes() else None


# ---- hooks -------------------------------------------------------------------------------------

def profiled_modules(model: HookedAutoModel, granularity: str = "layer") -> list[tuple[str, nn.Module]]:
    """(canonical name, module) of every module ``profile_forward`` times, in forward order."""
    if granularity not in GRANULARITIES:
        raise ArrakisValueError(f"granularity must be one of {', '.join(map(repr, GRANULARITIES))}, "
                                f"got {granularity!r}")
    if not hasattr(model, "adapter") or not hasattr(model, "hf_model"):
        raise ArrakisValueError(f"profiling takes a HookedAutoModel, got {type(model).__name__}; "
                                f"wrap an HF model with HookedAutoModel(hf_model)")
    ad = model.adapter
    out = [("embed", ad.embed())]
    if ad.pos_embed() is not None:
        out.append(("pos_embed", ad.pos_embed()))
    for i, block in enumerate(ad.layers()):
        if granularity == "layer":
            out.append((f"blocks.{i}", block))
            continue
        parts = [("ln1", ad.ln1(block)), ("attn", ad.attn(block)), ("ln2", ad.ln2(block)), ("mlp", ad.mlp(block))]
        out += [(f"blocks.{i}.{part}", m) for part, m in parts if m is not None]
    return out + [("ln_final", ad.ln_final()), ("unembed", ad.unembed())]


@dataclass
class _Stats:
    calls: int = 0
    seconds: float = 0.0
    peak_bytes: int | None = None
    open: list = field(default_factory=list)  # (memory token, start time) per call in progress


def _add_hooks(stack: ExitStack, module: nn.Module, stats: _Stats, clock: Callable[[], float],
               tracker: _MemoryTracker | None) -> None:
    def pre(mod, args):
        stats.open.append((None if tracker is None else tracker.enter_region(), clock()))

    def post(mod, args, output):
        if not stats.open:
            return
        token, start = stats.open.pop()
        stats.seconds += clock() - start
        stats.calls += 1
        if tracker is not None:
            peak = tracker.exit_region(token)
            stats.peak_bytes = peak if stats.peak_bytes is None else max(stats.peak_bytes, peak)

    stack.callback(module.register_forward_pre_hook(pre).remove)
    stack.callback(module.register_forward_hook(post, always_call=True).remove)


def _clock_for(root: nn.Module) -> Callable[[], float]:
    """perf_counter, after waiting for the GPUs the model lives on (so GPU time is not left out)."""
    devices = sorted({p.device for p in root.parameters() if p.device.type == "cuda"}, key=str)
    if not devices:
        return time.perf_counter

    def clock() -> float:
        for d in devices:
            torch.cuda.synchronize(d)
        return time.perf_counter()

    return clock


def _top_level(modules: list[tuple[str, nn.Module]]) -> list[bool]:
    """Whether each module is outside every other profiled module."""
    inner = set()
    for _, m in modules:
        inner |= {id(sub) for sub in m.modules() if sub is not m}
    return [id(m) not in inner for _, m in modules]


@contextmanager
def _profile_modules(modules: list[tuple[str, nn.Module]], root: nn.Module, granularity: str,
                     track_memory: bool = True) -> Iterator[ModelProfile]:
    """Profile named modules of ``root`` (the whole-model time comes from ``root``'s own hooks)."""
    profile = ModelProfile(granularity)
    stats = {name: _Stats() for name, _ in modules}
    whole = _Stats()
    clock = _clock_for(root)
    tracker = _MemoryTracker() if track_memory else None
    with ExitStack() as stack:
        try:
            for name, module in modules:
                _add_hooks(stack, module, stats[name], clock, tracker)
            _add_hooks(stack, root, whole, clock, None)
            if tracker is not None:
                stack.enter_context(tracker)
            yield profile
        finally:
            stack.close()  # leave the memory mode and remove every hook, also when the body raised
            profile.total_ms = whole.seconds * 1e3
            profile.forward_passes = whole.calls
            profile.table = _table(modules, stats)


def _table(modules: list[tuple[str, nn.Module]], stats: dict[str, _Stats]) -> pd.DataFrame:
    rows = []
    for name, _ in modules:
        s = stats[name]
        total = s.seconds * 1e3
        rows.append({"module": name, "calls": s.calls, "total_ms": total,
                     "mean_ms": total / s.calls if s.calls else math.nan,
                     "peak_mib": math.nan if s.peak_bytes is None else s.peak_bytes / _MIB})
    table = pd.DataFrame(rows, columns=list(COLUMNS[:-1]))
    top_total = table.loc[_top_level(modules), "total_ms"].sum()
    table["share_time"] = table["total_ms"] / top_total if top_total > 0 else math.nan
    return table.astype({"calls": int, "total_ms": float, "mean_ms": float, "peak_mib": float})


@contextmanager
def profile_forward(model: HookedAutoModel, granularity: str = "layer",
                    track_memory: bool = True) -> Iterator[ModelProfile]:
    """Time (and measure the peak memory of) each block or each block component in the forward passes
    run inside the context; the yielded ``ModelProfile`` is filled when the context exits.

    Modules are named like hook points: ``embed``, ``pos_embed`` (learned positions only), ``blocks.{i}``
    (``granularity="layer"``) or ``blocks.{i}.ln1|attn|ln2|mlp`` (``"component"``; no ln2 in parallel
    blocks), ``ln_final``, ``unembed``. Times are wall clock between forward pre-hooks and hooks, summed
    over calls; on GPU each reading waits for the device, so times include the kernels.

    ``peak_mib``: highest live memory of the activations and temporaries that aten ops allocate while the
    module runs, above what was live when it started (max over calls). Weights are excluded, memory used
    inside fused kernels is not seen, and storages are counted whole. Memory tracking runs every op through
    a Python dispatch mode, which slows the forward down; use ``track_memory=False`` (peak_mib NaN) for
    cleaner timings. Every hook is removed when the context exits, also on exceptions.
    """
    modules = profiled_modules(model, granularity)
    with _profile_modules(modules, model.hf_model, granularity, track_memory) as profile:
        yield profile
