"""StableLM: Llama layout with LayerNorm, partial rotary, optional parallel residual."""
from __future__ import annotations

from .base import Adapter


class StableLmAdapter(Adapter):
    model_types = ("stablelm",)
    normalization = "layernorm"

    def parallel(self) -> bool:
        return bool(self.config.use_parallel_residual)

    def ln2(self, block):
        return None if self.parallel() else block.post_attention_layernorm
