"""``logit``: direct logit attribution (DLA) of every component to one token's logit.

Convention (the one of ``ActivationCache.apply_ln_to_stack``): the final residual is the sum of
its components (embeddings, each head, each layer's attention output bias b_O, each MLP output).
Each component is passed through the *linear part* of the final norm with the scale frozen at
the value of the real forward pass (centred first for LayerNorm), then dotted with the target's
unembedding column ``W_U[:, target]`` (minus ``W_U[:, other]`` for a logit difference). The
final norm's bias and ``b_U`` belong to no component: they form one ``constant`` term. So

    sum(attributions) + constant == the model's logit (difference)   (float32: measured ~1e-7 on tiny
                                                                     models, ~5e-6 on SmolLM2-135M)

All computations are in float32. Every method takes one sequence (text, or ids [pos] / [1, pos]).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from ..errors import ArrakisValueError, check_index
from .base import BaseInterpretabilityTool, LabelledTensor
from .registry import register_tool

Token = int | str


# ---- helpers shared by the logit tools ---------------------------------------------------------

def resolve_pos(pos: int, n_pos: int) -> int:
    """A position in [0, n_pos) (negative counts from the end)."""
    return check_index(pos, n_pos, "position")


def token_str(tool: BaseInterpretabilityTool, token_id: int) -> str:
    """The decoded token, or its id as text when the model has no tokenizer."""
    return str(tool.model.to_string(token_id)) if tool.model.tokenizer is not None else str(token_id)


def rank_of(logits: torch.Tensor, token: int) -> torch.Tensor:
    """1-based rank of ``token`` in ``logits`` [..., d_vocab] (1 = the top token; ties favour it)."""
    return (logits > logits[..., token:token + 1]).sum(-1) + 1


# ---- results -------------------------------------------------------------------------------------

@dataclass
class LogitAttribution:
    """Direct logit attribution at one position.

    ``attributions``: [component] float32, labels ``embed``, ``pos_embed`` (learned positions only),
    ``L{l}H{h}`` (one per head), ``{l}_attn_bias`` (only where the attention output has a bias),
    ``{l}_mlp_out``. ``constant``: final-norm bias and ``b_U`` term. ``logit``: the model's own
    logit of ``target`` (minus that of ``other``) at ``pos``.
    """

    attributions: LabelledTensor
    constant: float
    logit: float
    target: int
    other: int | None
    pos: int

    @property
    def total(self) -> float:
        """Sum of all attributions plus the constant: equals ``logit`` up to float error."""
        return float(self.attributions.values.double().sum()) + self.constant

    def to_frame(self, include_constant: bool = True) -> pd.DataFrame:
        """One row per component (plus ``constant``), column ``attribution``; the column sums to ``total``."""
        df = self.attributions.to_frame()
        if include_constant:
            df = pd.concat([df, pd.DataFrame({"attribution": [self.constant]},
                                             index=pd.Index(["constant"], name="component"))])
        return df

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` components with the largest absolute attribution, largest first."""
        df = self.attributions.to_frame()
        return df.loc[df["attribution"].abs().sort_values(ascending=False).index[:k]]


