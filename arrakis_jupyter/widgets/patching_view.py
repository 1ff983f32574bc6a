"""PatchingView: a labelled heatmap of a patching result of the ``causal`` tool."""
from __future__ import annotations

from typing import Any

import traitlets

from ..errors import ArrakisValueError
from ..tools.base import LabelledTensor
from .base import STATIC, ArrakisWidget, f32
from .png import heatmap_png, png_img_tag


class PatchingView(ArrakisWidget):
    """``PatchingView(result)``: any 2-D result of ``causal.patch`` / ``trace_*`` (layer × position,
    layer × head), hover for the value and the labels (tokens for positions). ``symmetric`` (default:
    when the values have both signs) uses a diverging colour scale centred on 0."""

    _esm = STATIC / "patching_view.js"
    values = traitlets.Bytes().tag(sync=True)  # float32 [rows, cols]
    rows = traitlets.List(traitlets.Unicode()).tag(sync=True)
    cols = traitlets.List(traitlets.Unicode()).tag(sync=True)
    row_dim = traitlets.Unicode().tag(sync=True)
    col_dim = traitlets.Unicode().tag(sync=True)
    value_name = traitlets.Unicode().tag(sync=True)
    symmetric = traitlets.Bool().tag(sync=True)

    def __init__(self, result: Any, title: str | None = None, symmetric: bool | None = None) -> None:
        if hasattr(result, "scores") and isinstance(result.scores, LabelledTensor):
            result = result.scores  # causal tracing results carry their grid as .scores
        if not isinstance(result, LabelledTensor):
            raise ArrakisValueError(f"PatchingView takes a LabelledTensor from the causal tool, got "
                                    f"{type(result).__name__}")
        if result.values.ndim == 1:
            result = LabelledTensor(result.values[:, None], (result.dims[0], result.name),
                                    {result.dims[0]: result.labels(result.dims[0]), result.name: [result.name]},
                                    result.name)
        if result.values.ndim != 2:
            raise ArrakisValueError(f"PatchingView shows 1-D or 2-D results; this one has dims {result.dims}: "
                                    f"patch with by='layer_pos' or by='head', or select a slice first")
        v = result.values.detach().float().cpu()
        self.result = result
        sym = bool((v.min() < 0) and (v.max() > 0)) if symmetric is None else bool(symmetric)
        row_dim, col_dim = result.dims
        super().__init__(values=f32(v), rows=[str(x) for x in result.labels(row_dim)],
                         cols=[str(x) for x in result.labels(col_dim)], row_dim=row_dim, col_dim=col_dim,
                         value_name=result.name, symmetric=sym, title=title or f"{result.name} by {row_dim} × {col_dim}")

    def fallback_html(self) -> str:
        v = self.result.values.detach().float().cpu().numpy()
        return png_img_tag(heatmap_png(v, "diverging" if self.symmetric else "viridis"), self.title)
