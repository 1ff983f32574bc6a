"""The experiment store: versions, runs, results, diffs, archives, bad input (arrakis_jupyter.store)."""
from __future__ import annotations

import json
import sqlite3
import time

import numpy as np
import pandas as pd
import pytest
import torch

from arrakis_jupyter.errors import ArrakisKeyError, ArrakisValueError
from arrakis_jupyter.store import (RunRecord, Store, StoreError, StoredFigure, StoreVersionError, Unserialisable,
                                   normalise_source, source_hash)
from arrakis_jupyter.store import schema
from arrakis_jupyter.tools import LabelledTensor


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store")


def record(store, name="exp", source="x = 1\nx", **kw):
    return store.record(RunRecord(name=name, source=source, **kw))


# ---- versions ------------------------------------------------------------------------------------
def test_whitespace_only_edits_keep_the_version_and_real_edits_make_a_new_one(store):
    base = "def f(a, b):\n    return a+b  # sum\n\nf(1, 2)\n"
    same = ["def f(a,b):\n  return a + b  # sum\nf(1,2)", "\n\ndef f( a, b ):\r\n\treturn a+b   # sum\n\n\n\nf(1, 2)   \n"]
    different = ["def f(a, b):\n    return a-b  # sum\nf(1, 2)", "def f(a, b):\n    return a+b  # total\nf(1, 2)",
                 "def f(a, b):\n    return a+b\nf(1, 2)", "def f(a, b):\n    pass\nreturn a+b\nf(1, 2)",
                 "def f(a, b):\n    return 'a+b'\nf(1, 2)", "def f(a, b):\n    return 'a + b'\nf(1, 2)"]
    assert {source_hash(s) for s in [base] + same} == {source_hash(base)}
    hashes = {source_hash(s) for s in different}
    assert len(hashes) == len(different) and source_hash(base) not in hashes
    # IPython syntax that does not tokenize falls back to collapsing whitespace
    assert source_hash("!ls  -la\n%time x = '") == source_hash("!ls -la\n\n%time x = '")
    assert normalise_source("a=1") == normalise_source("a = 1")

    for s in [base] + same + different[:1]:
        record(store, source=s)
    v = store.versions("exp")
    assert list(v["runs"]) == [3, 1] and list(v["v"]) == [1, 2]
    assert store.version("exp", "v1").source == base  # the source first seen is kept
    assert v["first_seen"].is_monotonic_increasing and (v["last_seen"] >= v["first_seen"]).all()


def test_versions_are_found_by_hash_prefix_or_number_and_bad_refs_are_named(store):
    record(store, source="a = 1")
    record(store, source="a = 2")
    full = store.versions("exp")["hash"].tolist()
    assert store.resolve("exp", full[1]) == full[1] == store.resolve("exp", full[1][:5]) == store.resolve("exp", "v2")
    with pytest.raises(ArrakisKeyError, match="has versions v1..v2, not v3"):
        store.resolve("exp", "v3")
    with pytest.raises(ArrakisKeyError, match="has no version 'zzzz'"):
        store.resolve("exp", "zzzz")
    with pytest.raises(ArrakisKeyError, match="no experiment named 'exq'.*Did you mean 'exp'"):
        store.versions("exq")
    assert store.version_number("exp", full[1]) == 2


