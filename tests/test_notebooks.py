"""The example notebooks run top to bottom, headless (nbclient), and are up to date with their source."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import nbclient
import nbformat
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


NOTEBOOKS = {"01_quickstart.ipynb": ("QUICKSTART", ["Paris", "P(Paris) ablated"]),
             "02_circuits.ipynb": ("CIRCUITS", ["L18H6", "sum of parts 6.1196  logit difference 6.1196", "clean p"])}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_match_their_source(name):
    spec = importlib.util.spec_from_file_location("make_notebooks", EXAMPLES / "make_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    stored = nbformat.read(EXAMPLES / name, as_version=4)
    assert [c.source for c in stored.cells] == [src for _, src in getattr(mod, NOTEBOOKS[name][0])]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_headless(name, default_model):
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    for expected in NOTEBOOKS[name][1]:
        assert expected in text
