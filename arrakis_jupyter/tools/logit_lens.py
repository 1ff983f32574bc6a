"""``logit_lens``: read the residual stream after each layer as if it were the final one.

Convention (``ActivationCache.accumulated_resid(apply_ln=True)``): the residual after layer ``l``
(``blocks.{l}.hook_resid_post``) goes through the final norm *with its own statistics*, then
``W_U`` and ``b_U``. After the last layer this is exactly the model's own logits. Probabilities are
the softmax over the whole vocabulary; ranks are 1-based (1 = the top token). float32 throughout.
Every method takes one sequence (text, or ids [pos] / [1, pos]); ``pos`` defaults to the last.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from ..errors import ArrakisValueError
from .base import BaseInterpretabilityTool, LabelledTensor
from .logit_attribution import Token, rank_of, resolve_pos, token_str
from .registry import register_tool


@dataclass
class LensReading:
    """The target token read through the logit lens after ``layer``, next to the model's own output."""

    layer: int
    pos: int
    target: int
    token: str
    logit: float
    prob: float
    rank: int
    model_logit: float
    model_prob: float
    model_rank: int


@dataclass
class LensTable:
    """Top-k logit-lens predictions for every layer and position.

    ``token_ids`` [layer, pos, k] (long) and ``probs`` [layer, pos, k] (float32), both labelled
    (``layer`` 0..n_layers-1 = after that layer; ``pos`` = the input's token strings); ``tokens`` the
    decoded predictions, nested the same way.
    """

    token_ids: LabelledTensor
    probs: LabelledTensor
    tokens: list[list[list[str]]]
    normalized: torch.Tensor | None = field(default=None, repr=False)  # [layer, pos, d_model] final-norm output
    log_norm: torch.Tensor | None = field(default=None, repr=False)  # [layer, pos] logsumexp of the lens logits
    unembed: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)  # (W_U, b_U)

    def target_probs(self, token_id: int) -> LabelledTensor:
        """The lens probability of one token after every layer at every position, [layer, pos] float32
        (from the stored normalised residuals: no new forward pass)."""
        if self.normalized is None or self.unembed is None:
            raise ArrakisValueError("this LensTable was built without its residuals; rebuild it with logit_lens_table")
        w_u, b_u = self.unembed
        if not isinstance(token_id, int) or not 0 <= token_id < w_u.shape[1]:
            raise ArrakisValueError(f"token id must be an int in [0, {w_u.shape[1] - 1}], got {token_id!r}")
        logit = self.normalized @ w_u[:, token_id].float() + b_u[token_id].float()
        probs = (logit - self.log_norm).exp()
        dims = ("layer", "pos")
        return LabelledTensor(probs, dims, {d: self.probs.coords[d] for d in dims if d in self.probs.coords}, "prob")

    def to_frame(self) -> pd.DataFrame:
        """Long form: one row per (layer, pos, rank) with ``token_id``, ``token``, ``prob``."""
        n_layer, n_pos, k = self.token_ids.shape
        rows = [{"layer": l, "pos": p, "input_token": self.probs.labels("pos")[p], "rank": r + 1,
                 "token_id": int(self.token_ids.values[l, p, r]), "token": self.tokens[l][p][r],
                 "prob": float(self.probs.values[l, p, r])}
                for l in range(n_layer) for p in range(n_pos) for r in range(k)]
        return pd.DataFrame(rows)

    def table(self) -> pd.DataFrame:
        """Layers × positions; each cell lists the top-k tokens with their probabilities."""
        n_layer, n_pos, k = self.token_ids.shape
        cells = [[" | ".join(f"{self.tokens[l][p][r]!r} {float(self.probs.values[l, p, r]):.2f}" for r in range(k))
                  for p in range(n_pos)] for l in range(n_layer)]
        return pd.DataFrame(cells, index=pd.Index(range(n_layer), name="layer"),
                            columns=pd.Index(self.probs.labels("pos"), name="pos"))

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()


