"""Hook points: their names, and attaching user functions to the HF modules behind them.

A hook function is called as ``fn(tensor, hook)`` (TransformerLens's convention); ``hook.name``
is the hook point's name and ``hook.layer()`` its layer. Returning a tensor of the same shape
replaces the activation (patching, ablation, steering); returning None leaves it as it is.
PyTorch hooks are registered only on the modules behind the requested names, and always
removed when the attachment closes, also on exceptions.
"""
from __future__ import annotations

import re
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from ..errors import ArrakisValueError

if TYPE_CHECKING:
    from .hooked import HookedAutoModel

HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]

# Attention-internal sites computed by the hooked attention core.
CORE_SITES = ("attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_attn_scores", "attn.hook_pattern")
# Sites that report a value but cannot replace it.
OBSERVATIONAL = ("hook_scale",)

_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")


@dataclass
class HookPoint:
    """What a hook function receives as ``hook``: the hook point's name and a scratch dict."""

    name: str
    ctx: dict[str, Any] = field(default_factory=dict)

    def layer(self) -> int | None:
        m = _LAYER_RE.match(self.name)
        return int(m.group(1)) if m else None

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r})"


def block_hook_names(has_pos_embed: bool, parallel: bool, has_ln2: bool, gated: bool, n_layers: int) -> list[str]:
    """Every hook name a model of this shape has, in forward order."""
    names = ["hook_embed"] + (["hook_pos_embed"] if has_pos_embed else [])
    for layer in range(n_layers):
        b = f"blocks.{layer}."
        names += [b + "hook_resid_pre", b + "ln1.hook_scale", b + "ln1.hook_normalized",
                  b + "attn.hook_q", b + "attn.hook_k", b + "attn.hook_v", b + "attn.hook_rot_q",
                  b + "attn.hook_rot_k", b + "attn.hook_attn_scores", b + "attn.hook_pattern",
                  b + "attn.hook_z", b + "attn.hook_result", b + "hook_attn_out"]
        if not parallel:
            names.append(b + "hook_resid_mid")
        if has_ln2:
            names += [b + "ln2.hook_scale", b + "ln2.hook_normalized"]
        names.append(b + "mlp.hook_pre")
        if gated:
            names.append(b + "mlp.hook_pre_linear")
        names += [b + "mlp.hook_post", b + "hook_mlp_out", b + "hook_resid_post"]
    return names + ["ln_final.hook_scale", "ln_final.hook_normalized", "hook_logits"]


# ---- helpers over module call signatures ------------------------------------------------------

def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, new):
    return (new, *output[1:]) if isinstance(output, tuple) else new


