"""GPT-2: learned positions, LayerNorm, fused Conv1D c_attn (q | k | v)."""
from __future__ import annotations

import torch

from .base import Adapter


class GPT2Adapter(Adapter):
    model_types = ("gpt2",)
    normalization = "layernorm"
    positional_embedding = "learned"
    gated_mlp = False

    @property
    def base(self):
        return self.hf.transformer

    def embed(self):
        return self.base.wte

    def pos_embed(self):
        return self.base.wpe

    def layers(self):
        return self.base.h

    def ln_final(self):
        return self.base.ln_f

    def ln1(self, block):
        return block.ln_1

    def ln2(self, block):
        return block.ln_2

    def attn(self, block):
        return block.attn

    def qkv_modules(self, attn):
        return None

    def fused_qkv(self, attn):
        return attn.c_attn

    def split_qkv(self, out: torch.Tensor):
        h = self.config.n_head
        d = self.config.n_embd
        q, k, v = out.split(d, dim=-1)
        return q.unflatten(-1, (h, d // h)), k.unflatten(-1, (h, d // h)), v.unflatten(-1, (h, d // h))

    def merge_qkv(self, q, k, v):
        return torch.cat([q.flatten(-2), k.flatten(-2), v.flatten(-2)], dim=-1)

    def o_proj(self, attn):
        return attn.c_proj

    def mlp_in(self, mlp):
        return mlp.c_fc

    def mlp_in_linear(self, mlp):
        return None

    def mlp_out(self, mlp):
        return mlp.c_proj

    def model_config(self):
        from dataclasses import replace

        cfg = super().model_config()
        return replace(cfg, d_mlp=int(self.config.n_inner or 4 * self.config.n_embd))