def test_runs_record_everything_and_filter_and_paginate(store):
    t0 = time.time()
    ids = [record(store, started=t0 + i, duration=0.5, status=s, tags=tags, note=f"n{i}", notebook="a.ipynb",
                  cell_id=f"c{i}", stdout=f"out{i}", stderr="err", error="Traceback..." if s == "error" else None,
                  model={"architecture": "X", "weight_hash": "abc"}, environment={"torch": "2.13"},
                  metrics=[("loss", 0, 2.0, t0), ("loss", 1, 1.0 + i, t0), ("acc", None, float("nan"), t0)],
                  result=i)
           for i, (s, tags) in enumerate([("ok", ["a"]), ("error", ["a", "b"]), ("interrupted", []), ("ok", ["b"])])]
    runs = store.runs("exp")
    assert list(runs["run_id"]) == ids and list(runs["status"]) == ["ok", "error", "interrupted", "ok"]
    assert list(store.runs("exp", status="ok")["run_id"]) == [ids[0], ids[3]]
    assert list(store.runs("exp", tag="b")["run_id"]) == [ids[1], ids[3]]
    assert list(store.runs("exp", since=t0 + 1, until=pd.Timestamp(t0 + 2.5, unit="s"))["run_id"]) == ids[1:3]
    assert list(store.runs("exp", limit=2, offset=1)["run_id"]) == ids[1:3]
    with pytest.raises(ArrakisValueError, match="status filter 'failed' is not one of ok, error, interrupted"):
        store.runs("exp", status="failed")

    r = store.run(ids[1])
    assert (r.status, r.error, r.stdout, r.stderr, r.note, r.notebook, r.cell_id) == (
        "error", "Traceback...", "out1", "err", "n1", "a.ipynb", "c1")
    assert r.tags == ["a", "b"] and r.model["weight_hash"] == "abc" and r.environment == {"torch": "2.13"}
    assert r.duration == 0.5 and r.result == 1 and r.result_type == "int"
    assert r.metrics["name"].tolist() == ["loss", "loss", "acc"] and r.metrics["step"].dtype == "Int64"
    assert r.metrics["step"].tolist()[:2] == [0, 1] and r.metrics["step"].isna().tolist() == [False, False, True]
    assert r.metrics["value"].tolist()[:2] == [2.0, 2.0] and np.isnan(r.metrics["value"].tolist()[2])

    store.set_note(ids[0], "edited")
    store.add_tags(ids[0], "c")
    store.remove_tags(ids[0], "a")
    assert store.run(ids[0]).note == "edited" and store.run(ids[0]).tags == ["c"]
    with pytest.raises(ArrakisKeyError, match="no run with id 999"):
        store.set_note(999, "x")
    m = store.metrics("exp")
    assert len(m) == 12 and set(m["name"]) == {"loss", "acc"}

    e = store.experiments()
    assert e.loc[0, "name"] == "exp" and e.loc[0, "versions"] == 1 and e.loc[0, "runs"] == 4
    assert e.loc[0, "last_status"] == "ok"


# ---- results -------------------------------------------------------------------------------------
def test_results_round_trip_with_their_types(store):
    frame = pd.DataFrame({"head": ["L0H1", "L1H0"], "score": [0.5, -1.25], "n": [1, 2]})
    lt = LabelledTensor(torch.randn(2, 3), ("layer", "head"), {"layer": ["0", "1"]}, "score")
    value = {
        "float": 1.5, "nan": float("nan"), "inf": float("-inf"), "int": 2**70, "none": None, "bool": True,
        "text": "é", "list": [1, 2.5, "x"], "tuple": (1, (2, 3)), "set": {3, 1}, (0, 1): "tuple key", 7: "int key",
        "tensor": torch.arange(12, dtype=torch.float32).reshape(3, 4), "bf16": torch.ones(2, dtype=torch.bfloat16),
        "long": torch.tensor([1, 2, 3]), "grad": torch.ones(2, requires_grad=True) * 2,
        "array": np.eye(2), "np_scalar": np.float32(0.25), "frame": frame, "series": frame["score"],
        "labelled": lt, "nested": {"deep": [{"t": torch.zeros(1)}]},
    }
    run = store.run(record(store, result=value))
    got = run.result
    for key in ("float", "int", "none", "bool", "text", "list", "tuple", "set", (0, 1), 7):
        assert got[key] == value[key] and type(got[key]) is type(value[key]), key
    assert got["np_scalar"] == 0.25 and type(got["np_scalar"]) is float  # numpy scalars come back as Python numbers
    assert np.isnan(got["nan"]) and got["inf"] == float("-inf")
    for key in ("tensor", "bf16", "long"):
        assert got[key].dtype == value[key].dtype and torch.equal(got[key], value[key])
    assert torch.equal(got["grad"], value["grad"].detach()) and not got["grad"].requires_grad
    np.testing.assert_array_equal(got["array"], value["array"])
    pd.testing.assert_frame_equal(got["frame"], frame)
    pd.testing.assert_series_equal(got["series"], frame["score"])
    assert isinstance(got["labelled"], LabelledTensor) and got["labelled"].dims == ("layer", "head")
    assert torch.equal(got["labelled"].values, lt.values) and got["labelled"].coords == lt.coords
    assert torch.equal(got["nested"]["deep"][0]["t"], torch.zeros(1))
    assert run.result_type == f"dict[{len(value)}]"
    # the same tensor twice is one file (content-addressed)
    files = [p for p in (store.root / "artefacts").rglob("*") if p.is_file()]
    record(store, result={"again": value["tensor"]})
    assert len([p for p in (store.root / "artefacts").rglob("*") if p.is_file()]) == len(files)


