"""The experiment store: one SQLite database (WAL) plus content-addressed artefact files per directory.

Layout of a store directory::

    arrakis.db            experiments, versions, runs, tags, metrics, artefact index
    artefacts/ab/ab...    tensors (safetensors), DataFrames (JSON), figures (PNG / HTML)

Every write is one IMMEDIATE transaction, so several kernels (and the Jupyter server) can share
a store: readers never block writers, a killed writer leaves every committed run intact.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import pathlib
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import pandas as pd

from ..errors import ArrakisError, ArrakisKeyError, ArrakisValueError, close_matches
from .artefacts import ArtefactFiles, Encoder, decode, describe
from .records import Run, RunRecord, Version, VersionDiff, to_timestamps, check_name
from .compare import compare_values
from .hashing import source_hash
from .schema import SCHEMA_VERSION, StoreVersionError, check_not_newer, migrate, schema_version
from .sqlite import connect, is_busy, retry_busy, transaction

DB_NAME = "arrakis.db"
STATUSES = ("ok", "error", "interrupted")
KINDS = ("cell", "function")
MAX_RUN_ID = 2**63 - 1  # SQLite's largest INTEGER


class StoreError(ArrakisError):
    """The store cannot be opened or used (not a store, unreadable...)."""


class StoreReadOnlyError(StoreError):
    """A write to a store opened read-only (by request, or because its location is not writable)."""


def default_store_dir() -> pathlib.Path:
    """``$ARRAKIS_HOME`` if set, else ``experiments/`` in the working directory (beside the notebook)."""
    home = os.environ.get("ARRAKIS_HOME")
    return pathlib.Path(home) if home else pathlib.Path.cwd() / "experiments"


def _writable(path: pathlib.Path) -> bool:
    return os.access(path, os.W_OK)


class Store:
    """The experiment store of one directory (created if needed). Safe to share between processes.

    ``read_only=True`` opens an existing store without ever creating, migrating or writing anything;
    a store whose location is not writable (a read-only mount) is opened that way by itself
    (``store.read_only``; writes then raise ``StoreReadOnlyError``). Writes wait at most
    ``lock_timeout`` seconds for another process's write lock, then raise ``StoreBusyError``."""

    def __init__(self, path: str | os.PathLike | None = None, *, read_only: bool = False,
                 lock_timeout: float = 60.0) -> None:
        root = pathlib.Path(path) if path is not None else default_store_dir()
        if root.name == DB_NAME and root.is_file():
            root = root.parent
        if root.exists() and not root.is_dir():
            raise StoreError(f"cannot open an experiment store at {root}: it is a file, not a directory")
        self.root = root.resolve()
        self.db_path = self.root / DB_NAME
        self.files = ArtefactFiles(self.root / "artefacts")
        self.lock_timeout = float(lock_timeout)
        self.read_only = read_only
        self.read_only_reason = "opened with read_only=True" if read_only else ""
        self._immutable = False
        self._local = threading.local()
        self._check_file()
        if not read_only:
            reason = self._unwritable_reason()
            if reason is None:
                try:
                    retry_busy(self._create, self.lock_timeout, f"creating the experiment store {self.db_path}")
                    return
                except sqlite3.OperationalError as e:  # e.g. "attempt to write a readonly database"
                    if not self._exists():
                        raise StoreError(f"cannot create an experiment store at {self.root}: {e}") from e
                    reason = str(e)
                    self.close()
            self.read_only, self.read_only_reason = True, reason
        self._open_read_only()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r}{', read_only=True' if self.read_only else ''})"

    # ---- opening, connections and transactions ------------------------------------------
    def _exists(self) -> bool:
        return self.db_path.is_file() and self.db_path.stat().st_size > 0

    def _check_file(self) -> None:
        if self._exists():
            with open(self.db_path, "rb") as f:
                if f.read(16) != b"SQLite format 3\x00":
                    raise StoreError(f"{self.db_path} is not an arrakis experiment store (not an SQLite "
                                     "database); it was left untouched")

    def _unwritable_reason(self) -> str | None:
        """Why the store cannot be written here (None if it can): an existing store on a read-only
        location is still readable; a missing one cannot be created."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if self._exists():
                return f"its directory cannot be written: {e.strerror}"
            raise StoreError(f"cannot create an experiment store at {self.root}: {e.strerror or e}") from e
        if _writable(self.root) and (not self.db_path.exists() or _writable(self.db_path)):
            return None
        if not self._exists():
            raise StoreError(f"cannot create an experiment store at {self.root}: the directory is not writable")
        return "its directory or database file is not writable"

    def _create(self) -> None:
        """Open read-write, switch to WAL and bring the schema up to date (retried while another
        process holds a lock: several processes may create one store at once)."""
        conn = self._conn()
        check_not_newer(conn, f"at {self.db_path}")
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        migrate(conn, f"at {self.db_path}", self.lock_timeout)

    def _open_read_only(self) -> None:
        if not self._exists():
            raise StoreError(f"there is no experiment store at {self.root} (no {DB_NAME}, or an empty one)")
        try:
            conn = self._conn()
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:  # WAL needs a -shm file it cannot create on a read-only medium
            self.close()
            self._immutable = True
            conn = self._conn()
        if schema_version(conn) < SCHEMA_VERSION:
            raise StoreVersionError(
                f"the experiment store at {self.db_path} has schema version {schema_version(conn)}; this "
                f"arrakis_jupyter reads version {SCHEMA_VERSION}: open it once from a kernel that can write it "
                "(a %%arrakis cell, or Store(path)) to upgrade it")
        check_not_newer(conn, f"at {self.db_path}")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            try:
                conn = connect(self.db_path, read_only=self.read_only, immutable=self._immutable)
                if not self.read_only:
                    conn.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.DatabaseError as e:
                if is_busy(e):  # another process is creating or upgrading it: the caller retries
                    raise
                raise StoreError(f"cannot open the experiment store {self.db_path}: {e}") from e
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreReadOnlyError(
                f"the experiment store at {self.root} is read-only ({self.read_only_reason}): nothing can be "
                "recorded there; record into a writable directory (%arrakis open DIR, or $ARRAKIS_HOME)")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; any exception (KeyboardInterrupt included) leaves none open."""
        self._check_writable()
        with transaction(self._conn(), self.lock_timeout, f"the experiment store {self.root}") as conn:
            yield conn

    def _query(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        return retry_busy(lambda: self._conn().execute(sql, params).fetchall(), self.lock_timeout,
                          f"reading the experiment store {self.root}")

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def schema_version(self) -> int:
        return schema_version(self._conn())

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check``: ``"ok"`` for a healthy store."""
        return "; ".join(r[0] for r in self._conn().execute("PRAGMA integrity_check").fetchall())

    # ---- writing ----------------------------------------------------------------------------
    def record(self, rec: RunRecord) -> int:
        """Write one run (creating its experiment and version as needed); returns the run id.

        Parts of the result that cannot be serialised are stored as placeholders naming their type;
        ``rec.placeholders`` lists those types afterwards."""
        check_name(rec.name)
        if rec.status not in STATUSES:
            raise ArrakisValueError(f"run status {rec.status!r} is not one of {', '.join(STATUSES)}")
        if rec.kind not in KINDS:
            raise ArrakisValueError(f"version kind {rec.kind!r} is not one of {', '.join(KINDS)}")
        tags = [check_name(t, "tag") for t in rec.tags]
        for field in ("source", "stdout", "stderr", "note"):
            if not isinstance(getattr(rec, field), str):
                raise ArrakisValueError(f"RunRecord.{field} must be a string, got {type(getattr(rec, field)).__name__}")
        self._check_writable()  # before any artefact file is written
        encoder = Encoder(self.files)
        result = json.dumps(encoder(rec.result), allow_nan=False)
        arguments = json.dumps(encoder(rec.arguments), allow_nan=False) if rec.arguments is not None else None
        figures = json.dumps(encoder(list(rec.figures)), allow_nan=False) if rec.figures else None
        rec.placeholders = list(encoder.placeholders)
        digest = source_hash(rec.source)
        row = {"uid": rec.uid, "started": rec.started, "duration": rec.duration, "status": rec.status,
               "error": _text(rec.error), "arguments": arguments, "result": result,
               "result_type": describe(rec.result), "stdout": _text(rec.stdout), "stderr": _text(rec.stderr),
               "model": _json(rec.model), "environment": _json(rec.environment), "notebook": _text(rec.notebook),
               "cell_id": _text(rec.cell_id), "note": _text(rec.note or ""), "figures": figures}
        metrics = [(_text(name), step, value, logged) for name, step, value, logged in rec.metrics]
        with self._write() as c:
            run_id = self._insert_run(c, rec.name, rec.started, digest, rec.kind, _text(rec.source), rec.started,
                                      rec.started, row)
            self._link(c, run_id, tags, metrics, encoder.artefacts)
        return run_id

    RUN_COLUMNS = ("uid", "started", "duration", "status", "error", "arguments", "result", "result_type", "stdout",
                   "stderr", "model", "environment", "notebook", "cell_id", "note", "figures")

    @classmethod
    def _insert_run(cls, c: sqlite3.Connection, name: str, created: float, digest: str, kind: str, source: str,
                    first_seen: float, last_seen: float, row: Any) -> int:
        """Upsert the experiment and version, insert the run (``row`` has RUN_COLUMNS); returns the run id."""
        c.execute("INSERT INTO experiments (name, created) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET "
                  "created = min(created, excluded.created)", (name, created))
        (exp_id,) = c.execute("SELECT id FROM experiments WHERE name = ?", (name,)).fetchone()
        c.execute("INSERT INTO versions (experiment_id, hash, kind, source, first_seen, last_seen) VALUES "
                  "(?, ?, ?, ?, ?, ?) ON CONFLICT (experiment_id, hash) DO UPDATE SET first_seen = "
                  "min(first_seen, excluded.first_seen), last_seen = max(last_seen, excluded.last_seen)",
                  (exp_id, digest, kind, source, first_seen, last_seen))
        (version_id,) = c.execute("SELECT id FROM versions WHERE experiment_id = ? AND hash = ?",
                                  (exp_id, digest)).fetchone()
        columns = ", ".join(cls.RUN_COLUMNS)
        return c.execute(f"INSERT INTO runs (version_id, {columns}) VALUES (?{', ?' * len(cls.RUN_COLUMNS)})",
                         (version_id, *(row[k] for k in cls.RUN_COLUMNS))).lastrowid

    @staticmethod
    def _link(c: sqlite3.Connection, run_id: int, tags: Iterable[str], metrics: Iterable[tuple],
              artefacts: dict[str, tuple[str, str, int]]) -> None:
        c.executemany("INSERT OR IGNORE INTO tags (run_id, tag) VALUES (?, ?)", [(run_id, t) for t in tags])
        c.executemany("INSERT INTO metrics (run_id, name, step, value, logged) VALUES (?, ?, ?, ?, ?)",
                      [(run_id, *m) for m in metrics])
        now = time.time()
        c.executemany("INSERT OR IGNORE INTO artefacts (hash, kind, file, size, created) VALUES (?, ?, ?, ?, ?)",
                      [(h, kind, rel, size, now) for h, (kind, rel, size) in artefacts.items()])
        c.executemany("INSERT OR IGNORE INTO run_artefacts (run_id, hash) VALUES (?, ?)",
                      [(run_id, h) for h in artefacts])

    def edit_run(self, run_id: int, note: str | None = None, add_tags: Sequence[str] = (),
                 remove_tags: Sequence[str] = ()) -> None:
        """Replace a run's note and/or add and remove tags, all checked first and written in one transaction."""
        if note is not None and not isinstance(note, str):
            raise ArrakisValueError(f"a note must be a string, got {type(note).__name__}")
        added = [check_name(t, "tag") for t in add_tags]
        if not all(isinstance(t, str) for t in remove_tags):
            raise ArrakisValueError(f"tags are strings, got {list(remove_tags)!r}")
        run_id = self._run_id(run_id)
        with self._write() as c:
            self._check_run(c, run_id)
            if note is not None:
                c.execute("UPDATE runs SET note = ? WHERE id = ?", (_text(note), run_id))
            c.executemany("INSERT OR IGNORE INTO tags (run_id, tag) VALUES (?, ?)", [(run_id, t) for t in added])
            c.executemany("DELETE FROM tags WHERE run_id = ? AND tag = ?", [(run_id, _text(t)) for t in remove_tags])

    def set_note(self, run_id: int, note: str) -> None:
        """Replace a run's note."""
        if not isinstance(note, str):
            raise ArrakisValueError(f"a note must be a string, got {type(note).__name__}")
        self.edit_run(run_id, note=note)

    def add_tags(self, run_id: int, *tags: str) -> None:
        self.edit_run(run_id, add_tags=tags)

    def remove_tags(self, run_id: int, *tags: str) -> None:
        self.edit_run(run_id, remove_tags=tags)

    def _run_id(self, run_id: Any) -> int:
        if not isinstance(run_id, int) or isinstance(run_id, bool):
            raise ArrakisValueError(f"a run id is an int (see Store.runs), got {run_id!r}")
        if not 1 <= run_id <= MAX_RUN_ID:
            raise ArrakisKeyError(f"no run with id {run_id} in {self.root}: run ids are 1..{MAX_RUN_ID}")
        return run_id

    def _check_run(self, c: sqlite3.Connection, run_id: Any) -> None:
        if c.execute("SELECT 1 FROM runs WHERE id = ?", (self._run_id(run_id),)).fetchone() is None:
            raise ArrakisKeyError(f"no run with id {run_id} in {self.root}")

    def delete_version(self, name: str, ref: str) -> int:
        """Delete a version with its runs (and artefacts no other run uses); returns the runs deleted."""
        digest = self.resolve(name, ref)
        with self._write() as c:
            (vid, exp_id) = c.execute("SELECT v.id, v.experiment_id FROM versions v JOIN experiments e ON "
                                      "e.id = v.experiment_id WHERE e.name = ? AND v.hash = ?", (name, digest)).fetchone()
            (n,) = c.execute("SELECT count(*) FROM runs WHERE version_id = ?", (vid,)).fetchone()
            c.execute("DELETE FROM versions WHERE id = ?", (vid,))
            c.execute("DELETE FROM experiments WHERE id = ? AND NOT EXISTS "
                      "(SELECT 1 FROM versions WHERE experiment_id = ?)", (exp_id, exp_id))
            orphans = c.execute("SELECT hash, file FROM artefacts WHERE hash NOT IN "
                                "(SELECT hash FROM run_artefacts)").fetchall()
            c.executemany("DELETE FROM artefacts WHERE hash = ?", [(h,) for h, _ in orphans])
        for _, rel in orphans:  # after the commit: a crash here leaves only unreferenced files
            (self.files.root / rel).unlink(missing_ok=True)
        return n

    def delete_experiment(self, name: str) -> int:
        """Delete every version of an experiment; returns the runs deleted."""
        return sum(self.delete_version(name, h) for h in self.versions(name)["hash"])

    def gc(self, grace: float = 3600.0, dry_run: bool = False) -> dict[str, Any]:
        """Remove what no run uses: artefact index entries no run links to, artefact files the index
        does not name, and temporary files (``.tmp-*``) left by killed writers. Files modified less
        than ``grace`` seconds ago are kept (another process may be about to commit a run using them).
        Returns what was (or, with ``dry_run``, would be) removed: ``entries``, ``files``, ``bytes``."""
        self._check_writable()
        with self._write() as c:
            rows = c.execute("SELECT hash, file, hash IN (SELECT hash FROM run_artefacts) FROM artefacts").fetchall()
            orphans = [h for h, _, used in rows if not used]
            if not dry_run:
                c.executemany("DELETE FROM artefacts WHERE hash = ?", [(h,) for h in orphans])
        keep = {rel for _, rel, used in rows if used}
        files, size, now = [], 0, time.time()
        root = self.files.root
        for path in sorted(root.glob("*/*")) if root.is_dir() else []:
            rel = path.relative_to(root).as_posix()
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            if rel in keep or now - info.st_mtime < grace or path.is_dir():
                continue
            if not dry_run:
                path.unlink(missing_ok=True)
            files.append(rel)
            size += info.st_size
        return {"entries": len(orphans), "files": files, "bytes": size}

    # ---- reading ----------------------------------------------------------------------------
    def experiments(self) -> pd.DataFrame:
        """One row per experiment: name, versions, runs, created, last_run, last_status."""
        rows = self._query(
            "SELECT e.name, (SELECT count(*) FROM versions v WHERE v.experiment_id = e.id) AS versions, "
            "count(r.id) AS runs, e.created, max(r.started) AS last_run, "
            "(SELECT r2.status FROM runs r2 JOIN versions v2 ON v2.id = r2.version_id WHERE v2.experiment_id = e.id "
            " ORDER BY r2.started DESC, r2.id DESC LIMIT 1) AS last_status "
            "FROM experiments e LEFT JOIN versions v ON v.experiment_id = e.id LEFT JOIN runs r ON r.version_id = v.id "
            "GROUP BY e.id ORDER BY e.name")
        df = pd.DataFrame([dict(r) for r in rows], columns=["name", "versions", "runs", "created", "last_run",
                                                            "last_status"])
        df["created"], df["last_run"] = to_timestamps(df["created"]), to_timestamps(df["last_run"])
        return df

    def _experiment_id(self, name: str) -> int:
        check_name(name)
        row = self._query("SELECT id FROM experiments WHERE name = ?", (name,))
        if not row:
            known = [r[0] for r in self._query("SELECT name FROM experiments ORDER BY name")]
            listing = ", ".join(repr(k) for k in known[:20]) or "none yet"
            raise ArrakisKeyError(f"no experiment named {name!r} in the store {self.root}; experiments: {listing}."
                                  + close_matches(name, known))
        return row[0][0]

    def versions(self, name: str) -> pd.DataFrame:
        """The versions of an experiment, oldest first: v (1-based), hash, kind, first_seen, last_seen,
        runs, last_run, last_status, tags (of their runs)."""
        exp_id = self._experiment_id(name)
        rows = self._query(
            "SELECT v.hash, v.kind, v.first_seen, v.last_seen, count(r.id) AS runs, max(r.started) AS last_run, "
            "(SELECT status FROM runs r2 WHERE r2.version_id = v.id ORDER BY r2.started DESC, r2.id DESC LIMIT 1)"
            " AS last_status, (SELECT group_concat(DISTINCT t.tag) FROM tags t JOIN runs r3 ON r3.id = t.run_id "
            " WHERE r3.version_id = v.id) AS tags "
            "FROM versions v LEFT JOIN runs r ON r.version_id = v.id WHERE v.experiment_id = ? "
            "GROUP BY v.id ORDER BY v.first_seen, v.id", (exp_id,))
        df = pd.DataFrame([dict(r) for r in rows], columns=["hash", "kind", "first_seen", "last_seen", "runs",
                                                            "last_run", "last_status", "tags"])
        df.insert(0, "v", range(1, len(df) + 1))
        for col in ("first_seen", "last_seen", "last_run"):
            df[col] = to_timestamps(df[col])
        df["tags"] = df["tags"].map(_split_tags)
        return df

    def resolve(self, name: str, ref: str) -> str:
        """The full version hash that ``ref`` names: a hash, a unique hash prefix (4+ digits), or ``v3``."""
        exp_id = self._experiment_id(name)
        hashes = [r[0] for r in self._query("SELECT hash FROM versions WHERE experiment_id = ? ORDER BY first_seen, id",
                                            (exp_id,))]
        ref = str(ref).strip()
        if ref[:1] in "vV" and ref[1:].isdigit():
            i = int(ref[1:])
            if 1 <= i <= len(hashes):
                return hashes[i - 1]
            raise ArrakisKeyError(f"experiment {name!r} has versions v1..v{len(hashes)}, not {ref}")
        matches = [h for h in hashes if h.startswith(ref.lower())] if len(ref) >= 4 else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ArrakisKeyError(f"version prefix {ref!r} of {name!r} is ambiguous: {', '.join(matches)}")
        raise ArrakisKeyError(f"experiment {name!r} has no version {ref!r}; versions are named by their hash, a unique "
                              f"prefix of 4+ hex digits, or v1..v{len(hashes)}: {', '.join(hashes[-10:])}")

    def version_number(self, name: str, digest: str) -> int:
        """The 1-based position (oldest first) of version ``digest`` of an experiment."""
        (row,) = self._query("SELECT count(*) FROM versions v JOIN experiments e ON e.id = v.experiment_id "
                             "JOIN versions w ON w.id = (SELECT v2.id FROM versions v2 WHERE v2.experiment_id = e.id"
                             " AND v2.hash = ?) WHERE e.name = ? AND (v.first_seen, v.id) <= (w.first_seen, w.id)",
                             (digest, name))
        return int(row[0])

    def version(self, name: str, ref: str, *, limit: int | None = None, offset: int = 0,
                newest_first: bool = False) -> Version:
        """One version: its source and runs (all of them, or one page: ``limit``/``offset``, oldest
        first unless ``newest_first``); ``run_count`` is the number of all its runs."""
        digest = self.resolve(name, ref)
        index = self.version_number(name, digest)
        (row,) = self._query("SELECT v.kind, v.source, v.first_seen, v.last_seen, (SELECT count(*) FROM runs r "
                             "WHERE r.version_id = v.id) AS run_count FROM versions v JOIN experiments e "
                             "ON e.id = v.experiment_id WHERE e.name = ? AND v.hash = ?", (name, digest))
        seen = to_timestamps(pd.Series([row["first_seen"], row["last_seen"]]))
        runs = self.runs(name, digest, limit=limit, offset=offset, newest_first=newest_first)
        return Version(name, digest, index, row["kind"], _untext(row["source"]), seen[0], seen[1], runs,
                       row["run_count"])

    def _run_filter(self, name: str, hash: str | None, status: str | None, tag: str | None, since: Any,
                    until: Any) -> tuple[str, list]:
        where, params = ["v.experiment_id = ?"], [self._experiment_id(name)]
        if hash is not None:
            where.append("v.hash = ?")
            params.append(self.resolve(name, hash))
        if status is not None:
            if status not in STATUSES:
                raise ArrakisValueError(f"status filter {status!r} is not one of {', '.join(STATUSES)}")
            where.append("r.status = ?")
            params.append(status)
        if tag is not None:
            where.append("EXISTS (SELECT 1 FROM tags t WHERE t.run_id = r.id AND t.tag = ?)")
            params.append(_text(tag))
        for bound, op in ((since, ">="), (until, "<=")):
            if bound is not None:
                where.append(f"r.started {op} ?")
                params.append(_epoch(bound))
        return " AND ".join(where), params

    def runs(self, name: str, hash: str | None = None, *, status: str | None = None, tag: str | None = None,
             since: Any = None, until: Any = None, limit: int | None = None, offset: int = 0,
             newest_first: bool = False) -> pd.DataFrame:
        """Runs of an experiment (of one version if ``hash``), oldest first (or ``newest_first``),
        filtered by status, tag and start time (``since``/``until``: anything ``pd.Timestamp`` accepts),
        paged in SQL by limit/offset."""
        where, params = self._run_filter(name, hash, status, tag, since, until)
        order = "DESC" if newest_first else "ASC"
        if limit is not None:  # the page's ids first (an index scan), then their columns and tags
            limit, offset = _page_bound(limit, "limit"), _page_bound(offset, "offset")
            where = (f"r.id IN (SELECT r.id FROM runs r JOIN versions v ON v.id = r.version_id WHERE {where} "
                     f"ORDER BY r.started {order}, r.id {order} LIMIT ? OFFSET ?)")
            params += [limit, offset]
        rows = self._query(
            "SELECT r.id AS run_id, v.hash AS version, r.started, r.duration AS duration_s, r.status, r.result_type,"
            " (SELECT group_concat(t.tag) FROM tags t WHERE t.run_id = r.id) AS tags, r.note, r.notebook, r.cell_id "
            f"FROM runs r JOIN versions v ON v.id = r.version_id WHERE {where} "
            f"ORDER BY r.started {order}, r.id {order}", params)
        df = _frame(rows, ["run_id", "version", "started", "duration_s", "status", "result_type", "tags", "note",
                           "notebook", "cell_id"])
        df["started"] = to_timestamps(df["started"])
        df["tags"] = df["tags"].map(_split_tags)
        return df

    def count_runs(self, name: str, hash: str | None = None, *, status: str | None = None, tag: str | None = None,
                   since: Any = None, until: Any = None) -> int:
        """How many runs ``runs`` would list with the same filters and no limit."""
        where, params = self._run_filter(name, hash, status, tag, since, until)
        (row,) = self._query(f"SELECT count(*) FROM runs r JOIN versions v ON v.id = r.version_id WHERE {where}",
                             params)
        return int(row[0])

    def raw_run(self, run_id: int) -> dict[str, Any]:
        """One run as plain JSON-able data: results, arguments and figures as their stored JSON trees
        (artefacts referenced, not loaded), times as ISO strings; ``artefact_list`` [(hash, kind)]."""
        run_id = self._run_id(run_id)
        rows = self._query("SELECT r.*, v.hash, e.name FROM runs r JOIN versions v ON v.id = r.version_id "
                           "JOIN experiments e ON e.id = v.experiment_id WHERE r.id = ?", (run_id,))
        if not rows:
            raise ArrakisKeyError(f"no run with id {run_id} in {self.root}")
        r = {k: _untext(v) for k, v in dict(rows[0]).items()}
        iso = lambda t: pd.Timestamp(t, unit="s", tz="UTC").isoformat()  # noqa: E731
        return {
            "run_id": r["id"], "uid": r["uid"], "name": r["name"], "hash": r["hash"], "started": iso(r["started"]),
            "duration_s": r["duration"], "status": r["status"], "error": r["error"],
            "arguments": _unjson(r["arguments"]), "result": _unjson(r["result"]), "result_type": r["result_type"],
            "stdout": r["stdout"] or "", "stderr": r["stderr"] or "", "model": _unjson(r["model"]),
            "environment": _unjson(r["environment"]), "notebook": r["notebook"], "cell_id": r["cell_id"],
            "tags": [t[0] for t in self._query("SELECT tag FROM tags WHERE run_id = ? ORDER BY tag", (run_id,))],
            "note": r["note"], "figures": _unjson(r["figures"]) or [],
            "metrics": [{"name": _untext(m["name"]), "step": m["step"], "value": m["value"], "logged": iso(m["logged"])}
                        for m in self._query("SELECT name, step, value, logged FROM metrics WHERE run_id = ? "
                                             "ORDER BY rowid", (run_id,))],
            "artefact_list": [(a["hash"], a["kind"]) for a in self._query(
                "SELECT a.hash, a.kind FROM artefacts a JOIN run_artefacts ra ON ra.hash = a.hash WHERE ra.run_id = ?",
                (run_id,))],
        }

    def run(self, run_id: int) -> Run:
        """One run in full, with its result decoded (tensors, DataFrames and figures read from their files)."""
        r = self.raw_run(run_id)
        metrics = _frame(r["metrics"], ["name", "step", "value", "logged"])
        metrics["logged"] = pd.to_datetime(metrics["logged"], utc=True)
        metrics["step"] = metrics["step"].astype("Int64")
        decode_tree = lambda tree: decode(tree, self.files) if tree is not None else None  # noqa: E731
        return Run(r["run_id"], r["uid"], r["name"], r["hash"], pd.Timestamp(r["started"]), r["duration_s"],
                   r["status"], r["error"], decode_tree(r["arguments"]), decode_tree(r["result"]), r["result_type"],
                   r["stdout"], r["stderr"], r["model"], r["environment"], r["notebook"], r["cell_id"], r["tags"],
                   r["note"], metrics, decode_tree(r["figures"]) or [])

    def artefacts_of(self, name: str, hash: str, run_ids: Sequence[int] | None = None) -> list[tuple[int, str, str]]:
        """(run_id, artefact hash, kind) of every artefact the runs of one version (or the given runs
        of it) hold."""
        digest = self.resolve(name, hash)
        runs, ids = _only_runs("ra", run_ids)
        rows = self._query(f"SELECT ra.run_id, a.hash, a.kind FROM {runs} JOIN artefacts a ON a.hash = ra.hash "
                           "JOIN runs r ON r.id = ra.run_id JOIN versions v ON v.id = r.version_id JOIN experiments e "
                           "ON e.id = v.experiment_id WHERE e.name = ? AND v.hash = ? ORDER BY ra.run_id",
                           (*ids, name, digest))
        return [(r["run_id"], r["hash"], r["kind"]) for r in rows]

    def artefact(self, digest: str) -> tuple[pathlib.Path, str]:
        """(path, kind) of a stored artefact; unknown or malformed hashes raise."""
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ArrakisValueError(f"an artefact is named by 64 lowercase hex digits, got {str(digest)[:80]!r}")
        rows = self._query("SELECT kind FROM artefacts WHERE hash = ?", (digest,))
        if not rows:
            raise ArrakisKeyError(f"no artefact {digest} in {self.root}")
        return self.files.path(digest, rows[0]["kind"]), rows[0]["kind"]

    def last_run(self, name: str, hash: str | None = None, status: str | None = None) -> Run | None:
        """The most recent run of an experiment (or of one version), optionally with a given status."""
        runs = self.runs(name, hash, status=status, limit=1, newest_first=True)
        return self.run(int(runs["run_id"].iloc[0])) if len(runs) else None

    def metrics(self, name: str, hash: str | None = None, run_ids: Sequence[int] | None = None) -> pd.DataFrame:
        """Every metric logged by the runs of an experiment (or one version, or the given runs):
        run_id, version, name, step, value."""
        where, params = "v.experiment_id = ?", [self._experiment_id(name)]
        if hash is not None:
            where += " AND v.hash = ?"
            params.append(self.resolve(name, hash))
        runs, ids = _only_runs("m", run_ids)
        rows = self._query(f"SELECT m.run_id, v.hash AS version, m.name, m.step, m.value FROM {runs} JOIN runs r ON "
                           f"r.id = m.run_id JOIN versions v ON v.id = r.version_id WHERE {where} ORDER BY m.rowid",
                           [*ids, *params])
        df = _frame(rows, ["run_id", "version", "name", "step", "value"])
        df["step"] = df["step"].astype("Int64")
        return df

    def diff(self, name: str, a: str, b: str) -> VersionDiff:
        """Compare versions ``a`` and ``b``: unified diff of sources, the results of their last successful
        runs leaf by leaf, and their last run's final value of each metric."""
        va, vb = self.version(name, a, limit=0), self.version(name, b, limit=0)  # run_count, no run rows
        source_diff = "".join(difflib.unified_diff(
            va.source.splitlines(keepends=True), vb.source.splitlines(keepends=True),
            fromfile=f"{name} v{va.index} {va.hash}", tofile=f"{name} v{vb.index} {vb.hash}"))
        ra, rb = self.last_run(name, va.hash, "ok"), self.last_run(name, vb.hash, "ok")
        results = compare_values(ra.result if ra else None, rb.result if rb else None)
        ma, mb = self.last_run(name, va.hash), self.last_run(name, vb.hash)
        metrics = pd.concat([_final_metrics(ma), _final_metrics(mb)], axis=1,
                            keys=[f"a (v{va.index})", f"b (v{vb.index})"])
        metrics["delta"] = metrics.iloc[:, 1] - metrics.iloc[:, 0]
        metrics.index.name = "metric"
        return VersionDiff(name, va.hash, vb.hash, source_diff, results, metrics, va, vb)

    # ---- portable archives --------------------------------------------------------------------
    def export(self, path: str | os.PathLike, names: Sequence[str] | None = None) -> pathlib.Path:
        """Write the store (or the named experiments) to a zip archive that ``Store.import_`` reads."""
        from .archive import export_store

        return export_store(self, pathlib.Path(path), names)

    def import_(self, path: str | os.PathLike) -> dict[str, int]:
        """Merge an archive written by ``export`` into this store; runs already present are skipped.
        Returns counts: experiments in the archive, runs copied, runs skipped."""
        from .archive import import_archive

        return import_archive(self, pathlib.Path(path))


def _page_bound(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RUN_ID:
        raise ArrakisValueError(f"{what} must be an int in 0..{MAX_RUN_ID}, got {value!r}")
    return value


def _only_runs(alias: str, run_ids: Sequence[int] | None) -> tuple[str, list[str]]:
    """The FROM item of a table with a ``run_id`` column (``metrics m``, ``run_artefacts ra``) restricted
    to ``run_ids`` (all rows when None): driven by the ids, so a page of a huge version costs only its runs."""
    table = {"m": "metrics m", "ra": "run_artefacts ra"}[alias]
    if run_ids is None:
        return table, []
    return (f"json_each(?) ids CROSS JOIN {table} ON {alias}.run_id = ids.value",
            [json.dumps([int(i) for i in run_ids])])


def _frame(rows: Sequence[Any], columns: list[str]) -> pd.DataFrame:
    """A DataFrame of query rows (or dicts), text decoded by ``_untext``. Text with a lone surrogate cannot
    go into pandas' Arrow strings: then the text columns keep Python strings (object dtype)."""
    records = [{k: _untext(r[k]) for k in r.keys()} for r in rows]
    try:
        return pd.DataFrame(records, columns=columns)
    except UnicodeEncodeError:
        df = pd.DataFrame(records, columns=columns, dtype=object)
        for col in columns:
            if not any(isinstance(v, str) for v in df[col]):
                df[col] = df[col].infer_objects()
        return df


def _split_tags(text: Any) -> list[str]:
    return sorted(text.split(",")) if isinstance(text, str) and text else []


def _final_metrics(run: Run | None) -> pd.Series:
    if run is None or not len(run.metrics):
        return pd.Series(dtype=float)
    return run.metrics.groupby("name", sort=False)["value"].last()


def _epoch(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return ts.timestamp()


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by the string ``"nan"``, ``"inf"`` or ``"-inf"``
    (JSON has no such numbers; browsers refuse ``NaN`` in JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def _json(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(value, default=str, allow_nan=False)
    except ValueError:  # NaN or inf somewhere (a model config can hold one)
        return json.dumps(finite_json(value), default=str, allow_nan=False)


def _unjson(text: str | None) -> Any:
    return json.loads(text) if text else None


def _text(value: str | None) -> str | bytes | None:
    """Text as SQLite takes it: a string that is not valid UTF-8 (a lone surrogate, as a process's
    undecodable output gives) is kept exactly, as UTF-8 bytes with the surrogates passed through."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def _untext(value: Any) -> Any:
    """The string ``_text`` stored."""
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value
