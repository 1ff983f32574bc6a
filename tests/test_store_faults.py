"""Faults while writing the store: interrupts at every point of a write, writers killed while holding or
waiting for the lock, a real kernel interrupted by SIGINT, concurrent creation, read-only mounts."""
from __future__ import annotations

import functools
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import _thread

import pytest

from arrakis_jupyter.store import RunRecord, Store, StoreBusyError, StoreReadOnlyError
from locks import hold_write_lock

def hold_lock(store: Store, seconds: float) -> subprocess.Popen:
    """Another process holding the store's write lock for ``seconds`` (or until killed)."""
    return hold_write_lock(store.db_path, seconds)


def can_write_elsewhere(store: Store) -> bool:
    """Can another connection take the write lock now? (no transaction left open)"""
    conn = sqlite3.connect(store.db_path, timeout=0.5, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


class Interrupting(sqlite3.Connection):
    """A connection that raises KeyboardInterrupt once, just after (or instead of) a chosen statement."""

    when: tuple[str, str] | None = None  # (statement prefix, "after" | "before")

    def execute(self, sql, *args):
        when = Interrupting.when
        if when and sql.lstrip().upper().startswith(when[0]) and when[1] == "before":
            Interrupting.when = None
            raise KeyboardInterrupt
        cursor = super().execute(sql, *args)
        if when and sql.lstrip().upper().startswith(when[0]) and when[1] == "after":
            Interrupting.when = None
            raise KeyboardInterrupt
        return cursor


@pytest.mark.parametrize("when", [("BEGIN", "after"), ("INSERT INTO RUNS", "after"), ("INSERT INTO VERSIONS", "before"),
                                  ("COMMIT", "before")])
def test_an_interrupt_at_any_point_of_a_write_leaves_no_transaction_open(tmp_path, monkeypatch, when):
    monkeypatch.setattr(sqlite3, "connect", functools.partial(sqlite3.connect, factory=Interrupting))
    store = Store(tmp_path)
    store.record(RunRecord(name="exp", source="x = 0"))
    Interrupting.when = when
    with pytest.raises(KeyboardInterrupt):
        store.record(RunRecord(name="exp", source="x = 1", metrics=[("m", None, 1.0, 0.0)]))
    assert Interrupting.when is None  # the interrupt did land
    assert not store._conn().in_transaction and can_write_elsewhere(store)
    run_id = store.record(RunRecord(name="exp", source="x = 2"))  # this store records its next run
    assert len(store.runs("exp")) == 2 and store.run(run_id).status == "ok"
    assert store.integrity_check() == "ok"


def test_an_interrupt_while_waiting_for_the_lock_lands_at_once(tmp_path):
    store = Store(tmp_path)
    holder = hold_lock(store, 30)
    try:
        threading.Timer(0.3, _thread.interrupt_main).start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            store.record(RunRecord(name="exp", source="x = 1"))
        assert time.monotonic() - t0 < 2.0  # not after SQLite's whole busy timeout
        assert not store._conn().in_transaction
    finally:
        holder.kill()
        holder.wait()
    store.record(RunRecord(name="exp", source="x = 1"))
    assert len(store.runs("exp")) == 1


def test_a_short_lock_timeout_raises_store_busy_and_writes_nothing(tmp_path):
    Store(tmp_path).record(RunRecord(name="exp", source="x = 0"))
    store = Store(tmp_path, lock_timeout=0.3)
    holder = hold_lock(store, 30)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreBusyError, match="held its write lock for more than 0.3 s"):
            store.set_note(1, "n")
        assert 0.3 <= time.monotonic() - t0 < 1.5 and not store._conn().in_transaction
    finally:
        holder.kill()
        holder.wait()
    store.set_note(1, "n")
    assert store.run(1).note == "n"


