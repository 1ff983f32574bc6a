"""arrakis_jupyter: a mechanistic-interpretability workbench for JupyterLab.

Public names are imported on first use, so that the Jupyter server extension (which needs only the
store) starts without loading torch and transformers.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ActivationCache": ".model", "HookedAutoConfig": ".model", "HookedAutoModel": ".model", "HookPoint": ".model",
    "ModelConfig": ".model", "act_name": ".model", "load_model": ".model",
    "BaseInterpretabilityBench": ".bench", "ArrakisError": ".errors", "log_metric": ".recording", "Store": ".store",
    "BaseInterpretabilityTool": ".tools", "LabelledTensor": ".tools", "register_tool": ".tools",
}

__all__ = sorted(_EXPORTS) + ["__version__", "load_ipython_extension"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'arrakis_jupyter' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _jupyter_server_extension_points() -> list[dict]:
    """jupyter_server finds the REST API of the Experiments sidebar here."""
    return [{"module": "arrakis_jupyter.server"}]


def _jupyter_labextension_paths() -> list[dict]:
    """The prebuilt JupyterLab extension (the Experiments sidebar) shipped in the package."""
    return [{"src": "labextension", "dest": "arrakis-jupyter"}]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext arrakis_jupyter``: registers %%arrakis, %%arrakis_log and %arrakis."""
    from .magics import ArrakisMagics

    ipython.register_magics(ArrakisMagics(ipython))