def _input_of(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _with_input(args, kwargs, new):
    if args:
        return (new, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": new}


class HookAttachment:
    """Registers ``hooks`` (hook name -> functions) on the model's modules while open."""

    def __init__(self, model: "HookedAutoModel", hooks: dict[str, list[HookFn]]) -> None:
        self.model = model
        self.hooks = hooks
        self.points = {name: HookPoint(name) for name in hooks}
        self._stack = ExitStack()

    # -- emission -------------------------------------------------------------------------
    def emit(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        fns = self.hooks.get(name)
        if not fns:
            return tensor
        point = self.points[name]
        for fn in fns:
            new = fn(tensor, point)
            if new is None or new is tensor:
                continue
            if not isinstance(new, torch.Tensor):
                raise ArrakisValueError(
                    f"hook function on {name!r} returned {type(new).__name__}; return a tensor of shape "
                    f"{tuple(tensor.shape)} or None")
            if new.shape != tensor.shape:
                raise ArrakisValueError(
                    f"hook function on {name!r} returned shape {tuple(new.shape)}; the activation has shape "
                    f"{tuple(tensor.shape)}")
            if name.endswith(OBSERVATIONAL):
                raise ArrakisValueError(f"{name!r} reports the norm's scale and cannot be replaced; patch the "
                                        "norm's input or output instead")
            tensor = new
        return tensor

    def _wants(self, name: str) -> bool:
        return name in self.hooks

    # -- registration helpers -------------------------------------------------------------
    def _on_output(self, module: nn.Module, name: str, to_view=None, from_view=None) -> None:
        def hook(mod, args, output):
            t = _first(output)
            view = to_view(t) if to_view else t
            new = self.emit(name, view)
            if new is view:
                return None
            return _replace_first(output, from_view(new) if from_view else new)

        self._stack.callback(module.register_forward_hook(hook).remove)

    def _on_input(self, module: nn.Module, name: str, to_view=None, from_view=None) -> None:
        def hook(mod, args, kwargs):
            t = _input_of(args, kwargs)
            view = to_view(t) if to_view else t
            new = self.emit(name, view)
            if new is view:
                return None
            return _with_input(args, kwargs, from_view(new) if from_view else new)

        self._stack.callback(module.register_forward_pre_hook(hook, with_kwargs=True).remove)

    def _on_norm_scale(self, norm: nn.Module, name: str) -> None:
        adapter = self.model.adapter

        def hook(mod, args, kwargs):
            self.emit(name, adapter.norm_scale(mod, _input_of(args, kwargs)))

        self._stack.callback(norm.register_forward_pre_hook(hook, with_kwargs=True).remove)

    # -- attach -------------------------------------------------------------------------------
    def __enter__(self) -> "HookAttachment":
        try:
            self._attach()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _attach(self) -> None:
        a = self.model.adapter
        if self._wants("hook_embed"):
            self._on_output(a.embed(), "hook_embed")
        if self._wants("hook_pos_embed"):
            self._on_output(a.pos_embed(), "hook_pos_embed")
        core: dict[nn.Module, tuple[int, Callable]] = {}
        for layer, block in enumerate(a.layers()):
            prefix = f"blocks.{layer}."
            if any(n.startswith(prefix) for n in self.hooks):
                self._attach_block(layer, block, prefix, core)
        if self._wants("ln_final.hook_scale"):
            self._on_norm_scale(a.ln_final(), "ln_final.hook_scale")
        if self._wants("ln_final.hook_normalized"):
            self._on_output(a.ln_final(), "ln_final.hook_normalized")
        if self._wants("hook_logits"):
            self._on_output(a.unembed(), "hook_logits")
        if core:
            self._stack.enter_context(a.core_hooks(core))

    def _attach_block(self, layer: int, block: nn.Module, p: str, core: dict) -> None:
        a, cfg = self.model.adapter, self.model.cfg
        w = lambda suffix: self._wants(p + suffix)  # noqa: E731
        heads = lambda n: (lambda t: t.unflatten(-1, (n, cfg.d_head)))  # noqa: E731
        flat = lambda t: t.flatten(-2)  # noqa: E731
        attn = a.attn(block)
        ln2 = a.ln2(block)

        if w("hook_resid_pre"):
            self._on_input(block, p + "hook_resid_pre")
        if w("ln1.hook_scale"):
            self._on_norm_scale(a.ln1(block), p + "ln1.hook_scale")
        if w("ln1.hook_normalized"):
            self._on_output(a.ln1(block), p + "ln1.hook_normalized")
        if w("attn.hook_q") or w("attn.hook_k") or w("attn.hook_v"):
            separate = a.qkv_modules(attn)
            if separate is not None:
                for mod, n, suffix in zip(separate, (cfg.n_heads, cfg.n_kv_heads, cfg.n_kv_heads), "qkv"):
                    if w(f"attn.hook_{suffix}"):
                        self._on_output(mod, p + f"attn.hook_{suffix}", heads(n), flat)
            else:
                self._attach_fused_qkv(a.fused_qkv(attn), p)
        if any(w(s) for s in CORE_SITES):
            def emit_core(name, t, _p=p + "attn."):
                return self.emit(_p + name, t)
            core[a.attention_module_for_core(attn)] = (layer, emit_core)
        if w("attn.hook_z"):
            self._on_input(a.o_proj(attn), p + "attn.hook_z", heads(cfg.n_heads), flat)
        if w("attn.hook_result"):
            self._attach_result(a.o_proj(attn), p + "attn.hook_result")
        if w("hook_attn_out"):
            self._on_output(attn, p + "hook_attn_out")
        if w("hook_resid_mid"):
            self._attach_resid_mid(block, ln2, p + "hook_resid_mid")
        if ln2 is not None and w("ln2.hook_scale"):
            self._on_norm_scale(ln2, p + "ln2.hook_scale")
        if ln2 is not None and w("ln2.hook_normalized"):
            self._on_output(ln2, p + "ln2.hook_normalized")
        mlp = a.mlp(block)
        fused = a.mlp_fused_gate_up(mlp)
        if fused is not None and (w("mlp.hook_pre") or w("mlp.hook_pre_linear")):
            self._attach_fused_gate_up(fused, p)
        else:
            if w("mlp.hook_pre"):
                self._on_output(a.mlp_in(mlp), p + "mlp.hook_pre")
            if w("mlp.hook_pre_linear"):
                self._on_output(a.mlp_in_linear(mlp), p + "mlp.hook_pre_linear")
        if w("mlp.hook_post"):
            self._on_input(a.mlp_out(mlp), p + "mlp.hook_post")
        if w("hook_mlp_out"):
            self._on_output(mlp, p + "hook_mlp_out")
        if w("hook_resid_post"):
            self._on_output(block, p + "hook_resid_post")

    def _attach_fused_qkv(self, module: nn.Module, p: str) -> None:
        a = self.model.adapter

        def hook(mod, args, output):
            q, k, v = a.split_qkv(output)
            new = [self.emit(p + f"attn.hook_{s}", t) for s, t in zip("qkv", (q, k, v))]
            if all(n is o for n, o in zip(new, (q, k, v))):
                return None
            return a.merge_qkv(*new)

        self._stack.callback(module.register_forward_hook(hook).remove)

    def _attach_fused_gate_up(self, module: nn.Module, p: str) -> None:
        def hook(mod, args, output):
            gate, up = output.chunk(2, dim=-1)
            new_gate = self.emit(p + "mlp.hook_pre", gate)
            new_up = self.emit(p + "mlp.hook_pre_linear", up)
            if new_gate is gate and new_up is up:
                return None
            return torch.cat([new_gate, new_up], dim=-1)

        self._stack.callback(module.register_forward_hook(hook).remove)

    def _attach_result(self, o_proj: nn.Module, name: str) -> None:
        """Per-head outputs [batch, pos, head, d_model] = z_h @ W_O[h]; replacing them sets the output to their sum + b_O."""
        model = self.model
        layer = HookPoint(name).layer()

        def hook(mod, args, output):
            result = model.head_results(layer, args[0].unflatten(-1, (model.cfg.n_heads, model.cfg.d_head)))
            new = self.emit(name, result)
            if new is result:
                return None
            b = model.linear_params(mod)[1]
            out = new.sum(-2)
            return out + b.to(out.dtype) if b is not None else out

        self._stack.callback(o_proj.register_forward_hook(hook).remove)

    def _attach_resid_mid(self, block: nn.Module, ln2: nn.Module, name: str) -> None:
        """resid_mid is ln2's input; a replacement also shifts the block's output by the same delta,
        because the block adds its MLP output to that residual."""
        delta: list[torch.Tensor] = []

        def pre(mod, args, kwargs):
            t = _input_of(args, kwargs)
            new = self.emit(name, t)
            if new is t:
                return None
            delta.append(new - t)
            return _with_input(args, kwargs, new)

        def post(mod, args, output):
            if not delta:
                return None
            d = delta.pop()
            return _replace_first(output, _first(output) + d)

        self._stack.callback(ln2.register_forward_pre_hook(pre, with_kwargs=True).remove)
        self._stack.callback(block.register_forward_hook(post).remove)
