"""The bench's versioned experiments: log_experiment, profile_model, test_hypothesis (Arrakis compatible)."""
from __future__ import annotations

import copy

import pytest
import scipy.stats
import torch

from arrakis_jupyter import BaseInterpretabilityBench, log_metric
from arrakis_jupyter.errors import ArrakisValueError
from arrakis_jupyter.profiling import ModelProfile
from conftest import tiny


@pytest.fixture(scope="module")
def model():
    return tiny("gpt2")


@pytest.fixture
def exp(model, tmp_path):
    return BaseInterpretabilityBench(model, save_dir=tmp_path)


def test_the_arrakis_walkthrough_versions_functions(exp, model):
    @exp.log_experiment
    @exp.use_tools("attention")
    def analyze_attention(input_ids, layer, attention):
        log_metric("entropy", 1.25)
        return {"pattern": attention.attention_patterns(input_ids, layer, 0).values}

    tokens = torch.tensor([[1, 2, 3, 4]])
    first = analyze_attention(tokens, 0)
    analyze_attention(tokens, layer=1)
    versions = exp.list_versions("analyze_attention")
    assert len(versions) == 1
    v = exp.get_version("analyze_attention", versions[0])
    assert v["source"].startswith("@exp.log_experiment\n@exp.use_tools(\"attention\")\ndef analyze_attention(")
    assert v["runs"] == 2 and v["kwargs"] == {"layer": 1} and torch.equal(v["args"][0], tokens)
    runs = exp.store.runs("analyze_attention")
    rec = exp.store.run(int(runs["run_id"][0]))
    assert torch.equal(rec.result["pattern"], first["pattern"]) and rec.metrics["value"].tolist() == [1.25]
    assert rec.model == model.fingerprint() and rec.status == "ok"

    @exp.log_experiment  # the same name, edited: a second version
    def analyze_attention(input_ids, layer):  # noqa: F811
        return layer * 2

    assert analyze_attention(tokens, 3) == 6
    versions2 = exp.list_versions("analyze_attention")
    assert versions2[0] == versions[0] and len(versions2) == 2
    assert exp.get_version("analyze_attention", versions2[1])["result"] == 6
    assert exp.list_versions("never_run") == [] and exp.get_version("never_run", "abcd") is None


def test_a_failing_experiment_is_recorded_and_raises(exp):
    @exp.log_experiment(tags=["risky"], note="expected to fail")
    def broken(x):
        raise RuntimeError(f"bad {x}")

    with pytest.raises(RuntimeError, match="bad 7"):
        broken(7)
    rec = exp.store.last_run("broken")
    assert rec.status == "error" and "RuntimeError: bad 7" in rec.error
    assert rec.tags == ["risky"] and rec.note == "expected to fail"


def test_profile_model_attaches_a_profile_and_records_its_metrics(exp, model):
    @exp.profile_model(granularity="component")
    def forward_twice(tokens):
        with torch.no_grad():
            model(tokens)
            return float(model(tokens)[0, -1, 0])

    out = forward_twice(torch.tensor([[1, 2, 3]]))
    profile = out["profiling"]
    assert isinstance(profile, ModelProfile) and isinstance(out["result"], float)
    table = profile.table.set_index("module")
    assert profile.forward_passes == 2 and (table["calls"] == 2).all()
    assert {"blocks.0.attn", "blocks.1.mlp", "unembed"} <= set(table.index)
    rec = exp.store.last_run("forward_twice")
    assert dict(zip(rec.metrics["name"], rec.metrics["value"])) == pytest.approx(profile.metrics())
    assert isinstance(rec.result["profiling"], ModelProfile)
    with pytest.raises(ArrakisValueError, match="granularity 'head' is not one of layer, component"):
        exp.profile_model("head")


