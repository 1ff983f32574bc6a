"""The hooked attention core for models that use HF's attention interface.

While a run asks for an attention-internal hook (``hook_rot_q``, ``hook_rot_k``,
``hook_attn_scores``, ``hook_pattern``), the model's ``config._attn_implementation`` is set to
``"arrakis"`` (restored afterwards), so every attention layer calls :func:`arrakis_attention`:
the eager computation, bit for bit, with hook sites. Runs that need none of those hooks keep
the implementation the model was loaded with (sdpa, flash...), so they pay nothing.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .adapters.base import Emit

IMPLEMENTATION = "arrakis"

# attention module -> emit functions of the open hook attachments (nested contexts chain)
_EMITTERS: "weakref.WeakKeyDictionary[nn.Module, list[Emit]]" = weakref.WeakKeyDictionary()


def register_emitters(layer_emitters: dict[nn.Module, tuple[int, Emit]]) -> None:
    for module, (_, emit) in layer_emitters.items():
        _EMITTERS.setdefault(module, []).append(emit)


def unregister_emitters(layer_emitters: dict[nn.Module, tuple[int, Emit]]) -> None:
    for module, (_, emit) in layer_emitters.items():
        emits = _EMITTERS.get(module, [])
        if emit in emits:
            emits.remove(emit)
        if not emits:
            _EMITTERS.pop(module, None)


def has_emitters(module: nn.Module) -> bool:
    return module in _EMITTERS


def emitter(module: nn.Module) -> Emit:
    """Chain of the emit functions registered for an attention module (identity if none)."""
    emits = _EMITTERS.get(module, ())

    def emit(name: str, tensor: torch.Tensor) -> torch.Tensor:
        for e in emits:
            tensor = e(name, tensor)
        return tensor

    return emit


def arrakis_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None,
                      **kwargs):
    """Eager attention with hook sites. query [batch, head, pos, d_head]; key/value [batch, kv_head, pos, d_head].

    Returns (z [batch, pos, head, d_head], pattern [batch, head, query_pos, key_pos]).
    """
    emit = emitter(module)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    query = emit("hook_rot_q", query.transpose(1, 2)).transpose(1, 2)
    key = emit("hook_rot_k", key.transpose(1, 2)).transpose(1, 2)
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]]
        if mask.dtype == torch.bool:
            mask = torch.zeros_like(mask, dtype=scores.dtype).masked_fill(~mask, torch.finfo(scores.dtype).min)
        scores = scores + mask
    scores = emit("hook_attn_scores", scores)
    pattern = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    pattern = emit("hook_pattern", pattern)
    attn = nn.functional.dropout(pattern, p=dropout, training=module.training)
    z = torch.matmul(attn, value).transpose(1, 2).contiguous()
    return z, pattern


ALL_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, arrakis_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, eager_mask)


def _configs(hf_model: nn.Module):
    """Every config object an attention module of this model may read."""
    seen = {}
    for m in hf_model.modules():
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "_attn_implementation"):
            seen[id(c)] = c
    return list(seen.values())


@contextmanager
def interface_core(hf_model: nn.Module, layer_emitters: dict[nn.Module, tuple[int, Emit]]) -> Iterator[None]:
    """Route every attention layer of ``hf_model`` through :func:`arrakis_attention` for the duration."""
    configs = _configs(hf_model)
    saved = [c._attn_implementation_internal for c in configs]
    register_emitters(layer_emitters)
    try:
        for c in configs:
            c._attn_implementation_internal = IMPLEMENTATION
        yield
    finally:
        for c, s in zip(configs, saved):
            c._attn_implementation_internal = s
        unregister_emitters(layer_emitters)
