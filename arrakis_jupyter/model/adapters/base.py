"""The adapter contract: where one HF family keeps each part of the transformer.

An adapter maps a family's module paths onto the canonical parts the hooks attach to, and
exposes the weights in canonical form. Defaults describe the Llama layout
(``model.layers[i].self_attn.q_proj`` ...); families override only what differs.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from ..config import ModelConfig

# A function the attention core calls at each internal hook site: (name, tensor) -> tensor
Emit = Callable[[str, torch.Tensor], torch.Tensor]


def linear_params(module: nn.Module, param: Callable[[nn.Module, str], torch.Tensor | None]):
    """(W [d_in, d_out], b [d_out] or None) of an nn.Linear or a GPT-2 style Conv1D."""
    w = param(module, "weight")
    b = param(module, "bias")
    if isinstance(module, nn.Linear):
        w = w.T
    return w, b


class Adapter:
    """Module paths and weight layout of one HF architecture family (Llama layout by default)."""

    model_types: tuple[str, ...] = ()
    normalization = "rmsnorm"
    positional_embedding = "rotary"
    gated_mlp = True

    def __init__(self, hf_model: nn.Module) -> None:
        self.hf = hf_model
        self.config = hf_model.config

    # ---- modules -------------------------------------------------------------------------
    @property
    def base(self) -> nn.Module:
        return self.hf.model

    def embed(self) -> nn.Module:
        return self.base.embed_tokens

    def pos_embed(self) -> nn.Module | None:
        return None

    def layers(self) -> nn.ModuleList:
        return self.base.layers

    def ln_final(self) -> nn.Module:
        return self.base.norm

    def unembed(self) -> nn.Module:
        return self.hf.get_output_embeddings()

    def ln1(self, block: nn.Module) -> nn.Module:
        return block.input_layernorm

    def ln2(self, block: nn.Module) -> nn.Module | None:
        """The norm before the MLP; None where the MLP reads ln1's output (parallel blocks)."""
        return block.post_attention_layernorm

    def attn(self, block: nn.Module) -> nn.Module:
        return block.self_attn

    def mlp(self, block: nn.Module) -> nn.Module:
        return block.mlp

    def parallel(self) -> bool:
        return False

    # ---- attention projections ---------------------------------------------------------
    def qkv_modules(self, attn: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module] | None:
        """Separate q, k, v projections, or None where one fused module computes all three."""
        return attn.q_proj, attn.k_proj, attn.v_proj

    def fused_qkv(self, attn: nn.Module) -> nn.Module | None:
        return None

    def split_qkv(self, out: torch.Tensor):
        """Split a fused projection's output [..., d_fused] into q [..., H, dh], k, v [..., KV, dh]."""
        raise TypeError(f"{type(self).__name__} has separate q/k/v projections")

    def merge_qkv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Inverse of split_qkv."""
        raise TypeError(f"{type(self).__name__} has separate q/k/v projections")

    def o_proj(self, attn: nn.Module) -> nn.Module:
        return attn.o_proj

    def attention_module_for_core(self, attn: nn.Module) -> nn.Module:
        """The module the HF attention interface receives as ``module``."""
        return attn

    # ---- MLP -------------------------------------------------------------------------------
    def mlp_in(self, mlp: nn.Module) -> nn.Module:
        """Module whose output is ``mlp.hook_pre`` (the gate in gated MLPs)."""
        return mlp.gate_proj

    def mlp_in_linear(self, mlp: nn.Module) -> nn.Module | None:
        """Module whose output is ``mlp.hook_pre_linear`` (the up projection of gated MLPs)."""
        return mlp.up_proj

    def mlp_fused_gate_up(self, mlp: nn.Module) -> nn.Module | None:
        """A module computing [gate | up] in one output, or None."""
        return None

    def mlp_out(self, mlp: nn.Module) -> nn.Module:
        """Module whose input is ``mlp.hook_post`` and output is the MLP's output."""
        return mlp.down_proj

    # ---- norms -----------------------------------------------------------------------------
    def norm_eps(self, norm: nn.Module) -> float:
        for attr in ("variance_epsilon", "eps"):
            if hasattr(norm, attr):
                return float(getattr(norm, attr))
        raise AttributeError(f"cannot find the epsilon of {type(norm).__name__}")

    def norm_weight(self, norm: nn.Module, param) -> torch.Tensor:
        """The multiplicative weight the norm applies after normalising."""
        return param(norm, "weight")

    def norm_scale(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The divisor the norm applies to its input x: [..., 1], computed in float32 as HF does."""
        xf = x.float()
        if self.normalization == "layernorm":
            var = xf.var(-1, keepdim=True, unbiased=False)
        else:
            var = xf.pow(2).mean(-1, keepdim=True)
        return (var + self.norm_eps(norm)).sqrt()

    # ---- embeddings ------------------------------------------------------------------------
    def embed_scale(self) -> float:
        """Factor the embedding module multiplies its table rows by (Gemma: sqrt(d_model))."""
        return 1.0

    # ---- attention core ----------------------------------------------------------------------
    @contextmanager
    def core_hooks(self, layer_emitters: dict[nn.Module, tuple[int, Emit]]) -> Iterator[None]:
        """Route attention through the hooked core for the duration (HF attention interface)."""
        from ..attention import interface_core

        with interface_core(self.hf, layer_emitters):
            yield

    # ---- config ----------------------------------------------------------------------------
    def n_ctx(self) -> int:
        c = self.config
        for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
            if getattr(c, attr, None):
                return int(getattr(c, attr))
        return 2048

    def act_fn(self) -> str:
        c = self.config
        return str(getattr(c, "hidden_act", None) or getattr(c, "hidden_activation", None)
                   or getattr(c, "activation_function", "unknown"))

    def model_config(self) -> ModelConfig:
        c = self.config
        n_heads = int(c.num_attention_heads)
        d_model = int(c.hidden_size)
        d_head = int(getattr(c, "head_dim", None) or d_model // n_heads)
        return ModelConfig(
            architecture=type(self.hf).__name__,
            n_layers=len(self.layers()),
            n_heads=n_heads,
            n_kv_heads=int(getattr(c, "num_key_value_heads", None) or n_heads),
            d_model=d_model,
            d_head=d_head,
            d_mlp=int(getattr(c, "intermediate_size", None) or 4 * d_model),
            d_vocab=int(c.vocab_size),
            n_ctx=self.n_ctx(),
            parallel_attn_mlp=self.parallel(),
            positional_embedding=self.positional_embedding,
            normalization=self.normalization,
            gated_mlp=self.gated_mlp,
            act_fn=self.act_fn(),
            tied_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
            hf_model_type=str(c.model_type),
        )
