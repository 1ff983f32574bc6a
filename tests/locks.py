"""Another process holding an experiment store's SQLite write lock, as a kernel in the middle of a write does."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

HOLDER = textwrap.dedent("""
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("ROLLBACK")
""")


def hold_write_lock(db: str | Path, seconds: float) -> subprocess.Popen:
    """A process holding the write lock of the database ``db`` for ``seconds`` (or until killed); returns once
    it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc
