#!/usr/bin/env python
"""Benchmark the experiment store: what recording a run costs a cell, and how fast versions are listed.

1. Recording overhead, in a real IPython shell. The same tiny cell (``x = 1`` then ``x``) runs
   interleaved as:
   - ``plain``: an ordinary cell (the peer);
   - ``arrakis_log``: a ``%%arrakis_log`` cell (recorded: source hash, version upsert, run, tee'd output);
   - ``arrakis_model``: a ``%%arrakis --tools attention`` cell (adds the model fingerprint, cached, and
     a tool bound to the model).
   The result is a small int, so serialising it costs nothing: the difference to ``plain`` is the
   recording overhead. Target: at most 5 ms.
2. Listing: a store with ``--runs`` runs (default 10,000) spread over ``--versions`` versions (200) of
   one experiment; ``Store.versions(name)`` (one SQL query + a DataFrame) against the peer
   ``pd.read_sql`` of the runs table grouped by version in pandas. Target: under 50 ms.
3. One big version: ``--big`` runs (default 50,000) of one version; a page of 50 runs (first, newest
   first, and the last page) with ``Store.version(..., limit=50)`` / ``Store.runs(limit=, offset=)``
   against the peer ``pd.read_sql`` of the version's runs sliced in pandas. Target: under 100 ms.

    python benchmarks/bench_store.py [--repeats 200 --runs 10000 --versions 200 --json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import offline  # noqa: E402,F401  (hub off, repository importable)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def recording_overhead(repeats: int) -> dict:
    import torch
    from IPython.core.interactiveshell import InteractiveShell

    from arrakis_jupyter import HookedAutoConfig, HookedAutoModel

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "arrakis_jupyter")
    ip.run_line_magic("arrakis", f"open {tempfile.mkdtemp(prefix='arrakis-bench-')}")
    torch.manual_seed(0)
    ip.user_ns["model"] = HookedAutoModel(HookedAutoConfig(
        name="llama", vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2))
    cells = {"plain": "x = 1\nx", "arrakis_log": "%%arrakis_log bench\nx = 1\nx",
             "arrakis_model": "%%arrakis bench_model --tools attention\nx = 1\nx"}
    times: dict[str, list[float]] = {k: [] for k in cells}
    from contextlib import redirect_stdout
    import io

    with redirect_stdout(io.StringIO()):  # the [arrakis] lines and Out[] would flood the terminal
        for name, cell in cells.items():  # warm-up (first store open, fingerprint)
            ip.run_cell(cell, store_history=True)
        for i in range(repeats):
            order = list(cells)[i % 3:] + list(cells)[:i % 3]
            for name in order:
                t0 = time.perf_counter()
                ip.run_cell(cells[name], store_history=True)
                times[name].append(time.perf_counter() - t0)
    out = {name: median_ms(t) for name, t in times.items()}
    out["overhead_log_ms"] = out["arrakis_log"] - out["plain"]
    out["overhead_model_ms"] = out["arrakis_model"] - out["plain"]
    return out


def listing(n_runs: int, n_versions: int, repeats: int = 20) -> dict:
    import sqlite3

    import pandas as pd

    from arrakis_jupyter.store import RunRecord, Store

    store = Store(tempfile.mkdtemp(prefix="arrakis-bench-"))
    t0 = time.perf_counter()
    for i in range(n_runs):
        store.record(RunRecord(name="sweep", source=f"x = {i % n_versions}\nx", result={"i": i, "loss": 1.0 / (i + 1)},
                               tags=[f"t{i % 7}"], metrics=[("loss", None, 1.0 / (i + 1), 0.0)]))
    fill_s = time.perf_counter() - t0

    def ours():
        return store.versions("sweep")

    def peer():
        with sqlite3.connect(store.db_path) as conn:
            runs = pd.read_sql("SELECT r.version_id, r.started, r.status FROM runs r", conn)
        return runs.groupby("version_id").agg(runs=("started", "size"), last_run=("started", "max"))

    assert len(ours()) == n_versions and int(ours()["runs"].sum()) == n_runs
    times = {"versions": [], "peer_read_sql_groupby": []}
    for _ in range(repeats):
        for name, fn in (("versions", ours), ("peer_read_sql_groupby", peer)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    out = {name: median_ms(t) for name, t in times.items()}
    experiments_t = []
    for _ in range(repeats):
        t = time.perf_counter()
        store.experiments()
        experiments_t.append(time.perf_counter() - t)
    out["experiments_list"] = median_ms(experiments_t)
    out["record_ms_per_run_while_filling"] = fill_s / n_runs * 1e3
    return out


def big_store(path: Path, n_runs: int, name: str = "big"):
    """A store whose experiment ``name`` has one version with ``n_runs`` runs (one recorded, the rest
    inserted by one executemany: filling it run by run would take minutes), every 10th run tagged."""
    import uuid

    from arrakis_jupyter.store import RunRecord, Store

    store = Store(path)
    store.record(RunRecord(name=name, source="x = 1", started=0.0, metrics=[("loss", None, 1.0, 0.0)]))
    with store._write() as c:
        (vid,) = c.execute("SELECT v.id FROM versions v JOIN experiments e ON e.id = v.experiment_id "
                           "WHERE e.name = ?", (name,)).fetchone()
        c.executemany("INSERT INTO runs (version_id, uid, started, duration, status, result, result_type, note) "
                      "VALUES (?, ?, ?, 0.01, 'ok', '1', 'int', '')",
                      [(vid, uuid.uuid4().hex, float(i + 1)) for i in range(n_runs - 1)])
        c.execute("INSERT INTO tags (run_id, tag) SELECT id, 'sweep' FROM runs WHERE version_id = ? AND id % 10 = 0",
                  (vid,))
    return store


def big_version(n_runs: int, repeats: int = 20) -> dict:
    """Pages of one version holding ``n_runs`` runs."""
    import sqlite3

    import pandas as pd

    store = big_store(Path(tempfile.mkdtemp(prefix="arrakis-bench-big-")), n_runs)

    cases = {
        "version_first_page": lambda: store.version("big", "v1", limit=50, newest_first=True),
        "runs_last_page": lambda: store.runs("big", "v1", limit=50, offset=n_runs - 50),
        "count_runs": lambda: store.count_runs("big", "v1"),
    }

    def peer():
        with sqlite3.connect(store.db_path) as conn:
            runs = pd.read_sql("SELECT * FROM runs WHERE version_id = 1 ORDER BY started DESC", conn)
        return runs.iloc[:50]

    cases["peer_read_sql_slice"] = peer
    assert store.version("big", "v1", limit=50).run_count == n_runs
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: median_ms(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--versions", type=int, default=200)
    ap.add_argument("--big", type=int, default=50_000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    rec = recording_overhead(args.repeats)
    print(f"recording ({args.repeats} interleaved repeats, median ms per cell)")
    for k in ("plain", "arrakis_log", "arrakis_model"):
        print(f"  {k:<14} {rec[k]:7.3f} ms")
    for k in ("overhead_log_ms", "overhead_model_ms"):
        verdict = "ok" if rec[k] <= 5 else "OVER the 5 ms target"
        print(f"  {k:<18} {rec[k]:7.3f} ms  ({verdict})")

    lst = listing(args.runs, args.versions)
    print(f"listing versions of one experiment with {args.runs} runs in {args.versions} versions (median ms)")
    print(f"  Store.versions          {lst['versions']:7.3f} ms  "
          f"({'ok' if lst['versions'] < 50 else 'OVER the 50 ms target'})")
    print(f"  peer read_sql+groupby   {lst['peer_read_sql_groupby']:7.3f} ms  "
          f"(ratio ours/peer {lst['versions'] / lst['peer_read_sql_groupby']:.2f})")
    print(f"  Store.experiments       {lst['experiments_list']:7.3f} ms")
    print(f"  recording while filling {lst['record_ms_per_run_while_filling']:7.3f} ms per run")
    big = big_version(args.big)
    print(f"one version with {args.big} runs (median ms)")
    for k, v in big.items():
        verdict = "" if k.startswith("peer") else f"  ({'ok' if v < 100 else 'OVER the 100 ms target'})"
        print(f"  {k:<22} {v:8.3f} ms{verdict}")
    print(f"  ratio first page / peer {big['version_first_page'] / big['peer_read_sql_slice']:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"recording": rec, "listing": lst, "big_version": big}, indent=1))


if __name__ == "__main__":
    main()
