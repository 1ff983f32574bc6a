#!/usr/bin/env python
"""Benchmark the server extension's REST API on a large store.

A store with ``--runs`` runs (10,000) across ``--versions`` versions (200) of ``--experiments``
experiments (20) sits beside a notebook; a real JupyterLab server serves it. Timed over HTTP
(median of ``--repeats`` requests, token auth), interleaved with a peer from the same server:

- ``experiments``: ``GET /arrakis/api/experiments`` (target: under 100 ms);
- ``versions``: ``GET /arrakis/api/experiments/exp0/versions``;
- ``runs_page``: ``GET /arrakis/api/experiments/exp0/runs?limit=50``;
- peer ``contents``: ``GET /api/contents/`` (Jupyter's own listing of the same directory).

    python benchmarks/bench_server.py [--runs 10000 --versions 200 --experiments 20 --repeats 50]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import offline  # noqa: E402,F401

sys.path.insert(0, str(offline.REPO / "tests"))
from browser import JupyterLab  # noqa: E402


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
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="arrakis-bench-server-"))
    fill_s = fill(root, args.runs, args.versions, args.experiments)
    lab = JupyterLab(root, env={"ARRAKIS_HOME": ""})
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
    finally:
        lab.stop()
    out = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    out["fill_ms_per_run"] = fill_s / args.runs * 1e3
    print(f"REST API over a store of {args.runs} runs, {args.versions} versions, {args.experiments} experiments "
          f"(median of {args.repeats}, ms)")
    for name in urls:
        print(f"  {name:<14} {out[name]:7.2f} ms" + ("  (target < 100)" if name == "experiments" else ""))
    print(f"  experiments / peer contents listing: {out['experiments'] / out['peer_contents']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
