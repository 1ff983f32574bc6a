"""The experiment store: versions and runs in SQLite, large artefacts in content-addressed files."""
from .artefacts import StoredFigure, Unserialisable
from .hashing import normalise_source, source_hash
from .schema import SCHEMA_VERSION, StoreVersionError
from .records import Run, RunRecord, Version, VersionDiff, check_name
from .sqlite import StoreBusyError
from .store import Store, StoreError, StoreReadOnlyError, default_store_dir

__all__ = ["SCHEMA_VERSION", "Run", "RunRecord", "Store", "StoreBusyError", "StoreError", "StoreReadOnlyError", "StoreVersionError",
           "StoredFigure", "Unserialisable", "Version", "VersionDiff", "check_name", "default_store_dir",
           "normalise_source", "source_hash"]