def test_unserialisable_results_become_typed_placeholders_never_dropped(store):
    class Opaque:
        def __repr__(self):
            return "<opaque thing>"

    rec = RunRecord(name="exp", source="x", result={"ok": 1, "thing": Opaque(), "gen": (i for i in range(3))})
    got = store.run(store.record(rec)).result
    assert got["ok"] == 1
    thing = got["thing"]
    assert isinstance(thing, Unserialisable) and thing.python_type.endswith("Opaque")
    assert thing.repr == "<opaque thing>" and "Opaque" in repr(thing)
    assert isinstance(got["gen"], Unserialisable) and got["gen"].python_type == "generator"
    assert sorted(rec.placeholders) == ["generator", thing.python_type]


def test_figures_are_stored_as_html_and_png(store):
    from bokeh.plotting import figure

    class PngThing:
        def _repr_png_(self):
            return b"\x89PNG fake bytes"

    fig = figure(title="t")
    fig.line([1, 2], [3, 4])
    got = store.run(record(store, result={"bokeh": fig, "png": PngThing()})).result
    assert isinstance(got["bokeh"], StoredFigure) and got["bokeh"].kind == "html"
    assert "Bokeh" in got["bokeh"].path.read_text() and "<iframe" in got["bokeh"]._repr_html_()
    assert got["png"]._repr_png_() == b"\x89PNG fake bytes"


# ---- diff, delete, archives ------------------------------------------------------------------------
def test_diff_compares_sources_results_and_metrics(store):
    t = torch.arange(4.0)
    record(store, source="x = 1\ny = 2\nz = 3", result={"t": t, "s": 1.0, "same": "a"}, metrics=[("m", None, 1.0, 0)])
    record(store, source="x = 1\ny = 5\nz = 3", result={"t": t + 0.5, "s": 1.0, "same": "a", "new": 1},
           metrics=[("m", None, 3.0, 0)])
    d = store.diff("exp", "v1", "v2")
    assert "-y = 2\n+y = 5\n" in d.source_diff and " x = 1\n" in d.source_diff
    rows = d.results.set_index("path")
    assert rows.loc["result['t']", "max_abs_diff"] == pytest.approx(0.5) and not rows.loc["result['t']", "equal"]
    assert rows.loc["result['s']", "equal"] and rows.loc["result['same']", "equal"]
    assert rows.loc["result['new']", "a"] == "<missing>"
    assert d.metrics.loc["m"].tolist() == [1.0, 3.0, 2.0]
    assert "arrakis-add" in d._repr_html_() and "+y = 5" in repr(d)
    same = store.diff("exp", "v1", "v1")
    assert same.source_diff == "" and same.results["equal"].all()


def test_delete_version_removes_its_runs_and_unshared_artefacts(store):
    record(store, source="a", result=torch.ones(3))
    shared = torch.zeros(5)
    record(store, source="b", result={"x": torch.full((2,), 7.0), "shared": shared})
    record(store, source="c", result=shared)
    files = lambda: {p.name for p in (store.root / "artefacts").rglob("*") if p.is_file()}  # noqa: E731
    before = files()
    assert store.delete_version("exp", "v2") == 1
    assert len(files()) == len(before) - 1  # the 7.0 tensor went; the shared zeros stay
    assert len(store.versions("exp")) == 2 and torch.equal(store.last_run("exp").result, shared)
    assert store.delete_experiment("exp") == 2
    assert "exp" not in set(store.experiments()["name"]) and files() == set()
    assert store.integrity_check() == "ok"


def test_export_import_round_trip_merges_without_duplicates(store, tmp_path):
    record(store, name="a", result=torch.ones(2), tags=["t"], metrics=[("m", 0, 1.0, 0.0)])
    record(store, name="a", source="y = 2", result=2)
    record(store, name="b", result="b")
    archive = store.export(tmp_path / "all.zip")
    other = Store(tmp_path / "other")
    record(other, name="a", source="local")
    assert other.import_(archive) == {"experiments": 2, "runs": 3, "skipped": 0}
    assert other.import_(archive) == {"experiments": 2, "runs": 0, "skipped": 3}
    assert len(other.runs("a")) == 3 and len(other.versions("a")) == 3
    imported = other.last_run("a", store.versions("a")["hash"][0])
    assert torch.equal(imported.result, torch.ones(2)) and imported.tags == ["t"] and len(imported.metrics) == 1
    only_b = Store(tmp_path / "only_b")
    only_b.import_(store.export(tmp_path / "b.zip", names=["b"]))
    assert list(only_b.experiments()["name"]) == ["b"]
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(StoreError, match="not an arrakis export archive"):
        other.import_(bad)


