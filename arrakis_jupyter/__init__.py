"""arrakis_jupyter: a mechanistic-interpretability workbench for JupyterLab."""
from .bench import BaseInterpretabilityBench
from .errors import ArrakisError
from .model import (ActivationCache, HookedAutoConfig, HookedAutoModel, HookPoint, ModelConfig, act_name,
                    load_model)
from .recording import log_metric
from .store import Store
from .tools import BaseInterpretabilityTool, LabelledTensor, register_tool

__version__ = "0.1.0"

__all__ = ["ActivationCache", "ArrakisError", "BaseInterpretabilityBench", "BaseInterpretabilityTool", "HookPoint",
           "HookedAutoConfig", "HookedAutoModel", "LabelledTensor", "ModelConfig", "Store", "__version__", "act_name",
           "load_ipython_extension", "load_model", "log_metric", "register_tool"]


def load_ipython_extension(ipython) -> None:
    """``%load_ext arrakis_jupyter``: registers %%arrakis, %%arrakis_log and %arrakis."""
    from .magics import ArrakisMagics

    ipython.register_magics(ArrakisMagics(ipython))
