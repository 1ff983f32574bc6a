"""Records you can trust: odd text, run ids, paging in SQL, garbage collection, magics that check
every argument before the cell runs."""
from __future__ import annotations

import math
import os
import sqlite3
import time

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from arrakis_jupyter.errors import ArrakisKeyError, ArrakisValueError
from arrakis_jupyter.store import RunRecord, Store

SURROGATE = "bad byte: \udcff, then \ud800 alone"


def test_lone_surrogates_in_outputs_note_source_and_metric_names_round_trip(tmp_path):
    store = Store(tmp_path)
    run_id = store.record(RunRecord(name="exp", source=f"print({SURROGATE!r})", stdout=SURROGATE + "\n",
                                    stderr=SURROGATE, note=SURROGATE, error=None, notebook=SURROGATE,
                                    metrics=[(SURROGATE, None, 1.0, 0.0)], result=SURROGATE))
    run = store.run(run_id)
    assert (run.stdout, run.stderr, run.note, run.notebook, run.result) == (SURROGATE + "\n", SURROGATE, SURROGATE,
                                                                           SURROGATE, SURROGATE)
    assert list(run.metrics["name"]) == [SURROGATE]
    assert store.version("exp", "v1").source == f"print({SURROGATE!r})"
    assert store.runs("exp")["note"].tolist() == [SURROGATE]
    store.set_note(run_id, "fine " + SURROGATE)
    assert store.run(run_id).note == "fine " + SURROGATE
    with pytest.raises(ArrakisValueError, match="control character"):
        store.add_tags(run_id, "tag\udcff")
    assert store.integrity_check() == "ok"


def test_nan_in_model_and_environment_json_is_stored_as_valid_json(tmp_path):
    store = Store(tmp_path)
    run_id = store.record(RunRecord(name="exp", source="x", model={"rope_scaling": math.nan, "cap": math.inf},
                                    environment={"x": -math.inf}))
    raw = sqlite3.connect(tmp_path / "arrakis.db").execute("SELECT model, environment FROM runs").fetchone()
    assert "NaN" not in raw[0] and "Infinity" not in raw[0] + raw[1]
    assert store.run(run_id).model == {"rope_scaling": "nan", "cap": "inf"}


@pytest.mark.parametrize("run_id", [0, -1, 2**63, 2**70])
def test_run_ids_outside_sqlite_integers_are_unknown_runs(tmp_path, run_id):
    store = Store(tmp_path)
    store.record(RunRecord(name="exp", source="x"))
    with pytest.raises(ArrakisKeyError, match=f"no run with id {run_id}"):
        store.run(run_id)
    with pytest.raises(ArrakisKeyError):
        store.set_note(run_id, "x")


def test_runs_and_versions_page_in_sql(tmp_path):
    store = Store(tmp_path)
    for i in range(7):
        store.record(RunRecord(name="exp", source="x = 1", started=1000.0 + i, result=i, tags=["odd"] if i % 2 else [],
                               metrics=[("m", None, float(i), 0.0)]))
    store.record(RunRecord(name="exp", source="x = 2", started=2000.0))
    newest = store.runs("exp", "v1", limit=3, offset=1, newest_first=True)
    assert list(newest["run_id"]) == [6, 5, 4]
    assert list(store.runs("exp", "v1", limit=2, offset=6)["run_id"]) == [7]
    assert store.count_runs("exp") == 8 and store.count_runs("exp", "v1", tag="odd") == 3
    v = store.version("exp", "v1", limit=2, newest_first=True)
    assert v.run_count == 7 and list(v.runs["run_id"]) == [7, 6] and "7 runs" in repr(v)
    assert store.version("exp", "v1").run_count == 7 and len(store.version("exp", "v1").runs) == 7
    assert list(store.metrics("exp", "v1", run_ids=[2, 3])["value"]) == [1.0, 2.0]
    assert store.last_run("exp", "v1").result == 6
    with pytest.raises(ArrakisValueError, match="limit must be an int"):
        store.runs("exp", limit=-1)


def test_gc_removes_unused_files_temporaries_and_entries_but_not_young_or_used_ones(tmp_path):
    import torch

    store = Store(tmp_path)
    keep = store.record(RunRecord(name="keep", source="x", result=torch.ones(3)))
    gone = store.record(RunRecord(name="gone", source="y", result=torch.zeros(5)))
    used = store.run(keep).result
    art = tmp_path / "artefacts"
    gone_file = store.artefact(store.raw_run(gone)["artefact_list"][0][0])[0]
    gone_size = gone_file.stat().st_size
    # a run deleted by a crashed process: its index entry and file stay behind
    with store._write() as c:
        c.execute("DELETE FROM runs WHERE id = ?", (gone,))
    orphan_file = art / "zz" / ("0" * 64 + ".safetensors")
    orphan_file.parent.mkdir()
    orphan_file.write_bytes(b"lost")
    tmp = art / "zz" / ".tmp-killed"
    tmp.write_bytes(b"half written")
    young = art / "zz" / ".tmp-writing-now"
    young.write_bytes(b"in progress")
    old = time.time() - 7200
    for path in list(art.glob("*/*")):
        if path != young:
            os.utime(path, (old, old))
    dry = store.gc(dry_run=True)
    assert dry["entries"] == 1 and len(dry["files"]) == 3 and orphan_file.exists()
    report = store.gc()
    assert report == dry and report["bytes"] == gone_size + len(b"lost") + len(b"half written")
    assert not orphan_file.exists() and not tmp.exists() and not gone_file.exists() and young.exists()
    assert torch.equal(store.run(keep).result, used) and store.integrity_check() == "ok"
    assert store.gc()["files"] == []


