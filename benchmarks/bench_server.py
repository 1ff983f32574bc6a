#!/usr/bin/env python
"""Benchmark the server extension's REST API on a large store.

A store with ``--runs`` runs (10,000) across ``--versions`` versions (200) of ``--experiments``
experiments (20) sits beside a notebook; a real JupyterLab server serves it. Timed over HTTP
(median of ``--repeats`` requests, token auth), interleaved with a peer from the same server:

- ``experiments``: ``GET /arrakis/api/experiments`` (target: under 100 ms);
- ``versions``: ``GET /arrakis/api/experiments/exp0/versions``;
- ``runs_page``: ``GET /arrakis/api/experiments/exp0/runs?limit=50``;
- peer ``contents``: ``GET /api/contents/`` (Jupyter's own listing of the same directory).

Then, on one version holding ``--big`` runs (50,000): the version endpoint (first page of runs) and the
last page of its runs, in ms and bytes (targets: under 100 ms and 200 KB). Last, while another process
holds the store's write lock: ``/api/status`` (p50, p99, max), the arrakis read endpoints (max) and a
PATCH of a run, which answers 503 with Retry-After after the server's short lock timeout.

    python benchmarks/bench_server.py [--runs 10000 --versions 200 --experiments 20 --repeats 50 --big 50000]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import offline  # noqa: E402,F401

sys.path.insert(0, str(offline.REPO / "tests"))
from browser import JupyterLab  # noqa: E402
from bench_store import big_store  # noqa: E402
from locks import hold_write_lock  # noqa: E402


def fill(root: Path, n_runs: int, n_versions: int, n_experiments: int) -> float:
    from arrakis_jupyter.store import RunRecord, Store

    store = Store(root / "experiments")
    t0 = time.perf_counter()
    for i in range(n_runs):
        v = i % n_versions
        store.record(RunRecord(name=f"exp{v % n_experiments}", source=f"x = {v}\nx", result={"i": i},
                               metrics=[("loss", None, 1.0 / (i + 1), 0.0)]))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--versions", type=int, default=200)
    ap.add_argument("--experiments", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--big", type=int, default=50_000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="arrakis-bench-server-"))
    fill_s = fill(root, args.runs, args.versions, args.experiments)
    big_store(root / "big" / "experiments", args.big)
    lab = JupyterLab(root, env={"ARRAKIS_HOME": ""})
    big: dict[str, float] = {}
    locked: dict[str, float] = {}
    urls = {"experiments": "arrakis/api/experiments?dir=", "versions": "arrakis/api/experiments/exp0/versions?dir=",
            "runs_page": "arrakis/api/experiments/exp0/runs?dir=&limit=50", "peer_contents": "api/contents/?"}
    times: dict[str, list[float]] = {k: [] for k in urls}
    try:
        def fetch(path: str) -> bytes:
            request = urllib.request.Request(f"{lab.url}/{path}", headers={"Authorization": f"token {lab.token}"})
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.read()

        total = sum(e["runs"] for e in json.loads(fetch(urls["experiments"]))["items"])
        assert total == args.runs, total
        for _ in range(3):
            for path in urls.values():
                fetch(path)
        for _ in range(args.repeats):
            for name, path in urls.items():
                t = time.perf_counter()
                fetch(path)
                times[name].append(time.perf_counter() - t)
        big = big_version(fetch, args.big, args.repeats)
        locked = while_locked(lab, fetch, root / "experiments" / "arrakis.db", args.repeats)
    finally:
        lab.stop()
    out = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    out["fill_ms_per_run"] = fill_s / args.runs * 1e3
    print(f"REST API over a store of {args.runs} runs, {args.versions} versions, {args.experiments} experiments "
          f"(median of {args.repeats}, ms)")
    for name in urls:
        print(f"  {name:<14} {out[name]:7.2f} ms" + ("  (target < 100)" if name == "experiments" else ""))
    print(f"  experiments / peer contents listing: {out['experiments'] / out['peer_contents']:.2f}x")
    print(f"one version with {args.big} runs (median ms, bytes)")
    for name in ("version", "runs_last_page"):
        print(f"  {name:<14} {big[name + '_ms']:7.2f} ms {big[name + '_bytes']:9,d} bytes  (targets < 100 ms, < 200 KB)")
    print("while another process holds the write lock")
    print(f"  /api/status    p50 {locked['status_p50_ms']:.2f} ms, p99 {locked['status_p99_ms']:.2f} ms, max "
          f"{locked['status_max_ms']:.2f} ms (target p99 < 100)")
    print(f"  arrakis reads  max {locked['reads_max_ms']:.2f} ms")
    print(f"  PATCH          {locked['patch_status']} after {locked['patch_ms']:.0f} ms, Retry-After "
          f"{locked['retry_after']}")
    if args.json:
        args.json.write_text(json.dumps({**out, "big": big, "locked": locked}, indent=1))


def big_version(fetch, n_runs: int, repeats: int) -> dict:
    paths = {"version": "arrakis/api/experiments/big/versions/v1?dir=big",
             "runs_last_page": f"arrakis/api/experiments/big/runs?dir=big&limit=50&offset={n_runs - 50}"}
    out = {}
    for name, path in paths.items():
        body = fetch(path)
        samples = []
        for _ in range(repeats):
            t = time.perf_counter()
            fetch(path)
            samples.append(time.perf_counter() - t)
        out[name + "_ms"], out[name + "_bytes"] = statistics.median(samples) * 1e3, len(body)
    assert json.loads(fetch(paths["version"]))["run_count"] == n_runs
    return out


def while_locked(lab, fetch, db: Path, repeats: int) -> dict:
    holder = hold_write_lock(db, 60)
    try:
        reads = ["arrakis/api/experiments?dir=", "arrakis/api/experiments/exp0/versions?dir=",
                 "arrakis/api/experiments/exp0/versions/v1?dir=", "arrakis/api/experiments/exp0/runs?dir=&limit=50",
                 "arrakis/api/runs/1?dir="]
        status, read_times = [], []
        for i in range(max(repeats, 100)):
            t = time.perf_counter()
            fetch("api/status?")
            status.append(time.perf_counter() - t)
            t = time.perf_counter()
            fetch(reads[i % len(reads)])
            read_times.append(time.perf_counter() - t)
        request = urllib.request.Request(f"{lab.url}/arrakis/api/runs/1?dir=", method="PATCH",
                                         data=json.dumps({"note": "x"}).encode(),
                                         headers={"Authorization": f"token {lab.token}"})
        t = time.perf_counter()
        try:
            urllib.request.urlopen(request, timeout=60)
            code, retry = 200, None
        except urllib.error.HTTPError as e:
            code, retry = e.code, e.headers.get("Retry-After")
        patch_ms = (time.perf_counter() - t) * 1e3
    finally:
        holder.kill()
        holder.wait()
    status.sort()
    return {"status_p50_ms": statistics.median(status) * 1e3, "status_p99_ms": status[int(0.99 * (len(status) - 1))] * 1e3,
            "status_max_ms": status[-1] * 1e3, "reads_max_ms": max(read_times) * 1e3, "patch_status": code,
            "patch_ms": patch_ms, "retry_after": retry}


if __name__ == "__main__":
    main()
