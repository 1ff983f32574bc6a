"""Phi-3: fused qkv_proj (q | k | v) and fused gate_up_proj (gate | up)."""
from __future__ import annotations

import torch
from torch import nn

from .base import Adapter


class Phi3Adapter(Adapter):
    model_types = ("phi3",)

    def qkv_modules(self, attn):
        return None

    def fused_qkv(self, attn: nn.Module) -> nn.Module:
        return attn.qkv_proj

    def _sizes(self):
        c = self.config
        dh = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return c.num_attention_heads, c.num_key_value_heads, dh

    def split_qkv(self, out: torch.Tensor):
        h, kv, dh = self._sizes()
        q, k, v = out.split([h * dh, kv * dh, kv * dh], dim=-1)
        return q.unflatten(-1, (h, dh)), k.unflatten(-1, (kv, dh)), v.unflatten(-1, (kv, dh))

    def merge_qkv(self, q, k, v):
        return torch.cat([q.flatten(-2), k.flatten(-2), v.flatten(-2)], dim=-1)

    def mlp_in(self, mlp):
        return None

    def mlp_in_linear(self, mlp):
        return None

    def mlp_fused_gate_up(self, mlp: nn.Module) -> nn.Module:
        return mlp.gate_up_proj
