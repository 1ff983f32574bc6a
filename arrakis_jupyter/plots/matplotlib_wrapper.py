"""``MatplotlibWrapper``: the panels of :mod:`arrakis_jupyter.plots.data` as one matplotlib ``Figure``.

matplotlib is optional (``pip install matplotlib``). Figures are built with
``matplotlib.figure.Figure`` directly, not pyplot: no backend or global figure state is touched, and
nothing is shown; a notebook displays the returned figure, ``fig.savefig`` writes it.
"""
from __future__ import annotations

import numpy as np

from .data import PlotBundle, PlotData
from .spec import PlotWrapper

_INSTALL_HINT = "MatplotlibWrapper needs matplotlib, which is not installed: pip install matplotlib"


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError as exc:  # optional dependency
        raise ImportError(_INSTALL_HINT) from exc
    return Figure


def _color_limits(panel: PlotData, values: np.ndarray) -> tuple[float | None, float | None]:
    if panel.value_range is not None:
        return panel.value_range
    finite = values[np.isfinite(values)]
    if panel.diverging and finite.size:
        m = float(np.abs(finite).max()) or 1.0
        return -m, m
    return None, None


def _xticks(ax, labels: list[str]) -> None:
    rotate = len(labels) > 8 or max((len(s) for s in labels), default=0) > 4
    ax.set_xticks(range(len(labels)), labels=labels, rotation=90 if rotate else 0, fontsize="small")


def _heatmap(fig, ax, panel: PlotData) -> None:
    values = np.asarray(panel.values, dtype=float)
    vmin, vmax = _color_limits(panel, values)
    im = ax.imshow(values, cmap="RdBu_r" if panel.diverging else "viridis", vmin=vmin, vmax=vmax,
                   aspect="auto", interpolation="nearest")
    _xticks(ax, list(panel.x_labels))
    ax.set_yticks(range(len(panel.y_labels)), labels=list(panel.y_labels), fontsize="small")
    fig.colorbar(im, ax=ax, label=panel.value_name)


def _lines(fig, ax, panel: PlotData) -> None:
    values = np.asarray(panel.values, dtype=float)
    for name, row in zip(panel.series, values):
        ax.plot(range(len(row)), row, marker="o", markersize=3, label=name)
    _xticks(ax, list(panel.x_labels))
    if panel.series:
        ax.legend(fontsize="small")


def _bars(fig, ax, panel: PlotData) -> None:
    values = np.asarray(panel.values, dtype=float)
    n = max(1, len(values))
    width = 0.8 / n
    x = np.arange(values.shape[1])
    for i, row in enumerate(values):
        label = panel.series[i] if i < len(panel.series) else None
        ax.bar(x + (i - (n - 1) / 2) * width, row, width=width, label=label)
    _xticks(ax, list(panel.x_labels))
    if len(panel.series) > 1:
        ax.legend(fontsize="small")


_DRAW = {"heatmap": _heatmap, "lines": _lines, "bars": _bars}


class MatplotlibWrapper(PlotWrapper):
    """Plots as a ``matplotlib.figure.Figure`` (one axes per panel); raises ImportError naming
    ``pip install matplotlib`` when matplotlib is not installed."""

    @classmethod
    def check_available(cls) -> None:
        _require_matplotlib()

    @classmethod
    def render(cls, bundle: PlotBundle):
        Figure = _require_matplotlib()
        ncols, nrows = bundle.ncols, bundle.nrows
        fig = Figure(figsize=(4.8 * ncols, 4.0 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        single = len(bundle.panels) == 1
        for ax, panel in zip(axes, bundle.panels):
            _DRAW[panel.kind](fig, ax, panel)
            ax.set_title((bundle.title or panel.title) if single else panel.title, fontsize="medium")
            ax.set_xlabel(panel.x_name)
            ax.set_ylabel(panel.y_name)
        for ax in axes[len(bundle.panels):]:
            ax.set_visible(False)
        if bundle.title and not single:
            fig.suptitle(bundle.title)
        return fig
