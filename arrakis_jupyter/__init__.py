"""arrakis_jupyter: a mechanistic-interpretability workbench for JupyterLab."""
from .errors import ArrakisError
from .model import (ActivationCache, HookedAutoConfig, HookedAutoModel, HookPoint, ModelConfig, act_name,
                    load_model)

__version__ = "0.1.0"

__all__ = ["ActivationCache", "ArrakisError", "HookPoint", "HookedAutoConfig", "HookedAutoModel", "ModelConfig",
           "__version__", "act_name", "load_model"]
