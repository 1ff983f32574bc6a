"""``composer``: Q-, K- and V-composition between attention heads, and path patching between two heads.

Composition (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"), in the
row-vector convention of the canonical weights (x @ W) and TransformerLens's orientation: head A
(earlier layer) writes ``x @ W_OV^A`` with ``W_OV^A = W_V^A @ W_O^A`` [d_model, d_model]; head B
(later layer) reads through ``W_QK^B = W_Q^B @ W_K^B.T`` and ``W_OV^B``. The score of a product
``W_OV^A @ M`` is ``||W_OV^A @ M||_F / (||W_OV^A||_F ||M||_F)`` with

- Q-composition: ``M = W_QK^B`` (A's output feeds B's queries),
- K-composition: ``M = W_QK^B.T`` (A's output feeds B's keys),
- V-composition: ``M = W_OV^B`` (A's output feeds B's values).

Grouped-query attention: query head h uses key/value head ``h // cfg.n_rep``. Biases are left out;
the norm in front of B is left out too unless ``fold_norm=True`` (which scales B's reading weights
W_Q, W_K, W_V by its ln1 weight; LayerNorm's centring and the input-dependent scale stay out).
"""
from __future__ import annotations

import re
import warnings
from typing import Callable

import pandas as pd
import torch

from ..errors import ArrakisValueError
from ..model import HookedAutoModel
from .base import BaseInterpretabilityTool, LabelledTensor, head_label
from .registry import register_tool

KINDS = ("q", "k", "v")
Head = tuple[int, int] | str


def _r(m: torch.Tensor) -> torch.Tensor:
    """R of the reduced QR of m [..., n, d] (n >= d): ||m @ X||_F = ||R @ X||_F for every X."""
    return torch.linalg.qr(m, mode="r")[1]


