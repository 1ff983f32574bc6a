"""The store's tables, and the migrations that bring an older store up to SCHEMA_VERSION.

The schema version lives in SQLite's ``PRAGMA user_version``. A store written by a newer
arrakis_jupyter (a higher version) is refused before anything is written to it.
"""
from __future__ import annotations

import sqlite3
from typing import Callable

from ..errors import ArrakisError
from .hashing import source_hash

SCHEMA_V1 = """
CREATE TABLE experiments (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE versions (
    id INTEGER PRIMARY KEY,
    experiment_id INTEGER NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    UNIQUE (experiment_id, hash)
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    started REAL NOT NULL,
    duration REAL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error', 'interrupted')),
    error TEXT,
    arguments TEXT,
    result TEXT,
    result_type TEXT,
    stdout TEXT,
    stderr TEXT,
    model TEXT,
    environment TEXT,
    notebook TEXT,
    cell_id TEXT,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX runs_by_version ON runs (version_id, started);
CREATE INDEX runs_by_started ON runs (started);
CREATE TABLE tags (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (run_id, tag)
) WITHOUT ROWID;
CREATE INDEX tags_by_tag ON tags (tag);
CREATE TABLE metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    step INTEGER,
    value REAL,
    logged REAL NOT NULL
);
CREATE INDEX metrics_by_run ON metrics (run_id, name);
CREATE TABLE artefacts (
    hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    file TEXT NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE run_artefacts (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    hash TEXT NOT NULL REFERENCES artefacts(hash),
    PRIMARY KEY (run_id, hash)
) WITHOUT ROWID;
"""


def _script(sql: str) -> Callable[[sqlite3.Connection], None]:
    def apply(conn: sqlite3.Connection) -> None:
        for statement in sql.split(";"):
            if statement.strip():
                conn.execute(statement)

    return apply


# v2: figures drawn during a run (bench.plot_results), encoded like results.
SCHEMA_V2 = "ALTER TABLE runs ADD COLUMN figures TEXT"


# v3: version hashes from the corrected source_hash (the old one ignored dedents, so it merged programs that
# differ in indentation structure). Versions the old function kept apart keep their runs. Runs it had merged
# into one version stay under that version's (first) source: the store never had the other sources, so they
# cannot be split. Versions that now share a hash are merged into the one first seen.
def _rehash_versions(conn: sqlite3.Connection) -> None:
    """Re-hash every version; merge versions of one experiment whose new hashes are equal."""
    keep: dict[tuple[int, str], int] = {}
    for vid, experiment, source, first, last in conn.execute(
            "SELECT id, experiment_id, source, first_seen, last_seen FROM versions ORDER BY first_seen, id").fetchall():
        target = keep.setdefault((experiment, source_hash(source)), vid)
        if target != vid:
            conn.execute("UPDATE runs SET version_id = ? WHERE version_id = ?", (target, vid))
            conn.execute("UPDATE versions SET first_seen = min(first_seen, ?), last_seen = max(last_seen, ?) "
                         "WHERE id = ?", (first, last, target))
            conn.execute("DELETE FROM versions WHERE id = ?", (vid,))
    # through a temporary value that no hash can equal, so UNIQUE (experiment_id, hash) holds at every row
    conn.execute("UPDATE versions SET hash = '~' || id")
    conn.executemany("UPDATE versions SET hash = ? WHERE id = ?", [(h, vid) for (_, h), vid in keep.items()])


# MIGRATIONS[v] turns a version v-1 store into a version v store (inside one transaction).
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _script(SCHEMA_V1), 2: _script(SCHEMA_V2),
                                                               3: _rehash_versions}
SCHEMA_VERSION = max(MIGRATIONS)


class StoreVersionError(ArrakisError):
    """The store was written by a newer arrakis_jupyter than this one."""


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def check_not_newer(conn: sqlite3.Connection, where: str) -> int:
    version = schema_version(conn)
    latest = max(MIGRATIONS)
    if version > latest:
        raise StoreVersionError(
            f"the experiment store {where} has schema version {version}, but this arrakis_jupyter understands "
            f"versions up to {latest}; upgrade arrakis_jupyter to open it (the store was not modified)")
    return version


def migrate(conn: sqlite3.Connection, where: str, lock_timeout: float = 60.0) -> None:
    """Bring the store up to the latest schema, in one IMMEDIATE transaction (safe against concurrent
    openers, interrupts and kills: a migration is applied whole or not at all)."""
    from .sqlite import transaction

    if check_not_newer(conn, where) == max(MIGRATIONS):
        return
    with transaction(conn, lock_timeout, f"upgrading the experiment store {where}"):
        version = check_not_newer(conn, where)  # another process may have migrated meanwhile
        for target in range(version + 1, max(MIGRATIONS) + 1):
            MIGRATIONS[target](conn)
            conn.execute(f"PRAGMA user_version = {int(target)}")
