"""ActivationCache: the activations of one run, by hook name, with residual-stream helpers.

Norm conventions (stated once, used everywhere):
- ``apply_ln_to_stack`` divides each component by the scale the norm computed in the real
  forward pass (``ln_final.hook_scale`` or ``blocks.{L}.ln1.hook_scale``), centres it first for
  LayerNorm, and multiplies by the norm's weight; the norm's bias belongs to no component and is
  left out. The components of a decomposition therefore stay additive: their sum plus the bias
  term equals the normalised residual.
- ``accumulated_resid(apply_ln=True)`` is the logit-lens convention: each layer's residual is
  normalised with its own statistics, as if it were the final residual (TransformerLens 4 does
  the same).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Callable, Iterator

import torch

from ..errors import ArrakisValueError, HookNameError, check_index, close_matches

if TYPE_CHECKING:
    from .hooked import HookedAutoModel

# TransformerLens-style short names -> (sub-module path, hook)
_SHORT = {
    "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
    "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "z": "attn.hook_z",
    "rot_q": "attn.hook_rot_q", "rot_k": "attn.hook_rot_k", "result": "attn.hook_result",
    "attn_scores": "attn.hook_attn_scores", "pattern": "attn.hook_pattern", "attn": "attn.hook_pattern",
    "pre": "mlp.hook_pre", "pre_linear": "mlp.hook_pre_linear", "post": "mlp.hook_post",
}


def act_name(name: str, layer: int | None = None, sub: str | None = None) -> str:
    """Full hook name from a short one: ``act_name("pattern", 3) == "blocks.3.attn.hook_pattern"``;
    ``act_name("scale", 2, "ln1")``; ``act_name("embed") == "hook_embed"``."""
    if layer is None:
        if name in ("embed", "pos_embed", "logits"):
            return f"hook_{name}"
        if name in ("scale", "normalized"):
            return f"ln_final.hook_{name}"
        return name
    if name in ("scale", "normalized"):
        return f"blocks.{layer}.{sub or 'ln1'}.hook_{name}"
    if name not in _SHORT:
        raise HookNameError(f"unknown short hook name {name!r}; accepted: {', '.join(sorted(_SHORT))}, scale, "
                            "normalized" + close_matches(name, _SHORT))
    return f"blocks.{layer}.{_SHORT[name]}"


class LazyActivation:
    """An activation computed on its first read (per-head results from the cached ``hook_z``)."""

    def __init__(self, compute: Callable[[], torch.Tensor]) -> None:
        self.compute = compute


class ActivationCache(Mapping):
    """Dict-like ``hook name -> tensor`` (shapes as in the hook list), plus analysis helpers.

    ``cache["blocks.3.attn.hook_pattern"]`` or TransformerLens's ``cache["pattern", 3]``.
    """

    def __init__(self, activations: dict[str, torch.Tensor], model: "HookedAutoModel") -> None:
        self._acts = activations
        self.model = model

    # ---- mapping -------------------------------------------------------------------------
    def _key(self, key) -> str:
        if isinstance(key, tuple):
            return act_name(*key)
        return key

    def __getitem__(self, key) -> torch.Tensor:
        name = self._key(key)
        if name in self._acts:
            value = self._acts[name]
            if isinstance(value, LazyActivation):
                value = self._acts[name] = value.compute()
            return value
        if name in self.model.hook_name_set:
            raise HookNameError(f"{name!r} was not cached in this run; include it in names_filter")
        raise HookNameError(f"{name!r} is not a hook point of this model." + close_matches(name, self._acts))

    def __contains__(self, key) -> bool:
        return self._key(key) in self._acts

    def __iter__(self) -> Iterator[str]:
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations: {', '.join(list(self._acts)[:4])}{', ...' if len(self) > 4 else ''})"

    def to(self, device: str | torch.device) -> "ActivationCache":
        """A copy of the cache with every tensor on ``device``."""
        return ActivationCache({k: v.to(device) for k, v in self.items()}, self.model)

    def remove_batch_dim(self) -> "ActivationCache":
        """A copy with the batch dimension (of size 1) dropped."""
        if any(v.shape[0] != 1 for v in self.values()):
            raise ArrakisValueError("remove_batch_dim needs a batch of size 1")
        return ActivationCache({k: v[0] for k, v in self.items()}, self.model)

    # ---- residual stream -------------------------------------------------------------------
    def _layer_bound(self, layer: int | None) -> int:
        n = self.model.cfg.n_layers
        if layer is None:
            return n
        return check_index(layer, n + 1, "layer")

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                          return_labels: bool = False):
        """Residual stream before each layer < ``layer`` (all layers, plus the final residual, by default).

        Returns [component, batch, pos, d_model] (and labels ``"0_pre"``, ``"0_mid"``, ..., ``"final_post"``).
        ``apply_ln`` normalises each with its own statistics (logit-lens convention, see module doc).
        """
        n = self.model.cfg.n_layers
        upto = self._layer_bound(layer)
        parts, labels = [], []
        for l in range(upto):
            parts.append(self[f"blocks.{l}.hook_resid_pre"]); labels.append(f"{l}_pre")
            if incl_mid and f"blocks.{l}.hook_resid_mid" in self.model.hook_name_set:
                parts.append(self[f"blocks.{l}.hook_resid_mid"]); labels.append(f"{l}_mid")
        if upto == n:
            parts.append(self[f"blocks.{n - 1}.hook_resid_post"]); labels.append("final_post")
        stack = torch.stack(parts)
        if apply_ln:
            stack = self.model.normalize_final(stack)
        return (stack, labels) if return_labels else stack

    def decompose_resid(self, layer: int | None = None, mode: str = "all", apply_ln: bool = False,
                        incl_embeds: bool = True, return_labels: bool = False):
        """Components that sum to the residual stream before ``layer`` (the final residual by default).

        Components: ``embed``, ``pos_embed`` (learned positions only), then ``{l}_attn_out`` and
        ``{l}_mlp_out`` for each earlier layer. Returns [component, batch, pos, d_model] (and labels).
        ``mode``: ``"all"``, ``"attn"`` or ``"mlp"``.
        """
        if mode not in ("all", "attn", "mlp"):
            raise ArrakisValueError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
        upto = self._layer_bound(layer)
        parts, labels = [], []
        if incl_embeds:
            parts.append(self["hook_embed"]); labels.append("embed")
            if "hook_pos_embed" in self.model.hook_name_set:
                parts.append(self["hook_pos_embed"]); labels.append("pos_embed")
        for l in range(upto):
            if mode in ("all", "attn"):
                parts.append(self[f"blocks.{l}.hook_attn_out"]); labels.append(f"{l}_attn_out")
            if mode in ("all", "mlp"):
                parts.append(self[f"blocks.{l}.hook_mlp_out"]); labels.append(f"{l}_mlp_out")
        stack = torch.stack(torch.broadcast_tensors(*parts))  # pos_embed is [1, pos, d_model]
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer)
        return (stack, labels) if return_labels else stack

    def stack_head_results(self, layer: int | None = None, apply_ln: bool = False, return_labels: bool = False):
        """Per-head outputs of every head in layers < ``layer``: [layer*head, batch, pos, d_model], labels ``L3H5``.

        Uses ``attn.hook_result`` where cached, else computes it from ``attn.hook_z`` and W_O (exact).
        The output bias b_O is not part of any head.
        """
        cfg = self.model.cfg
        upto = self._layer_bound(layer)
        parts, labels = [], []
        for l in range(upto):
            name = f"blocks.{l}.attn.hook_result"
            if name in self._acts:
                result = self[name]
            else:
                result = self.model.head_results(l, self[f"blocks.{l}.attn.hook_z"])
            parts.append(result.movedim(-2, 0))
            labels += [f"L{l}H{h}" for h in range(cfg.n_heads)]
        stack = torch.cat(parts)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer)
        return (stack, labels) if return_labels else stack

    def apply_ln_to_stack(self, stack: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Apply the norm read at ``layer`` (``ln1`` of that block; the final norm when None or n_layers)
        to each component of ``stack`` [..., batch, pos, d_model] linearly: centre (LayerNorm), divide by
        the scale of the real forward pass, multiply by the norm's weight; no bias (see module doc)."""
        n = self.model.cfg.n_layers
        if layer is None or layer == n:
            scale_name, norm = "ln_final.hook_scale", self.model.adapter.ln_final()
        else:
            check_index(layer, n, "layer")
            scale_name, norm = f"blocks.{layer}.ln1.hook_scale", self.model.adapter.ln1(self.model.adapter.layers()[layer])
        scale = self[scale_name]
        return self.model.apply_norm_linear(norm, stack, scale)

    def logit_attrs(self, stack: torch.Tensor, tokens, incorrect_tokens=None) -> torch.Tensor:
        """Each component's direct contribution to the logit of ``tokens`` (minus ``incorrect_tokens``).

        ``stack`` [..., batch, pos, d_model] should already be normalised (``apply_ln=True``).
        ``tokens``: an int id, a string (one token), or a tensor of ids [batch] or [batch, pos].
        Returns [..., batch, pos].
        """
        direction = self.model.tokens_to_residual_directions(tokens)
        if incorrect_tokens is not None:
            direction = direction - self.model.tokens_to_residual_directions(incorrect_tokens)
        direction = direction.to(stack.device, stack.dtype)
        if direction.ndim == 1:
            return stack @ direction
        if direction.ndim == 2:  # [batch, d_model]
            direction = direction[:, None, :]
        return (stack * direction).sum(-1)
