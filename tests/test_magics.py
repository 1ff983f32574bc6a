"""%%arrakis, %%arrakis_log and %arrakis in a real IPython shell."""
from __future__ import annotations

import warnings

import pytest
import torch
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from arrakis_jupyter import HookedAutoModel
from arrakis_jupyter.store import Store, Unserialisable, Version, VersionDiff
from conftest import tiny


@pytest.fixture(scope="module")
def shell():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "arrakis_jupyter")
    return ip


@pytest.fixture
def ip(shell, tmp_path):
    shell.run_line_magic("arrakis", f"open {tmp_path}")
    shell.user_ns["model"] = tiny("llama")
    shell.user_ns["torch"] = torch
    yield shell
    shell.user_ns.pop("__session__", None)


def run(ip, source, cell_id=None):
    return ip.run_cell(source, store_history=True, cell_id=cell_id)


def store(ip):
    return Store(ip.run_line_magic("arrakis", "open").split(": ", 1)[1].rsplit(" (", 1)[0])


def test_a_cell_becomes_a_version_and_run_with_tools_bound_to_the_model(ip, capsys):
    ip.user_ns["__session__"] = "/work/notebooks/ioi.ipynb"
    r = run(ip, "%%arrakis ioi --tools attention,logit_lens --tag first --note 'a note'\n"
                "print('hello')\n"
                "from arrakis_jupyter import log_metric\n"
                "log_metric('score', torch.tensor(0.5), step=1)\n"
                "assert attention.model is model and logit_lens.model is model\n"
                "attention.attention_patterns(torch.tensor([[1, 2, 3]]), 0, 1)", cell_id="cell-42")
    assert r.success, r.error_in_exec
    pattern = r.result
    assert pattern.dims == ("query", "key") and pattern.shape == (3, 3)
    out = capsys.readouterr().out
    assert "hello" in out and "[arrakis] ioi v1" in out and "· run 1 · ok" in out
    s = store(ip)
    (run_row,) = s.runs("ioi").itertuples()
    rec = s.run(int(run_row.run_id))
    assert torch.equal(rec.result.values, pattern.values) and rec.result.coords == pattern.coords
    assert rec.stdout == "hello\n" and rec.status == "ok"
    assert rec.tags == ["first"] and rec.note == "a note" and rec.cell_id == "cell-42"
    assert rec.arguments == {"model": None, "tools": ["attention", "logit_lens"]}
    assert rec.notebook == "/work/notebooks/ioi.ipynb"
    assert rec.model == ip.user_ns["model"].fingerprint() and rec.model["architecture"] == "LlamaForCausalLM"
    assert set(rec.environment) >= {"python", "torch", "transformers", "arrakis_jupyter", "device"}
    assert rec.metrics[["name", "value"]].values.tolist() == [["score", 0.5]]
    assert "attention" not in ip.user_ns and "logit_lens" not in ip.user_ns  # bindings last for the cell only


def test_edits_make_versions_whitespace_does_not_and_diff_shows_the_edit(ip):
    run(ip, "%%arrakis exp\nx = 1+1\nx * 10")
    run(ip, "%%arrakis exp\nx = 1 + 1\n\nx*10   ")
    r = run(ip, "%%arrakis exp\nx = 1 + 2\nx * 10")
    assert r.result == 30
    v = store(ip).versions("exp")
    assert list(v["runs"]) == [2, 1]
    diff = ip.run_line_magic("arrakis", "diff exp")
    assert isinstance(diff, VersionDiff) and "-x = 1+1\n+x = 1 + 2\n" in diff.source_diff
    assert diff.results.loc[0, "a"] == "20" and diff.results.loc[0, "b"] == "30"
    explicit = ip.run_line_magic("arrakis", f"diff exp {v['hash'][0][:6]} v2")
    assert explicit.source_diff == diff.source_diff
    shown = ip.run_line_magic("arrakis", "show exp")
    assert isinstance(shown, Version) and shown.index == 2 and "x = 1 + 2" in shown.source
    assert "<span" in shown._repr_html_()  # highlighted source
    assert ip.run_line_magic("arrakis", "show exp v1").source == "x = 1+1\nx * 10"
    assert list(ip.run_line_magic("arrakis", "list")["name"]) == ["exp"]
    assert len(ip.run_line_magic("arrakis", "runs exp")) == 3 and len(ip.run_line_magic("arrakis", "runs exp v1")) == 2


def test_a_failing_cell_is_recorded_with_its_traceback_and_still_raises(ip):
    r = run(ip, "%%arrakis_log failing\nprint('before')\n1 / 0")
    assert isinstance(r.error_in_exec, ZeroDivisionError)
    rec = store(ip).last_run("failing")
    assert rec.status == "error" and "ZeroDivisionError: division by zero" in rec.error and rec.stdout == "before\n"
    assert rec.result is None


def test_keyboard_interrupt_is_recorded_as_interrupted(ip):
    r = run(ip, "%%arrakis_log stopped\nraise KeyboardInterrupt")
    assert isinstance(r.error_in_exec, KeyboardInterrupt)
    assert store(ip).last_run("stopped").status == "interrupted"