def test_an_unused_file_a_new_run_reuses_is_refreshed_so_gc_keeps_it(tmp_path):
    import torch

    store = Store(tmp_path)
    first = store.record(RunRecord(name="a", source="x", result=torch.arange(4)))
    path = store.artefact(store.raw_run(first)["artefact_list"][0][0])[0]
    store.delete_version("a", "v1")
    from safetensors.torch import save

    # the same file left unused long ago (a crash between a delete's commit and its unlink)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(save({"value": torch.arange(4)}))
    os.utime(path, (time.time() - 7200,) * 2)
    # a new run producing the same bytes finds the file there and does not rewrite it, but marks it fresh
    second = store.record(RunRecord(name="b", source="y", result=torch.arange(4)))
    assert time.time() - path.stat().st_mtime < 60
    assert store.gc()["files"] == [] and torch.equal(store.run(second).result, torch.arange(4))


@pytest.fixture
def ip(tmp_path):
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "arrakis_jupyter")
    shell.run_line_magic("arrakis", f"open {tmp_path / 'store'}")
    shell.user_ns.pop("ran", None)
    yield shell
    shell.user_ns.pop("ran", None)


@pytest.mark.parametrize("line, message", [
    ("x --tag a/b", "tag 'a/b' contains a path separator"),
    ("x --tag ''", "tag '' is empty"),
    ("x --tag ok --tag ' pad'", "leading or trailing whitespace"),
    ("'unbalanced", "No closing quotation"),
    ('x --note "open', "No closing quotation"),
])
def test_magic_arguments_are_checked_before_the_body_runs(ip, tmp_path, line, message):
    for magic in ("arrakis_log", "arrakis"):
        with pytest.raises(UsageError, match=message):
            ip.run_cell_magic(magic, line, "ran = True")
        assert "ran" not in ip.user_ns
    assert len(Store(tmp_path / "store").experiments()) == 0


def test_line_magic_unbalanced_quote_is_a_usage_error(ip):
    with pytest.raises(UsageError, match="No closing quotation"):
        ip.run_line_magic("arrakis", "show 'oops")


def test_open_a_bad_directory_keeps_the_store_in_use(ip, tmp_path):
    ip.run_cell_magic("arrakis_log", "before", "1")
    (tmp_path / "a_file").write_text("not a directory")
    for bad in (tmp_path / "a_file", tmp_path / "a_file" / "below"):
        with pytest.raises(UsageError):
            ip.run_line_magic("arrakis", f"open {bad}")
    assert str(tmp_path / "store") in ip.run_line_magic("arrakis", "open")
    ip.run_cell_magic("arrakis_log", "after", "2")
    assert list(Store(tmp_path / "store").experiments()["name"]) == ["after", "before"]


def test_a_read_only_store_refuses_recording_before_the_body_runs(ip, tmp_path):
    ip.run_cell_magic("arrakis_log", "exp", "1")
    magics = ip.magics_manager.registry["ArrakisMagics"]
    magics._store = Store(tmp_path / "store", read_only=True)
    with pytest.raises(UsageError, match="read-only .* %arrakis open DIR"):
        ip.run_cell_magic("arrakis_log", "exp", "ran = True")
    assert "ran" not in ip.user_ns
    ip.run_cell_magic("arrakis", "exp --no-store", "ran = True")  # running without recording still works
    assert ip.user_ns["ran"] is True
    magics._store = None


def test_gc_line_magic_reports_what_it_removed(ip, tmp_path, capsys):
    ip.run_cell_magic("arrakis_log", "exp", "1")
    stale = tmp_path / "store" / "artefacts" / "ab" / ".tmp-dead"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x" * 10)
    os.utime(stale, (time.time() - 7200,) * 2)
    report = ip.run_line_magic("arrakis", "gc --dry-run")
    assert report["files"] == ["ab/.tmp-dead"] and stale.exists()
    assert ip.run_line_magic("arrakis", "gc")["bytes"] == 10 and not stale.exists()
    assert "removed 1 unused files (10 bytes)" in capsys.readouterr().out
