"""What every arrakis widget shares: bundled front end, binary traits, a static fallback."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import torch
import traitlets

STATIC = Path(__file__).parent / "static"


def f32(values: Any) -> bytes:
    """Little-endian float32 bytes of a tensor / array (C order): what the front end reads as a DataView."""
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    return np.ascontiguousarray(values, dtype="<f4").tobytes()


def i32(values: Any) -> bytes:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.ascontiguousarray(values, dtype="<i4").tobytes()


class ArrakisWidget(anywidget.AnyWidget):
    """Base of the widgets: a title, the shared CSS, and a static HTML fallback (PNG + text) in the
    mimebundle, so a notebook opened without the widget front end (exported HTML, GitHub) still shows it."""

    _css = STATIC / "widgets.css"
    title = traitlets.Unicode("").tag(sync=True)

    def fallback_html(self) -> str:
        """Static HTML shown where widgets cannot render."""
        raise NotImplementedError(f"{type(self).__name__} must define fallback_html (its static HTML view)")

    def _repr_mimebundle_(self, **kwargs: Any):
        return with_fallback(super()._repr_mimebundle_(**kwargs), self.title, self.fallback_html())


def with_fallback(bundle: Any, title: str, fallback: str) -> Any:
    """A widget mimebundle with a static ``text/html`` fallback added."""
    data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
    data = dict(data)
    data["text/html"] = f"<div class='arrakis-fallback'><b>{html.escape(title)}</b>{fallback}</div>"
    return data, metadata
