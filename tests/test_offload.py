"""A model dispatched by accelerate with part of it offloaded to disk still hooks and caches correctly."""
from __future__ import annotations

import torch

from arrakis_jupyter import HookedAutoModel
from arrakis_jupyter.model.loading import converted_default_model_dir


def test_disk_offloaded_model_matches_unsharded(default_model, tmp_path):
    path = converted_default_model_dir()
    offloaded = HookedAutoModel.from_pretrained(str(path), device_map="auto", max_memory={"cpu": "250MB"},
                                                offload_folder=str(tmp_path))
    placement = set(offloaded.hf_model.hf_device_map.values())
    assert "disk" in placement, placement
    tokens = default_model.to_tokens("The Eiffel Tower is located in the city of")
    names = lambda n: n.endswith(("hook_resid_post", "hook_pattern", "hook_result", "hook_z"))  # noqa: E731
    with torch.no_grad():
        ref_logits, ref = default_model.run_with_cache(tokens, names_filter=names)
        logits, cache = offloaded.run_with_cache(tokens, names_filter=names)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-5)
    for name in ("blocks.29.hook_resid_post", "blocks.20.attn.hook_pattern", "blocks.25.attn.hook_result"):
        torch.testing.assert_close(cache[name], ref[name], atol=1e-4, rtol=1e-5)
    # weights of offloaded layers are read from the offload store
    torch.testing.assert_close(offloaded.W_O[29], default_model.W_O[29])