WAITER = textwrap.dedent("""
    import sys
    from arrakis_jupyter.store import RunRecord, Store
    store = Store(sys.argv[1])
    print("waiting", flush=True)
    run_id = store.record(RunRecord(name="exp", source=f"x = {sys.argv[2]}", result=int(sys.argv[2])))
    print("committed", run_id, flush=True)
""")

HOLDER = textwrap.dedent("""
    import sys, time
    from arrakis_jupyter.store import RunRecord, Store, store as store_module
    store = Store(sys.argv[1])
    link = store_module.Store._link
    def slow_link(c, run_id, *args):
        link(c, run_id, *args)
        print("inside", run_id, flush=True)  # written, not committed, lock held
        time.sleep(60)
    store_module.Store._link = staticmethod(slow_link)
    store.record(RunRecord(name="exp", source="x = 'holder'", result="holder"))
""")


def test_writers_killed_holding_or_waiting_for_the_lock_lose_no_committed_run(tmp_path):
    store = Store(tmp_path)
    committed = {store.record(RunRecord(name="exp", source=f"x = {i}", result=i)): i for i in range(5)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().split()[0] == "inside"
    waiters = [subprocess.Popen([sys.executable, "-c", WAITER, str(tmp_path), str(100 + i)], stdout=subprocess.PIPE,
                                text=True) for i in range(3)]
    for w in waiters:
        assert w.stdout.readline().strip() == "waiting"
    time.sleep(0.5)  # all three are waiting for the holder's lock now
    for proc in (waiters[0], holder):  # one killed while waiting, then the one holding the lock
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    for w in waiters[1:]:  # the survivors get the lock and commit
        assert w.wait(timeout=60) == 0
        words = w.stdout.readline().split()
        committed[int(words[1])] = int(w.args[-1])
    store = Store(tmp_path, lock_timeout=2)  # as the Jupyter server opens it for writes
    assert store.integrity_check() == "ok"
    assert sorted(store.runs("exp")["run_id"]) == sorted(committed)
    for run_id, value in committed.items():
        assert store.run(run_id).result == value
    store.set_note(max(committed), "after the kills")  # a server-side write succeeds
    assert store.run(max(committed)).note == "after the kills"


def _execute(kc, code: str, timeout: float = 60) -> dict:
    msg_id = kc.execute(code)
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"]


def test_a_real_kernel_interrupted_while_waiting_for_the_lock_records_its_next_cell(tmp_path):
    from jupyter_client.manager import start_new_kernel

    home = tmp_path / "store"
    store = Store(home)
    km, kc = start_new_kernel(kernel_name="python3", env={**os.environ, "ARRAKIS_HOME": str(home)})
    try:
        assert _execute(kc, "%load_ext arrakis_jupyter")["status"] == "ok"
        # 1. interrupted while its body runs: recorded as interrupted
        msg_id = kc.execute("%%arrakis_log exp\nimport time\ntime.sleep(30)")
        time.sleep(1.5)
        km.interrupt_kernel()  # a real SIGINT
        reply = kc.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["ename"] == "KeyboardInterrupt"
        assert store.last_run("exp").status == "interrupted"
        # 2. interrupted while recording waits for another process's write lock
        holder = hold_lock(store, 60)
        try:
            msg_id = kc.execute("%%arrakis_log exp\nwaited = 1")
            time.sleep(1.5)
            t0 = time.monotonic()
            km.interrupt_kernel()
            reply = kc.get_shell_msg(timeout=30)
            assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["ename"] == "KeyboardInterrupt"
            assert time.monotonic() - t0 < 5
        finally:
            holder.kill()
            holder.wait()
        assert can_write_elsewhere(store)  # the kernel left no transaction open
        # 3. the interrupted kernel records its next cell
        assert _execute(kc, "%%arrakis_log exp\nafter = 2\nafter")["status"] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    runs = store.runs("exp")
    assert list(runs["status"]) == ["interrupted", "ok"] and store.last_run("exp").result == 2
    assert store.integrity_check() == "ok"


CREATOR = textwrap.dedent("""
    import sys
    from arrakis_jupyter.store import RunRecord, Store
    base, worker = sys.argv[1], int(sys.argv[2])
    print("ready", flush=True)
    for line in sys.stdin:  # one trial per line: a new store, created by every worker at once
        try:
            store = Store(f"{base}/{line.strip()}")
            store.record(RunRecord(name="exp", source="x = 1", result=worker))
            store.close()
            print("ok", flush=True)
        except Exception as e:
            print("fail", type(e).__name__, str(e).replace(chr(10), " "), flush=True)
""")


def test_eight_processes_creating_one_new_store_at_once_never_fail(tmp_path):
    workers = [subprocess.Popen([sys.executable, "-c", CREATOR, str(tmp_path), str(w)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for w in range(8)]
    try:
        for w in workers:
            assert w.stdout.readline().strip() == "ready"
        failures = []
        for trial in range(50):
            for w in workers:
                w.stdin.write(f"trial{trial}\n")
                w.stdin.flush()
            failures += [line for line in (w.stdout.readline().strip() for w in workers) if line != "ok"]
        assert failures == []
    finally:
        for w in workers:
            w.stdin.close()
            w.wait(timeout=60)
    for trial in (0, 17, 49):
        store = Store(tmp_path / f"trial{trial}")
        assert store.integrity_check() == "ok"
        assert sorted(store.runs("exp").pipe(lambda df: [store.run(int(i)).result for i in df["run_id"]])) == list(range(8))


READ_ONLY = textwrap.dedent("""
    import json, sys
    from arrakis_jupyter.store import RunRecord, Store, StoreReadOnlyError
    store = Store(sys.argv[1])
    out = {"read_only": store.read_only, "reason": store.read_only_reason,
           "experiments": list(store.experiments()["name"]), "result": store.last_run("exp").result}
    try:
        store.record(RunRecord(name="exp", source="x = 2"))
    except StoreReadOnlyError as e:
        out["error"] = str(e)
    try:
        Store(sys.argv[1] + "/new")
    except Exception as e:
        out["create"] = type(e).__name__ + ": " + str(e)
    print(json.dumps(out))
""")


def _unshare_works() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -m` (root, mount namespaces) for a read-only mount")
def test_a_store_on_a_read_only_mount_is_browsable_and_says_recording_is_impossible(tmp_path):
    import json

    store = Store(tmp_path / "ro")
    store.record(RunRecord(name="exp", source="x = 1", result=41))
    store.close()  # a clean close removes the -wal and -shm files, as a store copied to a read-only medium
    ro = tmp_path / "ro"
    script = (f"mount --bind {ro} {ro} && mount -o remount,ro,bind {ro} && "
              f"{sys.executable} -c {__import__('shlex').quote(READ_ONLY)} {ro}")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["read_only"] and "not writable" in out["reason"]
    assert out["experiments"] == ["exp"] and out["result"] == 41
    assert "is read-only" in out["error"] and "nothing can be recorded there" in out["error"]
    assert out["create"].startswith("StoreError: cannot create an experiment store")


def test_read_only_opening_never_writes(tmp_path):
    (tmp_path / "arrakis.db").write_bytes(b"")
    with pytest.raises(Exception, match="no experiment store"):
        Store(tmp_path, read_only=True)
    assert (tmp_path / "arrakis.db").stat().st_size == 0 and sorted(os.listdir(tmp_path)) == ["arrakis.db"]
    Store(tmp_path / "s").record(RunRecord(name="exp", source="x = 1"))
    before = (tmp_path / "s" / "arrakis.db").read_bytes()
    ro = Store(tmp_path / "s", read_only=True)
    assert ro.read_only and len(ro.runs("exp")) == 1
    with pytest.raises(StoreReadOnlyError, match="opened with read_only=True"):
        ro.set_note(1, "x")
    assert (tmp_path / "s" / "arrakis.db").read_bytes() == before
