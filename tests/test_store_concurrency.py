"""Several processes writing one store at once, and a writer killed mid-transaction."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import torch

from arrakis_jupyter.store import RunRecord, Store

WRITER = textwrap.dedent("""
    import sys
    from arrakis_jupyter.store import RunRecord, Store
    store, worker, n = Store(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    for i in range(n):
        store.record(RunRecord(name=f"exp{i % 3}", source=f"x = {i % 5}", result={"worker": worker, "i": i},
                               tags=[f"w{worker}"], metrics=[("i", i, float(i), 0.0)]))
""")


def test_four_processes_logging_500_runs_each_lose_nothing(tmp_path):
    Store(tmp_path)  # created once up front; the workers also race on opening it
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(w), "500"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for w in range(4)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        assert p.wait(timeout=300) == 0
    store = Store(tmp_path)
    assert store.integrity_check() == "ok"
    seen = []
    for name in ("exp0", "exp1", "exp2"):
        runs = store.runs(name)
        assert len(store.versions(name)) <= 5
        for run_id in runs["run_id"]:
            result = store.run(int(run_id)).result
            seen.append((result["worker"], result["i"]))
    assert len(seen) == 2000 and set(seen) == {(w, i) for w in range(4) for i in range(500)}
    assert store.experiments()["runs"].sum() == 2000
    assert all(len(store.runs(f"exp{i}", tag="w2")) in (166, 167) for i in range(3))


KILLED = textwrap.dedent("""
    import sys, time, torch
    from arrakis_jupyter.store import RunRecord, Store, store as store_module
    store = Store(sys.argv[1])
    link = store_module.Store._link
    def slow_link(c, run_id, *args):
        link(c, run_id, *args)
        if run_id > 20:
            print("inside", run_id, flush=True)  # the run is written but not committed
            time.sleep(60)
    store_module.Store._link = staticmethod(slow_link)
    for i in range(1000):
        run_id = store.record(RunRecord(name="exp", source=f"x = {i % 4}", result={"i": i, "t": torch.full((64,), float(i))},
                                        metrics=[("i", None, float(i), 0.0)]))
        print("committed", run_id, i, flush=True)
""")


def test_a_writer_killed_mid_transaction_leaves_every_committed_run_intact(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    committed = {}
    for line in proc.stdout:
        words = line.split()
        if words[0] == "committed":
            committed[int(words[1])] = int(words[2])
        elif words[0] == "inside":
            in_flight = int(words[1])
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and len(committed) == 20

    store = Store(tmp_path)
    assert store.integrity_check() == "ok"
    runs = store.runs("exp")
    assert sorted(runs["run_id"]) == sorted(committed) and in_flight not in set(runs["run_id"])
    for run_id, i in committed.items():
        run = store.run(run_id)
        assert run.result["i"] == i and torch.equal(run.result["t"], torch.full((64,), float(i)))
        assert run.metrics["value"].tolist() == [float(i)]
    # the store takes new writes after the crash
    store.record(RunRecord(name="exp", source="after crash"))
    assert len(store.runs("exp")) == 21
