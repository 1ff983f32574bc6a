"""Real-browser test support: Debian's Chromium driven by Playwright, and a JupyterLab server to point it at.

Never downloads a browser: tests that need one are skipped when /usr/bin/chromium is missing.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Callable, Iterator

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (make test "
                                    "installs it with apt-get when run as root)")


@contextlib.contextmanager
def chromium_browser() -> Iterator["object"]:
    """Headless Debian Chromium under Playwright (the caller skips when it is missing: ``needs_chromium``)."""
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def chromium_page(width: int = 1400, height: int = 1000) -> Iterator["object"]:
    """A page in headless Debian Chromium."""
    with chromium_browser() as browser:
        yield browser.new_page(viewport={"width": width, "height": height})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd: list[str], cwd: Path, env: dict[str, str], log_path: Path, ready: "Callable[[], bool]",
                 what: str) -> tuple[subprocess.Popen, "IO[str]"]:
    """Start a server process logging to ``log_path`` and wait (90 s at most) until ``ready()`` is true."""
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if ready():
                return proc, log
        except OSError:
            if proc.poll() is not None:
                break
        time.sleep(0.3)
    stop_server(proc, log)
    raise RuntimeError(f"{what} did not start: {log_path.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen, log: "IO[str]") -> None:
    """Terminate a server process (killed if it lingers for 20 s) and close its log."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    log.close()


class JupyterLab:
    """A JupyterLab server on 127.0.0.1 serving ``root``, with the app exposed to page scripts."""

    token = "arrakis-browser-test"

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}", "--ServerApp.ip=127.0.0.1",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
               "--LabApp.expose_app_in_browser=True", "--ServerApp.port_retries=0"]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        self.proc, self.log = start_server(
            cmd, root, {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, root / ".jupyter-lab.log",
            lambda: bool(urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2)), "JupyterLab")

    def open(self, page, path: str) -> None:
        """Open ``path`` (relative to root) and wait until its kernel is ready."""
        page.goto(f"{self.url}/lab/tree/{path}?token={self.token}")
        page.wait_for_selector(".jp-NotebookPanel", timeout=60_000)
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                               " && window.jupyterapp.shell.currentWidget.sessionContext"
                               " && window.jupyterapp.shell.currentWidget.sessionContext.session", timeout=60_000)
        page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.ready")

    def run_all(self, page, timeout_ms: int = 300_000) -> None:
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait_for_function("() => { const nb = window.jupyterapp.shell.currentWidget.content;"
                               " return nb.widgets.every(c => c.model.type !== 'code' ||"
                               " (c.model.executionCount !== null && !c.node.classList.contains('jp-mod-running'))"
                               " ) && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status"
                               " === 'idle'; }", timeout=timeout_ms)

    def stop(self) -> None:
        stop_server(self.proc, self.log)
