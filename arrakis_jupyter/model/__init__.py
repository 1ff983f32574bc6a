"""The hooked model: HookedAutoModel, its config, ActivationCache and the default model loader."""
from .cache import ActivationCache, act_name
from .config import ARCHITECTURES, HookedAutoConfig, ModelConfig
from .hooked import HookedAutoModel
from .hooks import HookPoint
from .loading import load_model

__all__ = ["ARCHITECTURES", "ActivationCache", "HookPoint", "HookedAutoConfig", "HookedAutoModel", "ModelConfig",
           "act_name", "load_model"]
