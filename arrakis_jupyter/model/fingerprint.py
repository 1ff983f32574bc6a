"""A model's identity for the experiment store: architecture, a config hash and a weight hash.

The weight hash (BLAKE2b over every parameter's name, dtype, shape and bytes, offloaded ones read
from accelerate's store) is computed once per model and recomputed only when a parameter was
modified in place (tracked by PyTorch's per-tensor version counters).
"""
from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .hooked import HookedAutoModel


def _params_version(model: "HookedAutoModel") -> tuple[int, int]:
    params = list(model.hf_model.parameters())
    return len(params), sum(p._version for p in params)


def config_hash(model: "HookedAutoModel") -> str:
    text = json.dumps(model.hf_model.config.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weight_hash(model: "HookedAutoModel") -> str:
    h = hashlib.blake2b(digest_size=16)
    for module_name, module in model.hf_model.named_modules():
        for name in list(module._parameters):
            p = model.param(module, name)
            if p is None:
                continue
            t = p.detach().cpu().contiguous()
            h.update(f"{module_name}.{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def model_fingerprint(model: "HookedAutoModel") -> dict[str, Any]:
    """{architecture, model_type, name_or_path, n_params, dtype, device, config_hash, weight_hash}."""
    version = _params_version(model)
    cached = getattr(model, "_arrakis_fingerprint", None)
    if cached is not None and cached[0] == version:
        return dict(cached[1])
    cfg = model.hf_model.config
    fp = {
        "architecture": model.cfg.architecture,
        "model_type": model.cfg.hf_model_type,
        "name_or_path": str(getattr(cfg, "_name_or_path", "") or ""),
        "n_params": sum(p.numel() for p in model.hf_model.parameters()),
        "dtype": str(model.dtype).replace("torch.", ""),
        "device": str(model.device),
        "config_hash": config_hash(model),
        "weight_hash": weight_hash(model),
    }
    object.__setattr__(model, "_arrakis_fingerprint", (version, fp))
    return dict(fp)