@register_tool("logit_lens")
class LogitLens(BaseInterpretabilityTool):
    """The logit lens: what each layer's residual stream predicts."""

    @torch.no_grad()
    def _resid_posts(self, tokens: torch.Tensor, pos: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(model logits [pos', d_vocab] float32, residuals after each layer [layer, pos', d_model])."""
        logits, cache = self.model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post"),
                                                  pos_slice=pos, device=self.model.device)
        resid = torch.stack([cache[f"blocks.{l}.hook_resid_post"][0] for l in range(self.model.cfg.n_layers)])
        out = logits[0].float()
        return (out if pos is None else out[pos:pos + 1]), resid

    @torch.no_grad()
    def logit_lens(self, input_ids: Any, target_idx: Token, layer_idx: int, pos: int = -1) -> LensReading:
        """The logit, probability and rank of ``target_idx`` (a token id or a one-token string) read from
        the residual after layer ``layer_idx`` at ``pos``, with the model's final values alongside."""
        tokens = self.one_sequence(input_ids)
        target = self.target_token(target_idx)
        layer = self.check_layer(layer_idx)
        pos = resolve_pos(pos, tokens.shape[1])
        model_logits, resid = self._resid_posts(tokens, pos)
        lens = self.model.lens_logits(resid[layer, 0])
        final = model_logits[0]
        return LensReading(layer, pos, target, token_str(self, target), float(lens[target]),
                           float(lens.softmax(-1)[target]), int(rank_of(lens, target)), float(final[target]),
                           float(final.softmax(-1)[target]), int(rank_of(final, target)))

    @torch.no_grad()
    def layer_attributions(self, input_ids: Any, target_idx: Token, pos: int = -1) -> pd.DataFrame:
        """The target's logit-lens ``logit``, ``prob`` and ``rank`` after each layer (index ``layer``),
        and ``logit_delta``: the change in lens logit made by that layer (for layer 0, relative to the
        lens of the embeddings, ``blocks.0.hook_resid_pre``). The last row equals the model's output."""
        tokens = self.one_sequence(input_ids)
        target = self.target_token(target_idx)
        pos = resolve_pos(pos, tokens.shape[1])
        _, cache = self.model.run_with_cache(
            tokens, names_filter=lambda n: n.endswith("hook_resid_post") or n == "blocks.0.hook_resid_pre",
            pos_slice=pos, device=self.model.device)
        n = self.model.cfg.n_layers
        resid = torch.stack([cache["blocks.0.hook_resid_pre"][0, 0]]
                            + [cache[f"blocks.{l}.hook_resid_post"][0, 0] for l in range(n)])
        lens = self.model.lens_logits(resid)  # [1 + layer, d_vocab]
        logit = lens[:, target]
        return pd.DataFrame({"logit": logit[1:].cpu().numpy(),
                             "prob": lens[1:].softmax(-1)[:, target].cpu().numpy(),
                             "rank": rank_of(lens[1:], target).cpu().numpy(),
                             "logit_delta": (logit[1:] - logit[:-1]).cpu().numpy()},
                            index=pd.Index(range(n), name="layer"))

    @torch.no_grad()
    def logit_lens_table(self, input_ids: Any, top_k: int = 5) -> LensTable:
        """The ``top_k`` logit-lens predictions (tokens and probabilities) after every layer at every
        position: a layers × positions × top_k table (``LensTable``; ``.table()`` to display)."""
        tokens = self.one_sequence(input_ids)
        d_vocab = self.model.cfg.d_vocab
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= d_vocab:
            raise ArrakisValueError(f"top_k must be an int in [1, {d_vocab}], got {top_k!r}")
        _, resid = self._resid_posts(tokens, None)
        ids, probs, lse = [], [], []
        for layer_resid in resid:  # one layer at a time: [pos, d_vocab] in memory, not [layer, pos, d_vocab]
            lens = self.model.lens_logits(layer_resid)
            top = lens.softmax(-1).topk(top_k, dim=-1)
            ids.append(top.indices.cpu()); probs.append(top.values.cpu()); lse.append(lens.logsumexp(-1).cpu())
        ids_t, probs_t = torch.stack(ids), torch.stack(probs)
        coords = {"layer": list(range(self.model.cfg.n_layers)), "pos": self.str_tokens(tokens),
                  "k": list(range(1, top_k + 1))}
        names = [[[token_str(self, int(i)) for i in row] for row in layer] for layer in ids_t]
        dims = ("layer", "pos", "k")
        normalized = self.model.normalize_final(resid.float()).cpu()
        return LensTable(LabelledTensor(ids_t, dims, coords, "token_id"), LabelledTensor(probs_t, dims, coords, "prob"),
                         names, normalized, torch.stack(lse), (self.model.W_U.detach().cpu(), self.model.b_U.detach().cpu()))
