"""Model configuration: the canonical ``cfg`` of a hooked model, and Arrakis's ``HookedAutoConfig``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import transformers

from ..errors import ArrakisValueError, UnsupportedArchitectureError


@dataclass(frozen=True)
class ModelConfig:
    """Architecture facts every tool reads (TransformerLens's ``cfg`` names).

    ``positional_embedding`` is ``"learned"`` (absolute position embeddings added to the residual
    stream) or ``"rotary"``; ``normalization`` is ``"layernorm"`` or ``"rmsnorm"``.
    """

    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    parallel_attn_mlp: bool
    positional_embedding: str
    normalization: str
    gated_mlp: bool
    act_fn: str
    tied_embeddings: bool
    default_prepend_bos: bool = False
    hf_model_type: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads


# Arrakis name -> (HF config class name, whether it has grouped-query attention)
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "gpt2": ("GPT2Config", False),
    "gpt-neo": ("GPTNeoConfig", False),
    "gpt-neox": ("GPTNeoXConfig", False),
    "llama": ("LlamaConfig", True),
    "gemma": ("GemmaConfig", True),
    "phi3": ("Phi3Config", True),
    "qwen2": ("Qwen2Config", True),
    "mistral": ("MistralConfig", True),
    "stable-lm": ("StableLmConfig", True),
}


class HookedAutoConfig:
    """Arrakis-compatible description of a random-init model of a supported architecture.

    ``HookedAutoConfig(name="llama", vocab_size=..., hidden_size=..., intermediate_size=...,
    num_hidden_layers=..., num_attention_heads=..., num_key_value_heads=...)``; any further keyword
    goes to the Hugging Face config class unchanged. ``to_hf_config()`` builds that HF config.
    """

    def __init__(
        self,
        name: str = "llama",
        vocab_size: int = 32000,
        hidden_size: int = 64,
        intermediate_size: int = 256,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        max_position_embeddings: int = 2048,
        **hf_kwargs: Any,
    ) -> None:
        key = name.lower().replace("_", "-")
        key = {"stablelm": "stable-lm", "gptneox": "gpt-neox", "gptneo": "gpt-neo"}.get(key, key)
        if key not in ARCHITECTURES:
            raise UnsupportedArchitectureError(
                f"unsupported architecture name {name!r}; accepted names: {', '.join(ARCHITECTURES)}"
            )
        if hidden_size % num_attention_heads:
            raise ArrakisValueError(
                f"hidden_size {hidden_size} must be divisible by num_attention_heads {num_attention_heads}"
            )
        kv = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        has_gqa = ARCHITECTURES[key][1]
        if kv != num_attention_heads and not has_gqa:
            raise ArrakisValueError(
                f"{key} has no grouped-query attention: num_key_value_heads must equal "
                f"num_attention_heads ({num_attention_heads}), got {kv}"
            )
        if num_attention_heads % kv:
            raise ArrakisValueError(
                f"num_attention_heads {num_attention_heads} must be a multiple of num_key_value_heads {kv}"
            )
        self.name = key
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = kv
        self.max_position_embeddings = max_position_embeddings
        self.hf_kwargs = hf_kwargs

    def __repr__(self) -> str:
        return (
            f"HookedAutoConfig(name={self.name!r}, vocab_size={self.vocab_size}, hidden_size={self.hidden_size}, "
            f"intermediate_size={self.intermediate_size}, num_hidden_layers={self.num_hidden_layers}, "
            f"num_attention_heads={self.num_attention_heads}, num_key_value_heads={self.num_key_value_heads})"
        )

    def to_hf_config(self) -> transformers.PretrainedConfig:
        """The Hugging Face config of this architecture with these sizes."""
        n, h, heads = self.num_hidden_layers, self.hidden_size, self.num_attention_heads
        common: dict[str, Any] = dict(vocab_size=self.vocab_size, bos_token_id=None, eos_token_id=None, pad_token_id=None)
        if self.name == "gpt2":
            kw = dict(n_embd=h, n_layer=n, n_head=heads, n_inner=self.intermediate_size,
                      n_positions=self.max_position_embeddings)
        elif self.name == "gpt-neo":
            kw = dict(hidden_size=h, num_layers=n, num_heads=heads, intermediate_size=self.intermediate_size,
                      max_position_embeddings=self.max_position_embeddings,
                      attention_types=[[["global", "local"], n // 2]] if n % 2 == 0 else [[["global"], n]])
        else:
            kw = dict(hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                      intermediate_size=self.intermediate_size, max_position_embeddings=self.max_position_embeddings)
            if self.name != "gpt-neox":
                kw["num_key_value_heads"] = self.num_key_value_heads
            if self.name in ("gemma", "llama", "mistral", "qwen2"):
                kw["head_dim"] = h // heads
        kw.update(common)
        kw.update(self.hf_kwargs)
        cls = getattr(transformers, ARCHITECTURES[self.name][0])
        return cls(**kw)
