"""``decomposer``: the residual stream in the basis of an MLP's output directions.

Neuron ``n`` of layer ``l`` writes ``activation_n * W_out[l][n]`` into the residual stream
(``W_out`` [d_mlp, d_model], ``mlp_out = mlp.hook_post @ W_out + b_out``), so the rows of ``W_out``
are the directions that layer's MLP can write along. ``decompose_residual`` ranks them by how well
each one alone explains the residual after the layer: the absolute cosine similarity between
the residual vector and the direction (the output bias ``b_out`` is not a direction and is ignored).
float32 throughout; one sequence per call.
"""
from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from ..errors import ArrakisValueError
from .base import BaseInterpretabilityTool, LabelledTensor
from .registry import register_tool


@register_tool("decomposer")
class ResidualDecomposer(BaseInterpretabilityTool):
    """The residual stream expressed through the MLP neurons' output directions."""

    def _w_out(self, layer: int) -> torch.Tensor:
        """W_out of one layer, [d_mlp, d_model] float32 (read without stacking every layer)."""
        a = self.model.adapter
        return self.model.linear_params(a.mlp_out(a.mlp(a.layers()[layer])))[0].float()

    @torch.no_grad()
    def mlp_basis(self, layer_idx: int, normalize: bool = True) -> LabelledTensor:
        """The output directions of layer ``layer_idx``'s MLP neurons: [neuron, d_model], row ``n`` =
        ``W_out[layer_idx][n]``, scaled to unit length when ``normalize`` (the default; a neuron whose
        row is zero stays zero). Not an orthogonal basis: d_mlp > d_model directions in general."""
        layer = self.check_layer(layer_idx)
        w = self._w_out(layer)
        if normalize:
            w = w / w.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
        return LabelledTensor(w.cpu(), ("neuron", "d_model"), name=f"mlp_out_direction_L{layer}")

    @torch.no_grad()
    def decompose_residual(self, input_ids: Any, layer_idx: int, top_k: int = 1) -> pd.DataFrame:
        """For each position, the ``top_k`` neurons of layer ``layer_idx`` whose (unit) output directions
        ``u_n`` best explain the residual after that layer, ``r = blocks.{layer}.hook_resid_post``,
        ranked by ``|cos(r, u_n)|``.

        Returns one row per (pos, rank) with columns ``pos``, ``token``, ``rank`` (1 = best),
        ``neuron``, ``cosine`` (signed), ``coefficient`` (``r · u_n``, the length of ``r`` along
        ``u_n``), ``activation`` (the neuron's ``mlp.hook_post`` at that position) and ``write``
        (``activation * |W_out[n]|``: how far the neuron itself moved the residual along ``u_n``).
        """
        tokens = self.one_sequence(input_ids)
        layer = self.check_layer(layer_idx)
        d_mlp = self.model.cfg.d_mlp
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= d_mlp:
            raise ArrakisValueError(f"top_k must be an int in [1, {d_mlp}] (d_mlp), got {top_k!r}")
        hooks = [f"blocks.{layer}.hook_resid_post", f"blocks.{layer}.mlp.hook_post"]
        _, cache = self.model.run_with_cache(tokens, names_filter=hooks)
        resid = cache[hooks[0]][0].float()  # [pos, d_model]
        post = cache[hooks[1]][0].float()  # [pos, d_mlp]
        w = self._w_out(layer).to(resid.device)
        norms = w.norm(dim=-1)
        units = w / norms[:, None].clamp_min(torch.finfo(w.dtype).tiny)
        coef = resid @ units.T  # [pos, d_mlp]
        cos = coef / resid.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
        best = cos.abs().topk(top_k, dim=-1).indices  # [pos, k]
        strs = self.str_tokens(tokens)
        rows = []
        for p in range(tokens.shape[1]):
            for r, n in enumerate(best[p].tolist()):
                rows.append({"pos": p, "token": strs[p], "rank": r + 1, "neuron": n, "cosine": float(cos[p, n]),
                             "coefficient": float(coef[p, n]), "activation": float(post[p, n]),
                             "write": float(post[p, n] * norms[n])})
        return pd.DataFrame(rows)
