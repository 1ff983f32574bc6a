"""``BokehWrapper``: the panels of :mod:`arrakis_jupyter.plots.data` as Bokeh figures.

Heatmaps are an ``image`` glyph on categorical (token / head / hook label) axes with a colour bar;
hovering a cell shows its row and column labels and its value (through an invisible ``rect`` grid
that carries the labels; above :data:`HOVER_CELL_LIMIT` cells, the image's own hover shows the value
only). Lines and bars are on a categorical x axis with a legend. Several panels make a gridplot
(under a heading when the spec has a title). Nothing is shown or loaded from a CDN here: the
caller shows the returned object (``bokeh.io.show``, a notebook, ``file_html(..., INLINE)``).
"""
from __future__ import annotations

import html
import math

import numpy as np

from .data import PlotBundle, PlotData
from .spec import PlotWrapper

HOVER_CELL_LIMIT = 40_000
_TOOLS = "pan,wheel_zoom,box_zoom,reset,save"


def _size(n: int, lo: int, hi: int, base: int = 120, per: int = 24) -> int:
    return max(lo, min(hi, base + per * n))


def _color_range(panel: PlotData, values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if panel.value_range is not None:
        return panel.value_range
    if finite.size == 0:
        return 0.0, 1.0
    if panel.diverging:
        m = float(np.abs(finite).max()) or 1.0
        return -m, m
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def _style_x(fig, labels: list[str]) -> None:
    if len(labels) > 8 or max((len(s) for s in labels), default=0) > 4:
        fig.xaxis.major_label_orientation = math.pi / 3


def _heatmap(panel: PlotData, title: str):
    from bokeh.models import (
        ColorBar,
        ColumnDataSource,
        FactorRange,
        HoverTool,
        LinearColorMapper,
    )
    from bokeh.palettes import RdBu11, Viridis256, interp_palette
    from bokeh.plotting import figure

    values = np.asarray(panel.values, dtype=float)
    ny, nx = values.shape
    fig = figure(title=title, x_range=FactorRange(factors=list(panel.x_labels)),
                 y_range=FactorRange(factors=list(reversed(panel.y_labels))), tools=_TOOLS,
                 width=_size(nx, 320, 760, 160), height=_size(ny, 280, 720, 110),
                 x_axis_label=panel.x_name, y_axis_label=panel.y_name)
    low, high = _color_range(panel, values)
    palette = interp_palette(RdBu11, 256) if panel.diverging else Viridis256
    mapper = LinearColorMapper(palette=palette, low=low, high=high, nan_color="#dddddd")
    # image rows go bottom-up; the y factors are reversed so that row 0 is at the top
    image = fig.image(image=[values[::-1]], x=0, y=0, dw=nx, dh=ny, color_mapper=mapper)
    value_fmt = "@value{0.0000}" if ny * nx <= HOVER_CELL_LIMIT else "@image{0.0000}"
    if ny * nx <= HOVER_CELL_LIMIT:
        ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        source = ColumnDataSource({"x": [panel.x_labels[i] for i in xs.ravel()],
                                   "y": [panel.y_labels[i] for i in ys.ravel()], "value": values.ravel()})
        cells = fig.rect(x="x", y="y", width=1, height=1, source=source, fill_alpha=0, line_alpha=0)
        fig.add_tools(HoverTool(renderers=[cells], tooltips=[(panel.y_name or "row", "@y"),
                                                             (panel.x_name or "column", "@x"),
                                                             (panel.value_name, value_fmt)]))
    else:
        fig.add_tools(HoverTool(renderers=[image], tooltips=[(panel.value_name, value_fmt)]))
    fig.add_layout(ColorBar(color_mapper=mapper, title=panel.value_name, width=10), "right")
    fig.grid.grid_line_color = None
    fig.axis.major_tick_line_color = None
    fig.axis.axis_line_color = None
    _style_x(fig, panel.x_labels)
    return fig


def _series_colors(n: int) -> list[str]:
    from bokeh.palettes import Category10_10, Category20_20

    palette = Category10_10 if n <= 10 else Category20_20
    return [palette[i % len(palette)] for i in range(n)]


def _lines(panel: PlotData, title: str):
    from bokeh.models import ColumnDataSource, FactorRange, HoverTool
    from bokeh.plotting import figure

    values = np.asarray(panel.values, dtype=float)
    fig = figure(title=title, x_range=FactorRange(factors=list(panel.x_labels)), tools=_TOOLS,
                 width=_size(len(panel.x_labels), 420, 900, 200, 22), height=360,
                 x_axis_label=panel.x_name, y_axis_label=panel.y_name)
    points = []
    for name, row, color in zip(panel.series, values, _series_colors(len(panel.series))):
        source = ColumnDataSource({"x": list(panel.x_labels), "y": row, "series": [name] * len(row)})
        fig.line("x", "y", source=source, color=color, line_width=2, legend_label=name)
        points.append(fig.scatter("x", "y", source=source, color=color, size=6, legend_label=name))
    fig.add_tools(HoverTool(renderers=points, tooltips=[("series", "@series"), (panel.x_name or "x", "@x"),
                                                        (panel.value_name, "@y{0.0000}")]))
    fig.legend.click_policy = "hide"
    fig.add_layout(fig.legend[0], "right")  # beside the plot, not over the lines
    _style_x(fig, panel.x_labels)
    return fig


def _bars(panel: PlotData, title: str):
    from bokeh.models import ColumnDataSource, FactorRange, HoverTool
    from bokeh.plotting import figure

    values = np.asarray(panel.values, dtype=float)
    if len(panel.series) <= 1:
        x = list(panel.x_labels)
        series = [panel.series[0] if panel.series else ""] * len(x)
        colors = _series_colors(1) * len(x)
        ys = values[0]
    else:
        x = [(lab, s) for lab in panel.x_labels for s in panel.series]
        series = [s for _ in panel.x_labels for s in panel.series]
        colors = [c for _ in panel.x_labels for c in _series_colors(len(panel.series))]
        ys = values.T.ravel()
    source = ColumnDataSource({"x": x, "y": ys, "series": series, "color": colors})
    fig = figure(title=title, x_range=FactorRange(factors=x), tools=_TOOLS,
                 width=_size(len(x), 360, 900, 160, 26), height=360,
                 x_axis_label=panel.x_name, y_axis_label=panel.y_name)
    bars = fig.vbar(x="x", top="y", width=0.8, source=source, color="color")
    fig.add_tools(HoverTool(renderers=[bars], tooltips=[(panel.x_name or "x", "@x"), ("series", "@series"),
                                                        (panel.value_name, "@y{0.0000}")]))
    fig.xgrid.grid_line_color = None
    _style_x(fig, list(panel.x_labels))
    return fig


_DRAW = {"heatmap": _heatmap, "lines": _lines, "bars": _bars}


class BokehWrapper(PlotWrapper):
    """Plots as Bokeh objects: ``BokehWrapper.plot(cache=, spec=PlotSpec(...))`` returns a ``figure`` for
    one panel, else a ``GridPlot`` (inside a ``Column`` with a heading ``Div`` when the spec has a title)."""

    @classmethod
    def render(cls, bundle: PlotBundle):
        from bokeh.layouts import column, gridplot
        from bokeh.models import Div

        single = len(bundle.panels) == 1
        figs = [_DRAW[p.kind](p, (bundle.title or p.title) if single else p.title) for p in bundle.panels]
        if single:
            return figs[0]
        grid = gridplot(figs, ncols=bundle.ncols, toolbar_location="right")
        if bundle.title:
            return column(Div(text=f"<h3>{html.escape(bundle.title)}</h3>"), grid)
        return grid
