"""Arrakis-compatible plotting: ``PlotSpec`` + ``BokehWrapper`` / ``MatplotlibWrapper``.

    from arrakis_jupyter.plots import PlotSpec, BokehWrapper
    _, cache = model.run_with_cache(tokens)
    fig = BokehWrapper.plot(cache=cache, spec=PlotSpec("attention", "blocks.0.attn.hook_pattern", head=1),
             tokens=tokens)
    # Arrakis's bench style: BokehWrapper.plot(BokehWrapper, cache=cache, plot_type="attention",
    #                                         data_keys=[...], title=None, head=1)

The numbers behind each plot type come from :func:`plot_data` (documented in
:mod:`arrakis_jupyter.plots.data`); the wrappers only draw them.
"""
from .bokeh_wrapper import BokehWrapper
from .data import (
    HOOK_SITES,
    OPTIONS,
    PlotBundle,
    PlotData,
    attention_statistics,
    induction_scores,
    plot_data,
    qk_scores,
    top_neurons,
)
from .matplotlib_wrapper import MatplotlibWrapper
from .spec import PLOT_TYPES, PlotSpec, PlotWrapper, resolve_plot_call

__all__ = [
    "HOOK_SITES",
    "OPTIONS",
    "PLOT_TYPES",
    "BokehWrapper",
    "MatplotlibWrapper",
    "PlotBundle",
    "PlotData",
    "PlotSpec",
    "PlotWrapper",
    "attention_statistics",
    "induction_scores",
    "plot_data",
    "qk_scores",
    "resolve_plot_call",
    "top_neurons",
]
