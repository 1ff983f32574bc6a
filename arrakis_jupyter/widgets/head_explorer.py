"""HeadExplorer: every head of the model in a layers × heads grid; click one to see its pattern."""
from __future__ import annotations

import html
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
import traitlets

from ..errors import ArrakisValueError, check_index
from ..tools.attention import AttentionTools
from ..tools.base import parse_head_label
from ..tools.logit_attribution import LogitAttributor
from .base import STATIC, ArrakisWidget, f32
from .png import heatmap_png, png_img_tag

PATTERN_CACHE_MIB = 256  # patterns of every layer are computed in one pass when they fit in this budget


def head_grid_scores(model: Any, tokens: torch.Tensor, top: int) -> dict[str, torch.Tensor]:
    """The explorer's default colourings, [n_layers, n_heads] each: the attention tool's head scores
    (on repeated random tokens) and each head's direct logit attribution to ``top`` (the model's top
    prediction) at the last position of ``tokens``."""
    table = AttentionTools(model).head_score_table(("induction", "previous_token", "duplicate_token", "bos"))
    scores = {kind: table.values[i] for i, kind in enumerate(table.coords["score"])}
    dla = LogitAttributor(model).logit_attribution(tokens, top)
    scores[f"dla {model.to_string(top)!r}" if model.tokenizer is not None else f"dla {top}"] = dla_by_head(model, dla)
    return scores


def dla_by_head(model: Any, attribution: Any) -> torch.Tensor:
    """The head components of a LogitAttribution as a [n_layers, n_heads] grid."""
    labels = attribution.attributions.labels("component")
    values = attribution.attributions.values
    grid = torch.full((model.cfg.n_layers, model.cfg.n_heads), float("nan"))
    for i, label in enumerate(labels):
        layer_head = parse_head_label(label)
        if layer_head is not None:
            grid[layer_head] = values[i]
    return grid


def _as_score_dict(model: Any, scores: Any) -> dict[str, torch.Tensor]:
    if scores is None:
        return {}
    if not isinstance(scores, Mapping):
        scores = {getattr(scores, "name", None) or "custom": scores}
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    out = {}
    for name, value in scores.items():
        t = torch.as_tensor(np.asarray(value), dtype=torch.float32)
        if tuple(t.shape) != shape:
            raise ArrakisValueError(f"scores {name!r} have shape {tuple(t.shape)}; the head explorer needs one value "
                                    f"per head: [n_layers, n_heads] = [{shape[0]}, {shape[1]}]")
        out[str(name)] = t
    return out