def test_arrakis_log_needs_no_model_and_records_none(ip):
    r = run(ip, "%%arrakis_log plain --tag t\n{'a': [1, 2]}")
    assert r.result == {"a": [1, 2]}
    rec = store(ip).last_run("plain")
    assert rec.model is None and rec.result == {"a": [1, 2]} and rec.tags == ["t"]
    run(ip, "%%arrakis_log plain2 --model model\n1")
    assert store(ip).last_run("plain2").model["weight_hash"] == ip.user_ns["model"].fingerprint()["weight_hash"]


@pytest.mark.parametrize("line, message", [
    ("%%arrakis", "the following arguments are required: name"),
    ("%%arrakis x --bogus", "unrecognized arguments: --bogus"),
    ("%%arrakis a/b", "experiment name 'a/b' contains a path separator"),
    ("%%arrakis 'bad\tname'", "contains a control character"),
    ("%%arrakis x --tools atention", "unknown tool 'atention'; available tools: .*attention"),
    ("%%arrakis x --tools 'two words'", "not a valid variable name"),
    ("%%arrakis x --model nope", "no variable named 'nope'; variables holding a HookedAutoModel: model"),
    ("%%arrakis x --model number", "number is a int, not a HookedAutoModel"),
    ("%arrakis frobnicate", "unknown command or wrong arguments"),
    ("%arrakis show nothing_here", "no experiment named 'nothing_here'"),
])
def test_bad_magic_arguments_print_usage_and_record_nothing(ip, line, message):
    ip.user_ns["number"] = 3
    before = store(ip).experiments()
    magic, _, rest = line.partition(" ")
    with pytest.raises(UsageError, match=message):
        if magic == "%%arrakis":
            ip.run_cell_magic("arrakis", rest, "ran = True")
        else:
            ip.run_line_magic("arrakis", rest)
    assert "ran" not in ip.user_ns
    assert store(ip).experiments().equals(before)


def test_tools_need_a_model(ip, monkeypatch):
    monkeypatch.setattr(HookedAutoModel, "_last_created", None)
    with pytest.raises(UsageError, match="--tools needs a model and none exists yet"):
        ip.run_cell_magic("arrakis", "x --tools attention", "1")


def test_no_store_runs_with_tools_but_records_nothing(ip):
    r = run(ip, "%%arrakis ghost --tools residual --no-store\ntype(residual).__name__")
    assert r.result == "ResidualTools"
    assert "ghost" not in set(store(ip).experiments()["name"])


def test_unserialisable_results_warn_and_keep_a_typed_placeholder(ip):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(ip, "%%arrakis_log gen\n(i for i in range(3))")
    assert any("a result of type generator could not be serialised" in str(w.message) for w in caught)
    result = store(ip).last_run("gen").result
    assert isinstance(result, Unserialisable) and result.python_type == "generator"


def test_long_output_is_capped_keeping_head_and_tail(ip, capsys):
    from arrakis_jupyter.recording import OUTPUT_CAP

    run(ip, "%%arrakis_log loud\nprint('A' * 100_000 + 'END')")
    assert "END" in capsys.readouterr().out  # the user still sees everything
    text = store(ip).last_run("loud").stdout
    assert text.startswith("A" * (OUTPUT_CAP // 2)) and text.rstrip().endswith("END")
    assert f"characters cut: a run keeps the first and last {OUTPUT_CAP // 2}" in text
    assert len(text) < OUTPUT_CAP + 200


def test_log_metric_outside_a_run_warns(ip):
    from arrakis_jupyter import log_metric

    with pytest.warns(UserWarning, match="outside an experiment run was not recorded"):
        log_metric("x", 1.0)
    with pytest.raises(ValueError, match="metric 'x' must be a real number, got str"):
        log_metric("x", "high")


def test_export_and_import_from_the_line_magic(ip, tmp_path):
    run(ip, "%%arrakis_log shipped\n41 + 1")
    archive = tmp_path / "out.zip"
    assert "exported to" in ip.run_line_magic("arrakis", f"export {archive} shipped")
    ip.run_line_magic("arrakis", f"open {tmp_path / 'elsewhere'}")
    assert ip.run_line_magic("arrakis", f"import {archive}") == {"experiments": 1, "runs": 1, "skipped": 0}
    assert store(ip).last_run("shipped").result == 42


def test_a_real_kernel_records_the_cell_id_the_front_end_sends(tmp_path):
    """JupyterLab puts the cell id in the execute request's metadata (``cellId``); ipykernel hands it on."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", env={**__import__("os").environ, "ARRAKIS_HOME": str(tmp_path)})
    try:
        code = "%load_ext arrakis_jupyter\n"
        kc.execute_interactive(code, timeout=60)
        content = {"code": "%%arrakis_log from_lab\n6 * 7", "silent": False, "store_history": True,
                   "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}
        msg = kc.session.msg("execute_request", content, metadata={"cellId": "lab-cell-7"})
        kc.shell_channel.send(msg)
        reply = kc.get_shell_msg(timeout=60)
        while reply["parent_header"].get("msg_id") != msg["header"]["msg_id"]:
            reply = kc.get_shell_msg(timeout=60)
        assert reply["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    run = Store(tmp_path).last_run("from_lab")
    assert run.cell_id == "lab-cell-7" and run.result == 42
