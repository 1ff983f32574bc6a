"""Architecture adapters: one small file per HF family; ``adapter_for(hf_model)`` picks one."""
from __future__ import annotations

from torch import nn

from ...errors import UnsupportedArchitectureError
from .base import Adapter
from .gpt2 import GPT2Adapter
from .gpt_neo import GPTNeoAdapter
from .gpt_neox import GPTNeoXAdapter
from .llama import GemmaAdapter, LlamaAdapter
from .phi3 import Phi3Adapter
from .stablelm import StableLmAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    mt: cls
    for cls in (GPT2Adapter, GPTNeoAdapter, GPTNeoXAdapter, LlamaAdapter, GemmaAdapter, Phi3Adapter, StableLmAdapter)
    for mt in cls.model_types
}


def adapter_for(hf_model: nn.Module) -> Adapter:
    """The adapter of ``hf_model``'s family, or UnsupportedArchitectureError naming the supported ones."""
    model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {model_type!r} ({type(hf_model).__name__}); supported HF model types: "
            f"{', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type](hf_model)
