"""Llama layout: Llama, Mistral, Qwen2 (separate q/k/v, gated MLP, RMSNorm) and Gemma."""
from __future__ import annotations

import torch
from torch import nn

from .base import Adapter


class LlamaAdapter(Adapter):
    model_types = ("llama", "mistral", "qwen2")


class GemmaAdapter(LlamaAdapter):
    """Gemma: RMSNorm weight stored as an offset from 1, embeddings scaled by sqrt(d_model)."""

    model_types = ("gemma",)

    def norm_weight(self, norm: nn.Module, param) -> torch.Tensor:
        return 1.0 + param(norm, "weight").float()

    def embed_scale(self) -> float:
        return float(self.config.hidden_size) ** 0.5
