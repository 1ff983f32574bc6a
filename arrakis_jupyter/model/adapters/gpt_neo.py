"""GPT-Neo: learned positions, alternating global/local attention, unscaled attention scores.

GPT-Neo does not use HF's attention interface, so its hooked core replaces the ``_attn``
method of each attention module (an instance attribute, removed afterwards).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import nn

from .base import Adapter, Emit
from .gpt2 import GPT2Adapter


class GPTNeoAdapter(GPT2Adapter):
    """GPT-2's module paths, with separate q/k/v/out projections inside ``attn.attention``."""

    model_types = ("gpt_neo",)

    def attention_module_for_core(self, attn):
        return attn.attention

    def qkv_modules(self, attn):
        inner = attn.attention
        return inner.q_proj, inner.k_proj, inner.v_proj

    def fused_qkv(self, attn):
        return None

    def o_proj(self, attn):
        return attn.attention.out_proj

    def model_config(self):
        c = self.config
        return replace(Adapter.model_config(self), d_mlp=int(c.intermediate_size or 4 * c.hidden_size),
                       extra={"attention_layers": list(c.attention_layers), "window_size": c.window_size})

    @contextmanager
    def core_hooks(self, layer_emitters: dict[nn.Module, tuple[int, Emit]]):
        from ..attention import emitter, has_emitters, register_emitters, unregister_emitters

        register_emitters(layer_emitters)
        try:
            for module in layer_emitters:
                module._attn = _neo_core(module, emitter)
            yield
        finally:
            unregister_emitters(layer_emitters)
            for module in layer_emitters:
                if not has_emitters(module):
                    module.__dict__.pop("_attn", None)


def _neo_core(module: nn.Module, emitter):
    """GPT-Neo's ``_attn`` (float32 scores, no 1/sqrt(d) scaling, causal/local mask) with hook sites."""

    def _attn(query, key, value, attention_mask=None):
        emit = emitter(module)
        emit("hook_rot_q", query.transpose(1, 2))
        emit("hook_rot_k", key.transpose(1, 2))
        scores = torch.matmul(query.to(torch.float32), key.to(torch.float32).transpose(-1, -2))
        q_len, k_len = query.size(-2), key.size(-2)
        causal = module.bias[:, :, k_len - q_len:k_len, :k_len]
        scores = torch.where(causal, scores, torch.tensor(torch.finfo(scores.dtype).min, dtype=scores.dtype,
                                                         device=scores.device))
        if attention_mask is not None:
            scores = scores + attention_mask
        scores = emit("hook_attn_scores", scores)
        pattern = nn.functional.softmax(scores, dim=-1).to(value.dtype)
        pattern = emit("hook_pattern", pattern)
        out = torch.matmul(module.attn_dropout(pattern), value)
        return out, pattern

    return _attn
