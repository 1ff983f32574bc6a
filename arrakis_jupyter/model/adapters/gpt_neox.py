"""GPT-NeoX (Pythia): fused query_key_value interleaved per head, parallel residual by default."""
from __future__ import annotations

import torch

from .base import Adapter


class GPTNeoXAdapter(Adapter):
    model_types = ("gpt_neox",)
    normalization = "layernorm"
    gated_mlp = False

    @property
    def base(self):
        return self.hf.gpt_neox

    def embed(self):
        return self.base.embed_in

    def ln_final(self):
        return self.base.final_layer_norm

    def attn(self, block):
        return block.attention

    def parallel(self) -> bool:
        return bool(self.config.use_parallel_residual)

    def qkv_modules(self, attn):
        return None

    def fused_qkv(self, attn):
        return attn.query_key_value

    def split_qkv(self, out: torch.Tensor):
        h = self.config.num_attention_heads
        dh = self.config.hidden_size // h
        per_head = out.unflatten(-1, (h, 3 * dh))  # [..., H, 3*dh], q|k|v within each head
        return per_head[..., :dh], per_head[..., dh:2 * dh], per_head[..., 2 * dh:]

    def merge_qkv(self, q, k, v):
        return torch.cat([q, k, v], dim=-1).flatten(-2)

    def o_proj(self, attn):
        return attn.dense

    def mlp_in(self, mlp):
        return mlp.dense_h_to_4h

    def mlp_in_linear(self, mlp):
        return None

    def mlp_out(self, mlp):
        return mlp.dense_4h_to_h