# ---- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, problem", [
    ("a/b", "contains a path separator"), ("..\\x", "contains a path separator"), ("a\nb", "control character"),
    ("bell\x07", "control character"), ("", "is empty"), ("  ", "is empty"), (" pad", "leading or trailing"),
    ("x" * 201, "201 characters long"), ("..", "relative path"),
])
def test_bad_experiment_names_are_rejected_and_nothing_is_written(store, name, problem):
    record(store, name="kept")
    with pytest.raises(ArrakisValueError, match=f"experiment name .*{problem}.*without path separators"):
        record(store, name=name)
    assert list(store.experiments()["name"]) == ["kept"] and len(store.runs("kept")) == 1


def test_bad_tags_status_and_names_of_other_types(store):
    with pytest.raises(ArrakisValueError, match="tag 'a/b' contains a path separator"):
        record(store, tags=["a/b"])
    with pytest.raises(ArrakisValueError, match="run status 'done' is not one of ok, error, interrupted"):
        record(store, status="done")
    with pytest.raises(ArrakisValueError, match="experiment name must be a string, got int"):
        record(store, name=3)
    assert store.experiments().empty


def test_a_store_from_a_newer_schema_is_refused_untouched(tmp_path):
    Store(tmp_path)
    with sqlite3.connect(tmp_path / "arrakis.db") as c:
        c.execute("PRAGMA user_version = 99")
    before = (tmp_path / "arrakis.db").read_bytes()
    with pytest.raises(StoreVersionError, match=f"schema version 99, but this arrakis_jupyter understands versions up to {schema.SCHEMA_VERSION}"):
        Store(tmp_path)
    assert (tmp_path / "arrakis.db").read_bytes() == before


def test_migrations_run_once_in_order(tmp_path, monkeypatch):
    Store(tmp_path).record(RunRecord(name="e", source="x"))
    calls = []

    def v2(conn):
        calls.append(2)
        conn.execute("ALTER TABLE runs ADD COLUMN extra TEXT")

    new = schema.SCHEMA_VERSION + 1
    monkeypatch.setitem(schema.MIGRATIONS, new, v2)
    s = Store(tmp_path)
    Store(tmp_path)
    assert calls == [2] and schema.schema_version(s._conn()) == new
    assert len(s.runs("e")) == 1  # data kept across the migration


def test_not_a_store_is_reported_and_left_alone(tmp_path):
    (tmp_path / "arrakis.db").write_text("hello")
    with pytest.raises(StoreError, match="is not an arrakis experiment store"):
        Store(tmp_path)
    assert (tmp_path / "arrakis.db").read_text() == "hello"
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="it is a file, not a directory"):
        Store(tmp_path / "file")


def test_json_in_the_database_is_plain_for_json_results(store):
    run_id = record(store, result={"a": [1, 2.5], "b": "c"})
    (text,) = sqlite3.connect(store.db_path).execute("SELECT result FROM runs WHERE id = ?", (run_id,)).fetchone()
    assert json.loads(text) == {"a": [1, 2.5], "b": "c"}


def test_a_version_1_store_is_migrated_with_its_runs(tmp_path):
    conn = sqlite3.connect(tmp_path / "arrakis.db")
    schema.MIGRATIONS[1](conn)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO experiments (id, name, created) VALUES (1, 'old', 0)")
    conn.execute("INSERT INTO versions VALUES (1, 1, 'abc123abc123', 'cell', 'x = 1', 0, 0)")
    conn.execute("INSERT INTO runs (uid, version_id, started, status, result) VALUES ('u1', 1, 0, 'ok', '7')")
    conn.commit()
    conn.close()
    store = Store(tmp_path)
    assert schema.schema_version(store._conn()) == schema.SCHEMA_VERSION
    run = store.last_run("old")
    assert run.result == 7 and run.figures == []


def test_figures_and_rich_objects_are_kept_as_html_or_png(store):
    class Rich:
        def _repr_html_(self):
            return "<b>rich</b>"

    from bokeh.plotting import figure

    fig = figure(title="kept")
    fig.line([1, 2], [1, 2])
    run = store.run(record(store, result=Rich(), figures=[fig]))
    assert isinstance(run.result, StoredFigure) and run.result.path.read_text() == "<b>rich</b>"
    (kept,) = run.figures
    assert kept.kind == "html" and "kept" in kept.path.read_text()
