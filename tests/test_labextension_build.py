"""The prebuilt JupyterLab extension committed in arrakis_jupyter/labextension/ is what its sources build to."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REMOTE_ENTRY = re.compile(rb"remoteEntry\.[0-9a-f]+\.js")


def _normalised(folder: Path) -> dict[str, bytes]:
    """The build's files. Webpack names the container entry's module by its absolute path, so the
    ``remoteEntry`` bootstrap (and the package.json that names it) differ between checkouts in the digits
    only: those are masked; every chunk holding our code must match byte for byte."""
    files = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        name, data = p.relative_to(folder).as_posix(), p.read_bytes()
        if REMOTE_ENTRY.search(name.encode()) or name == "package.json":
            name = REMOTE_ENTRY.sub(b"remoteEntry.js", name.encode()).decode()
            data = REMOTE_ENTRY.sub(b"remoteEntry.js", data)
            if name.startswith("static/remoteEntry"):
                data = re.sub(rb"\d+", b"0", data)
        files[name] = data
    return files

ROOT = Path(__file__).resolve().parent.parent
BUILT = ROOT / "arrakis_jupyter" / "labextension"


@pytest.mark.skipif(not (ROOT / "node_modules" / "@jupyterlab" / "builder").exists() or not shutil.which("node"),
                    reason="the front-end toolchain is not installed (make test runs `npm ci`)")
def test_the_committed_lab_extension_is_up_to_date(tmp_path):
    # the same layout as the repository (package.json untouched: its content feeds the chunk hashes)
    src = tmp_path / "labextension"
    shutil.copytree(ROOT / "labextension", src, ignore=shutil.ignore_patterns("node_modules", "lib"))
    # a hard-linked copy of node_modules (not a symlink: webpack's chunk ids depend on resolved paths)
    subprocess.run(["cp", "-al", str(ROOT / "node_modules"), str(tmp_path / "node_modules")], check=True)
    out = src / json.loads((src / "package.json").read_text())["jupyterlab"]["outputDir"]
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run([str(tmp_path / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.lib.json"], cwd=src, check=True,
                   env=env, capture_output=True)
    subprocess.run(["node", "build-labextension.mjs"], cwd=src, check=True, env=env, capture_output=True)
    built, committed = _normalised(out), _normalised(BUILT)
    assert set(built) == set(committed), "run `PATH=.venv/bin:$PATH npm run build` and commit arrakis_jupyter/labextension"
    stale = [str(p) for p in built if built[p] != committed[p]]
    assert not stale, f"stale build output {stale}: run `PATH=.venv/bin:$PATH npm run build` and commit it"