class HeadExplorer(ArrakisWidget):
    """``HeadExplorer(model, text_or_tokens, scores=None)``: a layers × heads grid coloured by a score
    (the attention tool's induction / previous-token / duplicate-token / BOS scores and each head's
    direct logit attribution, plus any [n_layers, n_heads] tensor or dict of them you pass); click a
    head for its query × key pattern on the text, pin two heads side by side, pick a token to see what
    it attends to. Patterns travel on demand, one head per message (float32 buffers)."""

    _esm = STATIC / "head_explorer.js"
    n_layers = traitlets.Int().tag(sync=True)
    n_heads = traitlets.Int().tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    score_names = traitlets.List(traitlets.Unicode()).tag(sync=True)
    scores = traitlets.Bytes().tag(sync=True)  # float32 [n_scores, n_layers, n_heads]
    score = traitlets.Unicode().tag(sync=True)
    selected = traitlets.List(traitlets.Int()).tag(sync=True)
    pinned = traitlets.List(traitlets.List(traitlets.Int())).tag(sync=True)
    query = traitlets.Int(-1).tag(sync=True)

    def __init__(self, model: Any, text_or_tokens: Any, scores: Any = None, default_scores: bool = True,
                 title: str | None = None) -> None:
        tool = AttentionTools(model)
        tokens = tool.one_sequence(text_or_tokens)  # validates (context length, ids)
        user = _as_score_dict(model, scores)
        if not user and not default_scores:
            raise ArrakisValueError("no scores to colour the grid: pass scores=... or default_scores=True")
        self.model, self.token_ids = model, tokens
        self._patterns: OrderedDict[int, torch.Tensor] = OrderedDict()  # layer -> [head, q, k]
        layers = range(model.cfg.n_layers) if self._fits() else []  # patterns now when they fit: instant clicks
        logits = self._compute(layers, logits=default_scores) if layers or default_scores else None
        top = int(logits[0, -1].argmax()) if default_scores else 0
        grids = {**user, **(head_grid_scores(model, tokens, top) if default_scores else {})}
        self.score_table = pd.concat({k: pd.DataFrame(v.numpy()) for k, v in grids.items()}, names=["score", "layer"])
        super().__init__(n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads, tokens=tool.str_tokens(tokens),
                         score_names=list(grids), scores=f32(torch.stack(list(grids.values()))),
                         score=next(iter(grids)), title=title or f"{model.cfg.n_layers} layers × {model.cfg.n_heads} heads")
        self.on_msg(self._on_msg)

    # ---- patterns ---------------------------------------------------------------------------------
    def pattern(self, layer: int, head: int) -> torch.Tensor:
        """The attention pattern of one head on the text: float32 [query, key] (rows sum to 1)."""
        layer = check_index(layer, self.n_layers, "layer")
        head = check_index(head, self.n_heads, "head")
        if layer not in self._patterns:
            self._compute(range(self.n_layers) if self._fits() else [layer])
        self._patterns.move_to_end(layer)
        return self._patterns[layer][head]

    def _fits(self) -> bool:
        n, cfg = self.token_ids.shape[1], self.model.cfg
        return cfg.n_layers * cfg.n_heads * n * n * 4 <= PATTERN_CACHE_MIB * 2**20

    def _compute(self, layers: Any, logits: bool = False) -> torch.Tensor | None:
        """Patterns of ``layers`` into the cache (one pass, stopped after the last one unless ``logits``)."""
        layers = list(layers)
        got: dict[int, torch.Tensor] = {}

        def save(pattern: torch.Tensor, hook) -> None:
            got[hook.layer()] = pattern[0].detach().float().cpu().clone()

        hooks = [(f"blocks.{i}.attn.hook_pattern", save) for i in layers]
        out = None
        with torch.no_grad():
            if logits:
                out = self.model.run_with_hooks(self.token_ids, hooks)
            else:  # nothing after the last layer is needed
                self.model.run_until(self.token_ids, hooks)
        self._patterns.update(got)
        n = self.token_ids.shape[1]
        keep = max(1, (PATTERN_CACHE_MIB * 2**20) // (self.model.cfg.n_heads * n * n * 4))
        while len(self._patterns) > keep:
            self._patterns.popitem(last=False)
        return out

    def _on_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or content.get("type") != "pattern":
            return
        layer, head = content.get("layer"), content.get("head")
        try:
            p = self.pattern(layer, head)
        except Exception as e:  # the front end shows it; nothing else to do with it here
            self.send({"type": "error", "message": str(e), "layer": layer, "head": head})
            return
        self.send({"type": "pattern", "layer": layer, "head": head, "n": int(p.shape[0])}, buffers=[f32(p)])

    # ---- fallback -----------------------------------------------------------------------------------
    def fallback_html(self) -> str:
        grid = self.score_table.loc[self.score].to_numpy()
        flat = np.nan_to_num(grid, nan=-np.inf).ravel()
        top = np.argsort(-flat)[:5]
        rows = "".join(f"<tr><td>L{i // self.n_heads}H{i % self.n_heads}</td><td>{grid.ravel()[i]:.3f}</td></tr>"
                       for i in top)
        return (f"<p>{html.escape(self.score)} by layer (rows) × head (columns)</p>"
                f"{png_img_tag(heatmap_png(grid), 'head scores')}<table><tr><th>head</th>"
                f"<th>{html.escape(self.score)}</th></tr>{rows}</table>")
