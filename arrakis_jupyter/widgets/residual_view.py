"""ResidualView: signed contributions of every component to a logit, with a head explorer on click."""
from __future__ import annotations

import html
from typing import Any

import ipywidgets
import numpy as np
import traitlets

from ..tools.base import parse_head_label
from ..tools.logit_attribution import LogitAttribution, LogitAttributor
from .base import STATIC, ArrakisWidget, f32, i32, with_fallback
from .head_explorer import HeadExplorer, dla_by_head
from .png import colorize, encode_png, png_img_tag


class ResidualBars(ArrakisWidget):
    """The bar chart of a LogitAttribution (the front end of ResidualView)."""

    _esm = STATIC / "residual_view.js"
    labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    values = traitlets.Bytes().tag(sync=True)  # float32 [component]
    layer_head = traitlets.Bytes().tag(sync=True)  # int32 [component, 2]; (-1, -1) for non-heads
    constant = traitlets.Float().tag(sync=True)
    total = traitlets.Float().tag(sync=True)
    logit = traitlets.Float().tag(sync=True)
    selected = traitlets.List(traitlets.Int()).tag(sync=True)

    def __init__(self, attribution: LogitAttribution, title: str) -> None:
        labels = [str(x) for x in attribution.attributions.labels("component")]
        super().__init__(labels=labels, values=f32(attribution.attributions.values),
                         layer_head=i32(np.array([parse_head_label(x) or (-1, -1) for x in labels], dtype=np.int32).reshape(-1, 2)),
                         constant=float(attribution.constant), total=float(attribution.total),
                         logit=float(attribution.logit), title=title)
        self.attribution = attribution

    def fallback_html(self) -> str:
        frame = self.attribution.top(12)
        values = frame["attribution"].to_numpy()
        bound = float(np.abs(values).max()) or 1.0
        bars = "".join(
            f"<tr><td>{html.escape(str(label))}</td><td style='font-family:monospace'>{v:+.4f}</td><td>"
            f"{png_img_tag(encode_png(np.tile(colorize(np.array([[v]]), 'diverging', -bound, bound), (10, max(1, int(120 * abs(v) / bound)), 1))), 'bar')}"
            "</td></tr>" for label, v in zip(frame.index, values))
        return (f"<p>sum of parts {self.total - self.constant:.4f} + constant {self.constant:.4f} = {self.total:.4f}"
                f" · model logit {self.logit:.4f}</p><table>{bars}</table>")


class ResidualView(ipywidgets.VBox):
    """``ResidualView(model, text, target, other=None, pos=-1)``: direct logit attribution of embed,
    every head and every MLP to the logit of ``target`` (or ``target - other``) at ``pos``, as sorted
    signed bars whose total matches the model's logit; clicking a head bar opens it in a head explorer
    below (coloured by the same attributions)."""

    def __init__(self, model: Any, text: Any, target: Any, other: Any = None, pos: int = -1) -> None:
        tool = LogitAttributor(model)
        self.model, self.tokens = model, tool.one_sequence(text)
        self.attribution = tool.logit_attribution(self.tokens, target, other=other, pos=pos)
        a = self.attribution
        name = repr(tool.model.to_string(a.target)) if model.tokenizer is not None else str(a.target)
        if a.other is not None:
            name += " − " + (repr(model.to_string(a.other)) if model.tokenizer is not None else str(a.other))
        self.bars = ResidualBars(a, f"logit {name} at position {a.pos}")
        self.explorer: HeadExplorer | None = None
        super().__init__([self.bars])
        self.bars.observe(self._open_head, "selected")

    def _open_head(self, change: dict) -> None:
        selected = list(change["new"])
        if len(selected) != 2:
            return
        if self.explorer is None:
            grid = dla_by_head(self.model, self.attribution)
            self.explorer = HeadExplorer(self.model, self.tokens, scores={"direct logit attribution": grid},
                                         default_scores=False, title=self.bars.title)
            self.children = (self.bars, self.explorer)
        self.explorer.selected = selected

    def _repr_mimebundle_(self, **kwargs: Any):
        return with_fallback(super()._repr_mimebundle_(**kwargs), self.bars.title, self.bars.fallback_html())