@register_tool("logit")
class LogitAttributor(BaseInterpretabilityTool):
    """Direct logit attribution and how a token's logit builds up across layers."""

    @torch.no_grad()
    def _run(self, tokens: torch.Tensor, pos: int):
        keep = ("hook_embed", "hook_pos_embed", "ln_final.hook_scale")
        names = lambda n: n in keep or n.endswith(("attn.hook_result", "hook_mlp_out", "hook_resid_pre",
                                                     "hook_resid_post"))
        return self.model.run_with_cache(tokens, names_filter=names, pos_slice=pos, dtype=torch.float32,
                                         device=self.model.device)  # one device, also under device_map

    def _direction(self, target: int, other: int | None) -> tuple[torch.Tensor, float]:
        """(unembedding direction [d_model], constant term) of ``target`` (minus ``other``), float32."""
        m = self.model
        w_u, b_u = m.W_U.float(), m.b_U.float()
        direction, const = w_u[:, target], b_u[target]
        if other is not None:
            direction, const = direction - w_u[:, other], const - b_u[other]
        bias = m.norm_bias(m.adapter.ln_final())
        if bias is not None:
            const = const + bias.float().to(direction.device) @ direction
        return direction, float(const)

    def _components(self, cache) -> tuple[torch.Tensor, list[str], list[int]]:
        """Every component of the final residual at the cached position, through the frozen final
        norm: ([component, d_model] float32, labels, layer of each component (-1: embeddings))."""
        m, n_heads = self.model, self.model.cfg.n_heads
        parts, labels, layers = [cache["hook_embed"][0, 0]], ["embed"], [-1]
        if "hook_pos_embed" in cache:
            parts.append(cache["hook_pos_embed"][0, 0]); labels.append("pos_embed"); layers.append(-1)
        heads, head_labels = cache.stack_head_results(return_labels=True)
        for layer, block in enumerate(m.adapter.layers()):
            parts += list(heads[layer * n_heads:(layer + 1) * n_heads, 0, 0])
            labels += head_labels[layer * n_heads:(layer + 1) * n_heads]
            b_o = m.linear_params(m.adapter.o_proj(m.adapter.attn(block)))[1]
            if b_o is not None:
                parts.append(b_o.float().to(parts[0].device)); labels.append(f"{layer}_attn_bias")
            parts.append(cache[f"blocks.{layer}.hook_mlp_out"][0, 0]); labels.append(f"{layer}_mlp_out")
            layers += [layer] * (len(labels) - len(layers))
        stack = torch.stack([p.float() for p in parts])[:, None, None]  # [component, 1, 1, d_model]
        return cache.apply_ln_to_stack(stack)[:, 0, 0].float(), labels, layers

    @torch.no_grad()
    def logit_attribution(self, input_ids: Any, target_idx: Token, other: Token | None = None,
                          pos: int = -1) -> LogitAttribution:
        """Direct logit attribution of embed, every head, every attention bias and every MLP to the
        logit of ``target_idx`` (a token id or a one-token string) at position ``pos`` (default the last),
        or to ``logit[target_idx] - logit[other]`` when ``other`` is given. See the module doc for the
        norm convention; ``result.total == result.logit`` up to float error."""
        tokens = self.one_sequence(input_ids)
        target = self.target_token(target_idx)
        other_id = None if other is None else self.target_token(other, "other")
        pos = resolve_pos(pos, tokens.shape[1])
        logits, cache = self._run(tokens, pos)
        comps, labels, _ = self._components(cache)
        direction, const = self._direction(target, other_id)
        attrs = comps @ direction.to(comps.device)
        logit = logits[0, pos].float()
        model_logit = logit[target] - (logit[other_id] if other_id is not None else 0.0)
        return LogitAttribution(LabelledTensor(attrs.cpu(), ("component",), {"component": labels}, "attribution"),
                                const, float(model_logit), target, other_id, pos)

    @torch.no_grad()
    def track_token_circulation(self, input_ids: Any, target_idx: Token, n_layers: int = 2,
                                pos: int = -1) -> pd.DataFrame:
        """How the target token's logit builds up in windows of ``n_layers`` consecutive layers.

        The layers are split into windows ``[0, n_layers)``, ``[n_layers, 2 n_layers)``, ... (the last
        may be shorter). One row per window (index ``window`` = ``"a-b"``, first and last layer), columns:

        - ``first_layer``, ``last_layer``
        - ``lens_logit_in`` / ``lens_logit_out``: the target's logit-lens logit (``model.lens_logits``: final
          norm with the residual's own statistics, ``W_U``, ``b_U``) on the residual entering the window
          (``blocks.a.hook_resid_pre``) and leaving it (``blocks.b.hook_resid_post``);
        - ``lens_delta``: ``lens_logit_out - lens_logit_in``;
        - ``lens_prob_out``, ``lens_rank_out``: softmax probability and 1-based rank after the window;
        - ``direct``: the window's direct logit attribution (its heads, attention biases and MLPs,
          frozen final-norm scale, as in ``logit_attribution``). Windows' ``direct`` plus the
          embeddings' attribution plus the constant sum to the model's logit.
        """
        n = self.model.cfg.n_layers
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers <= n:
            raise ArrakisValueError(f"n_layers (layers per window) must be an int in [1, {n}], got {n_layers!r}")
        tokens = self.one_sequence(input_ids)
        target = self.target_token(target_idx)
        pos = resolve_pos(pos, tokens.shape[1])
        _, cache = self._run(tokens, pos)
        comps, _, layer_of = self._components(cache)
        direction, _ = self._direction(target, None)
        attrs = comps @ direction.to(comps.device)
        rows, index = [], []
        for a in range(0, n, n_layers):
            b = min(a + n_layers, n) - 1
            lens = self.model.lens_logits(torch.stack([cache[f"blocks.{a}.hook_resid_pre"][0, 0],
                                                        cache[f"blocks.{b}.hook_resid_post"][0, 0]]))
            direct = sum(float(v) for v, l in zip(attrs, layer_of) if a <= l <= b)
            rows.append({"first_layer": a, "last_layer": b, "lens_logit_in": float(lens[0, target]),
                         "lens_logit_out": float(lens[1, target]),
                         "lens_delta": float(lens[1, target] - lens[0, target]),
                         "lens_prob_out": float(lens[1].softmax(-1)[target]),
                         "lens_rank_out": int(rank_of(lens[1], target)), "direct": direct})
            index.append(f"{a}-{b}")
        return pd.DataFrame(rows, index=pd.Index(index, name="window"))
