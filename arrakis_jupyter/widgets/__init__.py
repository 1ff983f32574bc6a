"""Inline interactive views (anywidget) of the tools' results, each with a static fallback."""
from .head_explorer import HeadExplorer
from .logit_lens import LogitLensView
from .patching_view import PatchingView
from .residual_view import ResidualBars, ResidualView

__all__ = ["HeadExplorer", "LogitLensView", "PatchingView", "ResidualBars", "ResidualView"]
