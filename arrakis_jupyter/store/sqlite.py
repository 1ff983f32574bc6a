"""SQLite connections and transactions that survive interrupts, kills and lock contention.

- Waiting for a lock happens in Python, in slices of ``BUSY_SLICE_MS``, so a KeyboardInterrupt lands
  within a slice (SQLite's own busy handler would hold it back for the whole timeout) and a deadline
  is kept exactly.
- ``transaction`` begins inside its guarded block: any exception, KeyboardInterrupt included, at
  any point (waiting for the lock, after BEGIN, in the body, during COMMIT) leaves no transaction
  open; a transaction left open by an interrupt that landed during an earlier rollback is rolled
  back before the next one begins.
"""
from __future__ import annotations

import pathlib
import sqlite3
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar
from urllib.parse import quote

from ..errors import ArrakisError

BUSY_SLICE_MS = 50
T = TypeVar("T")


class StoreBusyError(ArrakisError):
    """Another process held the store's write lock for longer than we were willing to wait."""


def connect(path: pathlib.Path, read_only: bool = False, immutable: bool = False) -> sqlite3.Connection:
    """An autocommit connection (``isolation_level=None``: transactions are explicit) with rows by name.

    ``read_only`` opens with ``mode=ro`` (nothing is ever created or written); ``immutable`` also
    skips locking, for a database on a read-only medium that nobody can be writing."""
    if read_only or immutable:
        uri = f"file:{quote(str(path))}?mode=ro" + ("&immutable=1" if immutable else "")
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_SLICE_MS / 1000, isolation_level=None)
    else:
        conn = sqlite3.connect(path, timeout=BUSY_SLICE_MS / 1000, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_SLICE_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.row_factory = sqlite3.Row
    return conn


def is_busy(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def retry_busy(fn: Callable[[], T], timeout: float, what: str) -> T:
    """``fn()``, retried while SQLite answers busy/locked, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if not is_busy(e):
                raise
            if time.monotonic() >= deadline:
                raise StoreBusyError(f"{what}: another process held its write lock for more than {timeout:g} s; "
                                     "nothing was written, try again") from None
            time.sleep(0.005)


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the connection's open transaction, if any (never raises for a missing one)."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


@contextmanager
def transaction(conn: sqlite3.Connection, timeout: float, what: str) -> Iterator[sqlite3.Connection]:
    """One IMMEDIATE transaction: committed when the block ends, rolled back on any exception."""
    try:
        rollback(conn)  # left open by an interrupt that landed inside an earlier rollback
        retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"), timeout, what)
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
