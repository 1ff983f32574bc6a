"""The Jupyter server extension: a REST API over the experiment store for the Experiments sidebar."""
from __future__ import annotations

from typing import Any


def _load_jupyter_server_extension(server_app: Any) -> None:
    from .handlers import setup_handlers

    setup_handlers(server_app.web_app, server_app.root_dir)
    server_app.log.info("arrakis_jupyter: experiment store API at /arrakis/api/")


load_jupyter_server_extension = _load_jupyter_server_extension  # older servers' name