@register_tool("composer")
class AttentionComposer(BaseInterpretabilityTool):
    """Composition scores between heads, and attention path patching (Arrakis's ``composer`` tool)."""

    # ---- weights --------------------------------------------------------------------------------
    def _weights(self, fold_norm: bool) -> dict[str, torch.Tensor]:
        """Float32 Q, K, V [layer, head, d_model, d_head] (kv heads expanded to the query heads that use
        them), O [layer, head, d_head, d_model]."""
        m, cfg = self.model, self.model.cfg
        w = {"Q": m.W_Q.float(), "K": m.W_K.float().repeat_interleave(cfg.n_rep, dim=1),
             "V": m.W_V.float().repeat_interleave(cfg.n_rep, dim=1), "O": m.W_O.float()}
        if fold_norm:
            a = m.adapter
            ones = torch.ones(cfg.d_model)
            ln = [a.norm_weight(a.ln1(b), m.param) for b in a.layers()]
            scale = torch.stack([ones if x is None else x.detach().float().cpu() for x in ln])  # [layer, d_model]
            for key in "QKV":
                w[key] = w[key] * scale[:, None, :, None].to(w[key].device)
        return w

    @staticmethod
    def _reduced(w: dict[str, torch.Tensor], kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Small factors with the norms of the full products: left [layer, head, d_head, d_model] for
        W_OV^A, right [layer, head, d_model, d_head] for B's matrix M (see the module docstring)."""
        left = _r(w["V"]) @ w["O"]                                      # ||V O X|| = ||R_V O X||
        if kind == "q":
            right = w["Q"] @ _r(w["K"]).transpose(-1, -2)               # Q K^T
        elif kind == "k":
            right = w["K"] @ _r(w["Q"]).transpose(-1, -2)               # K Q^T
        else:
            right = w["V"] @ _r(w["O"].transpose(-1, -2)).transpose(-1, -2)  # V O
        return left, right

    def composition_scores(self, kind: str = "q", fold_norm: bool = False) -> LabelledTensor:
        """``kind``-composition scores of every head A into every head B of a later layer.

        Returns dims ``("layer_a", "head_a", "layer_b", "head_b")`` [layer, head, layer, head]; entries
        with ``layer_b <= layer_a`` (no path from A to B) are NaN. Each score is in [0, 1].
        """
        kind = _kind(kind)
        cfg = self.model.cfg
        with torch.no_grad():
            left, right = self._reduced(self._weights(fold_norm), kind)
            lnorm, rnorm = left.norm(dim=(-2, -1)), right.norm(dim=(-2, -1))   # [layer, head]
            out = torch.full((cfg.n_layers, cfg.n_heads, cfg.n_layers, cfg.n_heads), float("nan"))
            for la in range(cfg.n_layers - 1):
                prod = torch.einsum("hdm,lgme->hlgde", left[la], right[la + 1:]).norm(dim=(-2, -1))
                out[la, :, la + 1:] = (prod / (lnorm[la][:, None, None] * rnorm[None, la + 1:])).cpu()
        return LabelledTensor(out, ("layer_a", "head_a", "layer_b", "head_b"), name=f"{kind}-composition")

    def top_compositions(self, kind: str = "q", k: int = 10, fold_norm: bool = False) -> pd.DataFrame:
        """The ``k`` strongest ``kind``-compositions: columns ``head_a, head_b, layer_a, head_idx_a,
        layer_b, head_idx_b, score``, sorted by score (highest first)."""
        scores = self.composition_scores(kind, fold_norm).values
        n_heads = scores.shape[1]
        flat = torch.nan_to_num(scores.flatten(), nan=-1.0)
        vals, idx = flat.topk(min(k, int((flat >= 0).sum())))
        rows = []
        for v, i in zip(vals.tolist(), idx.tolist()):
            a, b = divmod(i, scores.shape[2] * n_heads)
            (la, ha), (lb, hb) = divmod(a, n_heads), divmod(b, n_heads)
            rows.append(dict(head_a=head_label(la, ha), head_b=head_label(lb, hb), layer_a=la, head_idx_a=ha,
                             layer_b=lb, head_idx_b=hb, score=v))
        return pd.DataFrame(rows)

    def head_composition(self, head1: Head, head2: Head, alpha: float | None = None,
                         fold_norm: bool = False) -> pd.Series:
        """Q-, K- and V-composition of ``head1`` (writer) into ``head2`` (reader): a Series indexed q, k, v.

        Heads are ``(layer, head)`` or ``"L3H5"``. If head2 is not in a later layer, no path exists:
        the formula's values are still returned, with a warning. ``alpha`` is accepted only for
        Arrakis's signature (its head_composition blended weights) and is ignored, with a warning.
        """
        (l1, h1), (l2, h2) = self._head(head1, "head1"), self._head(head2, "head2")
        if alpha is not None:
            warnings.warn("head_composition ignores alpha: composition scores have no blend", stacklevel=2)
        if l2 <= l1:
            warnings.warn(f"{head_label(l2, h2)} is not in a later layer than {head_label(l1, h1)}: the output of "
                          "head1 cannot reach head2, so these scores describe no path in the model", stacklevel=2)
        out = {}
        with torch.no_grad():
            w = self._weights(fold_norm)
            for kind in KINDS:
                left, right = self._reduced(w, kind)
                a, b = left[l1, h1], right[l2, h2]
                out[kind] = float((a @ b).norm() / (a.norm() * b.norm()))
        return pd.Series(out, name=f"{head_label(l1, h1)}->{head_label(l2, h2)}")

    def _head(self, head: Head, what: str) -> tuple[int, int]:
        if isinstance(head, str):
            m = re.fullmatch(r"L(-?\d+)H(-?\d+)", head.strip())
            if not m:
                raise ArrakisValueError(f"{what} must be (layer, head) or a label like 'L3H5', got {head!r}")
            head = (int(m.group(1)), int(m.group(2)))
        if not (isinstance(head, (tuple, list)) and len(head) == 2):
            raise ArrakisValueError(f"{what} must be (layer, head) or a label like 'L3H5', got {head!r}")
        return self.check_layer(head[0]), self.check_head(head[1])

    # ---- path patching --------------------------------------------------------------------------
    def attention_path_patching(self, input_ids, src_head: Head, dest_head: Head, corrupted_ids=None,
                                metric: Callable[[torch.Tensor], torch.Tensor] | None = None,
                                component: str = "q", freeze_norm: bool = False) -> float:
        """Effect on ``metric`` of patching only the path src head -> ``component`` input of dest head.

        Base run: ``corrupted_ids`` [batch, pos] (same shape as ``input_ids``). Only dest's ``component``
        ("q", "k", "v" or several, e.g. "qkv") is recomputed from the residual
        ``resid_pre[dest layer] - src_out(corrupted) + src_out(clean)``, where src_out = z_src @ W_O[src]
        (no bias), passed through dest's ln1 (recomputed; ``freeze_norm=True`` keeps the base run's
        scale). Dest's new z then flows through the rest of the model as usual; every other head,
        including those sharing dest's key/value head, keeps its base input. Without ``corrupted_ids``
        the base run is ``input_ids`` and src's output is removed from the path (zero path ablation).

        ``metric(logits [batch, pos, d_vocab]) -> scalar``; default: mean log-probability of
        ``input_ids``' next tokens. Returns metric(patched) - metric(base). If dest is not in a later
        layer than src there is no path: returns 0.0 with a warning.
        """
        (ls, hs), (ld, hd) = self._head(src_head, "src_head"), self._head(dest_head, "dest_head")
        comps = _components(component)
        clean = self.tokens(input_ids)
        if corrupted_ids is not None and self.tokens(corrupted_ids).shape != clean.shape:
            raise ArrakisValueError(f"corrupted_ids has shape {tuple(self.tokens(corrupted_ids).shape)}; "
                                    f"input_ids has {tuple(clean.shape)}")
        base = input_ids if corrupted_ids is None else corrupted_ids  # as given: text keeps its padding mask
        metric = metric or (lambda logits: -HookedAutoModel.loss(logits, clean))
        if ld <= ls:
            warnings.warn(f"{head_label(ld, hd)} is not in a later layer than {head_label(ls, hs)}: no path, "
                          "the effect is 0", stacklevel=2)
            return 0.0
        m, cfg = self.model, self.model.cfg
        z_src, pre, scale_name = f"blocks.{ls}.attn.hook_z", f"blocks.{ld}.", f"blocks.{ld}.ln1.hook_scale"
        with torch.no_grad():
            base_logits, cache = m.run_with_cache(base, names_filter=[z_src, scale_name])
            z_new = torch.zeros_like(cache[z_src])
            if corrupted_ids is not None:
                z_new = m.run_with_cache(input_ids, names_filter=z_src, return_type=None)[1][z_src]
            delta = (m.head_results(ls, z_new) - m.head_results(ls, cache[z_src]))[:, :, hs]  # [batch, pos, d_model]
            # 1. dest layer's q, k, v as computed from the residual with src's output swapped
            new_qkv: dict[str, torch.Tensor] = {}

            def shift_resid(t, hook):
                return t + delta.to(t.dtype)

            def shift_normalized(t, hook):
                norm = m.adapter.ln1(m.adapter.layers()[ld])
                return t + m.apply_norm_linear(norm, delta, cache[scale_name]).to(t.dtype)

            def save(t, hook):
                new_qkv[hook.name] = t.clone()

            shift = ("ln1.hook_normalized", shift_normalized) if freeze_norm else ("hook_resid_pre", shift_resid)
            m.run_with_hooks(base, [(pre + shift[0], shift[1])] + [(pre + f"attn.hook_{c}", save) for c in comps],
                             return_type=None)
            # 2. dest's z with the new component(s); its kv head may be shared, so keep only dest's z
            def put(t, hook):
                t = t.clone()
                idx = hd if hook.name.endswith("hook_q") else hd // cfg.n_rep
                t[:, :, idx] = new_qkv[hook.name][:, :, idx]
                return t

            dest_z: list[torch.Tensor] = []
            m.run_with_hooks(base, [(pre + f"attn.hook_{c}", put) for c in comps]
                             + [(pre + "attn.hook_z", lambda t, hook: dest_z.append(t[:, :, hd].clone()))],
                             return_type=None)

            # 3. the base run with only dest's z replaced
            def put_z(t, hook):
                t = t.clone()
                t[:, :, hd] = dest_z[0]
                return t

            patched_logits = m.run_with_hooks(base, [(pre + "attn.hook_z", put_z)])
            return float(metric(patched_logits)) - float(metric(base_logits))


def _kind(kind: str) -> str:
    k = str(kind).lower()
    if k not in KINDS:
        raise ArrakisValueError(f"kind must be one of 'q', 'k', 'v' (Q-, K-, V-composition), got {kind!r}")
    return k


def _components(component: str) -> list[str]:
    comps = list(str(component).lower()) if isinstance(component, str) else []
    if not comps or any(c not in "qkv" for c in comps) or len(set(comps)) != len(comps):
        raise ArrakisValueError(f"component must be 'q', 'k', 'v' or a combination like 'qkv', got {component!r}")
    return comps
