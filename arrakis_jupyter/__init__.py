"""arrakis_jupyter: a mechanistic-interpretability workbench for JupyterLab."""
from .bench import BaseInterpretabilityBench
from .errors import ArrakisError
from .model import (ActivationCache, HookedAutoConfig, HookedAutoModel, HookPoint, ModelConfig, act_name,
                    load_model)
from .tools import BaseInterpretabilityTool, LabelledTensor, register_tool

__version__ = "0.1.0"

__all__ = ["ActivationCache", "ArrakisError", "BaseInterpretabilityBench", "BaseInterpretabilityTool", "HookPoint",
           "HookedAutoConfig", "HookedAutoModel", "LabelledTensor", "ModelConfig", "__version__", "act_name",
           "load_model", "register_tool"]