def test_test_hypothesis_is_a_real_welch_test(exp):
    null_values = iter([0.1, -0.3, 0.2, 0.05, -0.1, 0.3, -0.2, 0.0])
    alt_values = iter([1.1, 0.7, 1.4, 0.9, 1.2, 0.6, 1.0, 1.3])

    @exp.test_hypothesis(lambda: next(null_values), lambda: next(alt_values), n_samples=8, alpha=0.01)
    def ablation_matters():
        return {"note": "compares ablated vs clean logit diff"}

    out = ablation_matters()
    test = out["hypothesis_test"]
    ref = scipy.stats.ttest_ind([1.1, 0.7, 1.4, 0.9, 1.2, 0.6, 1.0, 1.3], [0.1, -0.3, 0.2, 0.05, -0.1, 0.3, -0.2, 0.0],
                                equal_var=False)
    assert test["method"] == "welch" and test["statistic"] == pytest.approx(ref.statistic, rel=1e-10)
    assert test["p_value"] == pytest.approx(ref.pvalue, rel=1e-10) and test["reject_null"] is True
    assert test["n_null"] == test["n_alt"] == 8 and out["note"].startswith("compares")
    metrics = exp.store.last_run("ablation_matters").metrics.set_index("name")["value"]
    assert metrics["hypothesis/p_value"] == pytest.approx(ref.pvalue) and metrics["hypothesis/reject_null"] == 1.0
    with pytest.raises(ArrakisValueError, match="n_samples must be an int >= 2"):
        exp.test_hypothesis(lambda: 0, lambda: 1, n_samples=1)


def test_stacked_decorators_make_one_run(exp, model):
    gen = torch.Generator().manual_seed(0)

    @exp.log_experiment
    @exp.profile_model()
    @exp.test_hypothesis(lambda t: float(torch.randn((), generator=gen)),
                         lambda t: float(torch.randn((), generator=gen)) + 5, n_samples=10, method="permutation")
    def everything(tokens):
        with torch.no_grad():
            return {"logit": float(model(tokens)[0, -1, 0])}

    out = everything(torch.tensor([[5, 6]]))
    assert {"logit", "profiling", "hypothesis_test"} <= set(out)
    assert out["hypothesis_test"]["method"] == "permutation" and out["hypothesis_test"]["p_value"] < 0.01
    runs = exp.store.runs("everything")
    assert len(runs) == 1
    names = set(exp.store.run(int(runs["run_id"][0])).metrics["name"])
    assert "hypothesis/p_value" in names and "profile/total_ms" in names


def test_fingerprint_changes_with_weights_not_with_copies(model):
    fp = model.fingerprint()
    clone = copy.deepcopy(model)
    assert clone.fingerprint() == fp
    with torch.no_grad():
        next(clone.hf_model.parameters()).add_(1e-3)
    edited = clone.fingerprint()
    assert edited["weight_hash"] != fp["weight_hash"] and edited["config_hash"] == fp["config_hash"]
    assert tiny("llama").fingerprint()["config_hash"] != fp["config_hash"]


def test_plot_results_passes_the_figure_and_records_it_with_the_run(exp, model):
    from bokeh.models import LayoutDOM

    from arrakis_jupyter.plots import BokehWrapper, MatplotlibWrapper, PlotSpec
    from arrakis_jupyter.store import StoredFigure

    tokens = torch.tensor([[1, 2, 3, 4]])

    @exp.log_experiment
    @exp.plot_results(PlotSpec(plot_type="attention", data_keys=["blocks.0.attn.hook_pattern"], head=1),
                      PlotSpec("residual_stream", ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]),
                      input_ids=tokens)
    def plotting(fig=None):
        return {"n": len(fig)}

    assert plotting() == {"n": 2}
    run = exp.store.last_run("plotting")
    assert len(run.figures) == 2 and all(isinstance(f, StoredFigure) and f.kind == "html" for f in run.figures)

    @exp.plot_results(PlotSpec("attention", "blocks.1.attn.hook_pattern"), input_ids=tokens)
    def one(fig=None):
        return fig

    assert isinstance(one(), LayoutDOM)  # outside a recorded run: drawn, not stored
    with pytest.raises(ArrakisValueError, match="must be BokehWrapper, MatplotlibWrapper"):
        exp.set_plotting_lib("plotly")
    with pytest.raises(ArrakisValueError, match="takes one or more PlotSpec"):
        exp.plot_results("attention", input_ids=tokens)
    exp.set_plotting_lib(BokehWrapper)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install matplotlib"):
            exp.set_plotting_lib(MatplotlibWrapper)
