"""Portable archives of a store: a zip with a manifest, a snapshot database and the artefact files."""
from __future__ import annotations

import json
import os
import pathlib
import tempfile
import time
import zipfile
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from .store import Store

EXPORT_FORMAT = "arrakis-export/1"


def copy_runs(src: "Store", dst: "Store", names: Sequence[str] | None = None) -> dict[str, int]:
    """Copy the runs of ``src`` (of the named experiments, or all) into ``dst`` in one transaction,
    skipping runs ``dst`` already has (runs are identified by their uid)."""
    where, params = "", []
    if names:
        where, params = f"WHERE e.name IN ({', '.join('?' * len(names))})", list(names)
    rows = src._query("SELECT e.name, e.created, v.hash, v.kind, v.source, v.first_seen, v.last_seen, r.* "
                      "FROM runs r JOIN versions v ON v.id = r.version_id JOIN experiments e ON "
                      f"e.id = v.experiment_id {where} ORDER BY r.id", params)
    copied = skipped = 0
    with dst._write() as c:
        for r in rows:
            if c.execute("SELECT 1 FROM runs WHERE uid = ?", (r["uid"],)).fetchone():
                skipped += 1
                continue
            run_id = dst._insert_run(c, r["name"], r["created"], r["hash"], r["kind"], r["source"], r["first_seen"],
                                     r["last_seen"], r)
            tags = [t[0] for t in src._query("SELECT tag FROM tags WHERE run_id = ?", (r["id"],))]
            metrics = [tuple(m) for m in src._query("SELECT name, step, value, logged FROM metrics WHERE run_id = ? "
                                                    "ORDER BY rowid", (r["id"],))]
            artefacts = {}
            for kind, rel in src._query("SELECT a.kind, a.file FROM artefacts a JOIN run_artefacts ra "
                                        "ON ra.hash = a.hash WHERE ra.run_id = ?", (r["id"],)):
                digest, new_rel, size = dst.files.put((src.files.root / rel).read_bytes(), kind)
                artefacts[digest] = (kind, new_rel, size)
            dst._link(c, run_id, tags, metrics, artefacts)
            copied += 1
    return {"experiments": len({r["name"] for r in rows}), "runs": copied, "skipped": skipped}


def export_store(store: "Store", path: pathlib.Path, names: Sequence[str] | None = None) -> pathlib.Path:
    from .store import DB_NAME, Store

    for name in names or ():
        store._experiment_id(name)  # unknown names fail before anything is written
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Store(tmp)
        counts = copy_runs(store, snapshot, names)
        conn = snapshot._conn()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        snapshot.close()
        manifest = {"format": EXPORT_FORMAT, "created": time.time(), "source": str(store.root), **counts}
        partial = path.with_name(path.name + ".partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("manifest.json", json.dumps(manifest, indent=1))
            z.write(snapshot.db_path, DB_NAME)
            for f in sorted(snapshot.files.root.rglob("*")):
                if f.is_file():
                    z.write(f, f"artefacts/{f.relative_to(snapshot.files.root).as_posix()}")
        os.replace(partial, path)
    return path


def import_archive(store: "Store", path: pathlib.Path) -> dict[str, int]:
    from .store import DB_NAME, Store, StoreError

    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise StoreError(f"{path} is not an arrakis export archive (a zip written by Store.export): {e}") from e
    with archive, tempfile.TemporaryDirectory() as tmp:
        names = archive.namelist()
        try:
            manifest = json.loads(archive.read("manifest.json"))
        except (KeyError, ValueError):
            manifest = {}
        if manifest.get("format") != EXPORT_FORMAT or DB_NAME not in names:
            raise StoreError(f"{path} is not an arrakis export archive: expected manifest.json with format "
                             f"{EXPORT_FORMAT!r} and {DB_NAME}")
        for member in names:  # only the database and artefact files, never a path outside tmp
            if member == DB_NAME or (member.startswith("artefacts/") and ".." not in member.split("/")):
                archive.extract(member, tmp)
        source = Store(tmp)  # checks the snapshot's schema version (a newer one is refused)
        try:
            return copy_runs(source, store)
        finally:
            source.close()
