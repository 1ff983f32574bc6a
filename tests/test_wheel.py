"""The wheel: built by `python -m build`, it carries the prebuilt lab extension, the widget bundles and
the server-extension config; installed into a fresh venv, JupyterLab lists the extension as enabled."""
from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, text=True)
    (whl,) = out.glob("arrakis_jupyter-*.whl")
    return whl


def test_the_wheel_carries_the_front_ends(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    data = "arrakis_jupyter-0.1.0.data/data/"
    assert f"{data}share/jupyter/labextensions/arrakis-jupyter/package.json" in names
    assert any(n.startswith(f"{data}share/jupyter/labextensions/arrakis-jupyter/static/remoteEntry.") for n in names)
    assert f"{data}share/jupyter/labextensions/arrakis-jupyter/schemas/arrakis-jupyter/plugin.json" in names
    assert f"{data}etc/jupyter/jupyter_server_config.d/arrakis_jupyter.json" in names
    for bundle in ("head_explorer.js", "residual_view.js", "logit_lens.js", "patching_view.js", "widgets.css"):
        assert f"arrakis_jupyter/widgets/static/{bundle}" in names


def test_a_fresh_venv_lists_the_lab_extension_enabled(wheel, tmp_path):
    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True)
    subprocess.run([*pip, "jupyterlab>=4.2,<5"], check=True)  # what `jupyter labextension list` needs
    listing = subprocess.run([str(env_dir / "bin" / "jupyter"), "labextension", "list"], capture_output=True,
                             text=True, check=True)
    text = listing.stdout + listing.stderr
    line = next(line for line in text.splitlines() if "arrakis-jupyter" in line)
    assert "enabled" in line and "OK" in line, text
    assert (env_dir / "etc/jupyter/jupyter_server_config.d/arrakis_jupyter.json").is_file()
