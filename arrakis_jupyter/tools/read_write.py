"""Read and write heads: which heads write into, read from, and move information along the residual stream.

Circuits (weights only, for one layer; ``kv(h) = h // cfg.n_rep`` for grouped-query attention):

- ``W_OV^h = diag(w) W_V^{kv(h)} W_O^h``  [d_model, d_model]: a residual row vector x at a source
  position makes head h write ``x W_OV^h`` (times its attention weight) into the destination residual.
- ``W_QK^h = diag(w) W_Q^h (W_K^{kv(h)})^T diag(w)``  [d_model, d_model]: the attention score of a
  destination x_d on a source x_s is ``x_d W_QK^h x_s^T / sqrt(d_head)``.

``w`` is the weight of the block's input norm (``ln1``), folded in because it scales every residual
dimension before the head sees it. The norm's division by its scale is the same for every head and
is left out, as are LayerNorm's centring, biases and rotary position rotations (W_QK is the circuit at
zero relative offset). Products through d_head make the scores independent of the (arbitrary) basis
of each head's d_head space, which row norms of W_Q or W_V alone are not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch

from ..errors import ArrakisIndexError, ArrakisValueError, check_index
from .base import BaseInterpretabilityTool, LabelledTensor, head_label
from .registry import register_tool


@dataclass
class HeadSelection:
    """Heads whose score reaches ``threshold``, with the scores of every head of the layer.

    Iterating gives the selected ``(layer, head)`` pairs, strongest first (Arrakis's return value);
    ``scores`` is a LabelledTensor [head]; ``table`` a DataFrame with every term of the score.
    """

    heads: list[tuple[int, int]]
    scores: LabelledTensor
    table: pd.DataFrame
    threshold: float

    def __iter__(self):
        return iter(self.heads)

    def __len__(self) -> int:
        return len(self.heads)

    def _repr_html_(self) -> str:
        return self.table._repr_html_()


@dataclass
class InformationFlow:
    """Per-head flow from position ``src_pos`` to ``dst_pos`` in the first layers.

    ``flow = attention * ov_norm``, each a LabelledTensor [layer, head]; ``per_layer`` sums heads.
    """

    flow: LabelledTensor
    attention: LabelledTensor
    ov_norm: LabelledTensor
    src_pos: int
    dst_pos: int
    src_token: str
    dst_token: str

    @property
    def per_layer(self) -> torch.Tensor:
        """[layer]: total flow of each layer's heads (Arrakis returned one number per layer)."""
        return self.flow.values.sum(-1)

    def to_frame(self) -> pd.DataFrame:
        """Long form: index (layer, head); columns attention, ov_norm, flow."""
        index = pd.MultiIndex.from_product([self.flow.labels("layer"), self.flow.labels("head")],
                                           names=["layer", "head"])
        return pd.DataFrame({t.name: t.values.reshape(-1).numpy() for t in (self.attention, self.ov_norm, self.flow)},
                            index=index)

    def _repr_html_(self) -> str:
        return self.to_frame()._repr_html_()


@register_tool("write_read")
class WriteReadAnalyzer(BaseInterpretabilityTool):
    """Write heads (OV circuit energy in a residual subspace), read heads (how strongly the QK and OV
    circuits read one residual dimension) and token-to-token information flow (attention x OV norm)."""

    # ---- circuits --------------------------------------------------------------------------
    def _circuits(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_QK, W_OV) of every head of ``layer``, each [head, d_model, d_model] in float32, ln1 weight folded."""
        m, cfg = self.model, self.model.cfg
        kv = torch.arange(cfg.n_heads) // cfg.n_rep
        w = m.adapter.norm_weight(m.adapter.ln1(m.adapter.layers()[layer]), m.param)
        w = torch.ones(cfg.d_model) if w is None else w.detach().float().cpu()
        with torch.no_grad():
            w_q = m.W_Q[layer].float().cpu() * w[:, None]
            w_k = m.W_K[layer].float().cpu()[kv] * w[:, None]
            w_v = m.W_V[layer].float().cpu()[kv] * w[:, None]
            w_o = m.W_O[layer].float().cpu()
        return w_q @ w_k.transpose(-1, -2), w_v @ w_o

    @staticmethod
    def _check_threshold(threshold: float) -> float:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ArrakisValueError(f"threshold must be a number in [0, 1] (a fraction of the strongest head's "
                                    f"score), got {threshold!r}")
        return float(threshold)

    def _subspace(self, subspace) -> torch.Tensor | None:
        """Orthonormal basis [d_model, k] of ``subspace`` (None: the whole residual stream)."""
        d = self.model.cfg.d_model
        if subspace is None:
            return None
        if isinstance(subspace, int):
            basis = torch.zeros(d, 1)
            basis[check_index(subspace, d, "residual dimension"), 0] = 1.0
            return basis
        dirs = torch.as_tensor(subspace).detach().float().cpu()
        if dirs.ndim == 1:
            dirs = dirs[None]
        if dirs.ndim != 2 or dirs.shape[1] != d or dirs.shape[0] == 0:
            raise ArrakisValueError(f"subspace must be a residual dimension (int), a direction [d_model={d}] or "
                                    f"directions [k, d_model={d}], got shape {tuple(dirs.shape)}")
        q, r = torch.linalg.qr(dirs.T)
        rank = int((r.diagonal().abs() > 1e-6 * r.diagonal().abs().max()).sum())
        if rank < dirs.shape[0]:
            raise ArrakisValueError(f"the {dirs.shape[0]} subspace directions span only {rank} dimensions; "
                                    "pass linearly independent directions")
        return q

    def _select(self, layer: int, score: torch.Tensor, threshold: float, table: dict) -> HeadSelection:
        labels = [head_label(layer, h) for h in range(len(score))]
        order = sorted(range(len(score)), key=lambda h: -float(score[h]))
        heads = [(layer, h) for h in order if float(score[h]) >= threshold]
        frame = pd.DataFrame({k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in table.items()},
                             index=pd.Index(labels, name="head"))
        frame["score"] = score.numpy()
        frame["selected"] = [(layer, h) in heads for h in range(len(score))]
        return HeadSelection(heads, LabelledTensor(score, ("head",), {"head": labels}, name="score"), frame, threshold)

    # ---- write heads ---------------------------------------------------------------------------
    def identify_write_heads(self, layer_idx: int, threshold: float = 0.8, subspace=None) -> HeadSelection:
        """Heads of ``layer_idx`` that write most strongly into a residual-stream subspace U.

        Definition: with Q [d_model, k] an orthonormal basis of U, the write norm of head h is
        ``||W_OV^h Q||_F`` (the root of the energy its OV circuit writes into U for an isotropic input;
        U = the whole stream by default, giving ``||W_OV^h||_F``). The score is the write norm relative
        to the layer's strongest head (in [0, 1]); heads with ``score >= threshold`` are returned.
        The table also gives ``fraction = ||W_OV^h Q||_F^2 / ||W_OV^h||_F^2``, the share of the head's
        OV energy that lands in U.

        ``subspace``: None (whole stream), an int (one residual dimension), a direction [d_model] or
        directions [k, d_model] (orthonormalised; e.g. top principal directions of cached residuals).
        """
        layer = self.check_layer(layer_idx)
        threshold = self._check_threshold(threshold)
        basis = self._subspace(subspace)
        _, w_ov = self._circuits(layer)
        total = w_ov.flatten(1).norm(dim=-1)  # [head]
        written = total if basis is None else (w_ov @ basis).flatten(1).norm(dim=-1)
        score = written / written.max().clamp_min(torch.finfo(written.dtype).tiny)
        fraction = (written / total.clamp_min(torch.finfo(total.dtype).tiny)) ** 2
        return self._select(layer, score, threshold, {"ov_norm": total, "write_norm": written, "fraction": fraction})

    # ---- read heads ----------------------------------------------------------------------------
    def identify_read_heads(self, layer_idx: int, dim_idx: int, threshold: float = 0.8) -> HeadSelection:
        """Heads of ``layer_idx`` that read residual dimension ``dim_idx`` most strongly.

        A head reads dimension d (unit vector e_d) through three channels:
        query ``||e_d^T W_QK^h||`` (how much d at the destination moves the attention scores),
        key ``||W_QK^h e_d||`` (how much d at a source moves them) and
        value ``||e_d^T W_OV^h||`` (how much d at a source moves what the head writes).
        Each channel is divided by its maximum over the layer's heads (``q_rel``, ``k_rel``, ``v_rel``
        in [0, 1]); the score is the largest of the three, so a head is a reader of d when it is
        within ``threshold`` of the strongest reader of d in any channel. Grouped-query heads use
        their shared key/value head with their own W_Q and W_O.
        """
        layer = self.check_layer(layer_idx)
        d_model = self.model.cfg.d_model
        if isinstance(dim_idx, bool) or not isinstance(dim_idx, int) or not -d_model <= dim_idx < d_model:
            raise ArrakisIndexError(f"dim_idx must be a residual dimension in 0..{d_model - 1} "
                                    f"(d_model={d_model}), got {dim_idx!r}")
        dim = dim_idx % d_model
        threshold = self._check_threshold(threshold)
        w_qk, w_ov = self._circuits(layer)
        reads = {"q_read": w_qk[:, dim, :].norm(dim=-1), "k_read": w_qk[:, :, dim].norm(dim=-1),
                 "v_read": w_ov[:, dim, :].norm(dim=-1)}
        rel = {c[0] + "_rel": r / r.max().clamp_min(torch.finfo(r.dtype).tiny) for c, r in reads.items()}
        score = torch.stack(list(rel.values())).amax(0)
        return self._select(layer, score, threshold, {**reads, **rel})

    # ---- information flow ------------------------------------------------------------------------
    def _position(self, token: int | str, str_tokens: Sequence[str], what: str, last: bool) -> int:
        n = len(str_tokens)
        if isinstance(token, int) and not isinstance(token, bool):
            return check_index(token, n, f"{what} position")
        if isinstance(token, str):
            for match in (lambda s: s == token, lambda s: s.strip() == token.strip()):
                hits = [i for i, s in enumerate(str_tokens) if match(s)]
                if hits:
                    return hits[-1] if last else hits[0]
            raise ArrakisValueError(f"{what} token {token!r} is not in the input; its tokens are {list(str_tokens)}")
        raise ArrakisValueError(f"{what} must be a position (int) or a token string, got {token!r}")

    def trace_information_flow(self, input_ids, src_token: int | str, dst_token: int | str,
                               n_layers: int = 2) -> InformationFlow:
        """How much each head of layers ``0..n_layers-1`` moves from the source to the destination position.

        ``src_token``/``dst_token``: a position (int, negative from the end) or a token string (the
        source's first occurrence, the destination's last; exact match, else ignoring surrounding
        spaces). ``input_ids``: one sequence (text or ids [pos] / [1, pos]).

        Definition: ``flow[l, h] = A^{l,h}[dst, src] * ||v^{l,h}_src W_O^h||``, the norm of the part of
        head h's output at dst that comes from src (its attention weight times the norm of its OV
        output of the src residual; v includes the value bias, b_O is in no head). Returns [layer, head].
        """
        cfg = self.model.cfg
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers <= cfg.n_layers:
            raise ArrakisIndexError(f"n_layers must be an int in 1..{cfg.n_layers}, got {n_layers!r}")
        tokens = self.one_sequence(input_ids, "trace_information_flow")
        strs = self.str_tokens(tokens)
        src = self._position(src_token, strs, "src_token", last=False)
        dst = self._position(dst_token, strs, "dst_token", last=True)
        if dst < src:
            raise ArrakisValueError(f"dst position {dst} ({strs[dst]!r}) is before src position {src} "
                                    f"({strs[src]!r}); causal attention only moves information forwards")
        names = [f"blocks.{l}.attn.hook_{s}" for l in range(n_layers) for s in ("pattern", "v")]
        with torch.no_grad():
            _, cache = self.model.run_with_cache(tokens, names_filter=names)
            w_o = self.model.W_O[:n_layers].float()
        kv = torch.arange(cfg.n_heads) // cfg.n_rep
        attn, ov = [], []
        for l in range(n_layers):
            attn.append(cache[f"blocks.{l}.attn.hook_pattern"][0, :, dst, src].float().cpu())  # [head]
            v_src = cache[f"blocks.{l}.attn.hook_v"][0, src].float().cpu()[kv]  # [head, d_head]
            ov.append(torch.einsum("hd,hdm->hm", v_src, w_o[l].cpu()).norm(dim=-1))  # [head]
        attn, ov = torch.stack(attn), torch.stack(ov)
        coords = {"layer": list(range(n_layers)), "head": list(range(cfg.n_heads))}
        lt = lambda v, name: LabelledTensor(v, ("layer", "head"), coords, name=name)  # noqa: E731
        return InformationFlow(lt(attn * ov, "flow"), lt(attn, "attention"), lt(ov, "ov_norm"),
                               src, dst, strs[src], strs[dst])
