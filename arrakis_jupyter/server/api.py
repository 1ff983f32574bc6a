"""The REST API's payloads, as plain functions of a store (no web framework): what handlers.py serves."""
from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any
from urllib.parse import quote

import pandas as pd

from ..errors import ArrakisError, ArrakisKeyError, ArrakisValueError
from ..store import Store, StoreError
from ..store.store import MAX_RUN_ID, finite_json

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
ORDERS = ("asc", "desc")


class PathError(ArrakisError):
    """A path that leads outside the server root or the store (403)."""


def dumps(payload: Any) -> str:
    """JSON text of a payload. JSON has no NaN or infinity: non-finite floats anywhere are sent as the
    strings "nan", "inf", "-inf" (walked only when a plain dump fails); unknown objects as ``str``."""
    try:
        return json.dumps(payload, allow_nan=False, default=str)
    except ValueError:
        return json.dumps(finite_json(payload), allow_nan=False, default=str)


def _value(v: Any) -> Any:
    """A JSON value for one DataFrame cell: timestamps as ISO strings, NaN/NaT (missing) as null."""
    if isinstance(v, pd.Timestamp):
        return None if pd.isna(v) else v.isoformat()
    if v is None or v is pd.NaT or v is pd.NA:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        return v.item()
    return v


def records(frame: pd.DataFrame) -> list[dict]:
    return [{k: _value(v) for k, v in row.items()} for row in frame.to_dict("records")]


def page(items: list[dict], offset: int, limit: int, total: int | None = None) -> dict:
    """A page: ``items`` is the whole list (sliced here) unless ``total`` says it is the page already."""
    if total is None:
        total, items = len(items), items[offset:offset + limit]
    return {"items": items, "total": total, "offset": offset, "limit": limit}


def paging(offset: Any, limit: Any) -> tuple[int, int]:
    """(offset, limit) from query strings, validated."""
    try:
        o = int(offset) if offset not in (None, "") else 0
        n = int(limit) if limit not in (None, "") else DEFAULT_LIMIT
    except ValueError:
        raise ArrakisValueError(f"offset and limit must be integers, got offset={str(offset)[:40]!r} "
                                f"limit={str(limit)[:40]!r}") from None
    if not 0 <= o <= MAX_RUN_ID or not 1 <= n <= MAX_LIMIT:
        raise ArrakisValueError(f"offset must be >= 0 and limit in 1..{MAX_LIMIT}, got offset={str(o)[:40]} "
                                f"limit={str(n)[:40]}")
    return o, n


def order(raw: Any) -> bool:
    """``order=asc|desc`` (default asc) as Store's ``newest_first``."""
    if raw in (None, ""):
        return False
    if raw not in ORDERS:
        raise ArrakisValueError(f"order must be 'asc' or 'desc', got {str(raw)[:40]!r}")
    return raw == "desc"


def moment(what: str, raw: Any) -> float | None:
    """A ``since``/``until`` bound (anything pandas reads as a time; UTC unless it says otherwise) in epoch s."""
    if raw in (None, ""):
        return None
    try:
        ts = pd.Timestamp(raw)
        if pd.isna(ts):
            raise ValueError(raw)
        return (ts if ts.tzinfo else ts.tz_localize("UTC")).timestamp()
    except (ValueError, TypeError, OverflowError, ArithmeticError):
        raise ArrakisValueError(f"{what} {str(raw)[:60]!r} is not a time (ISO 8601, e.g. 2024-05-01T12:00:00Z)") \
            from None


def experiments(store: Store | None, q: str, offset: int, limit: int) -> dict:
    if store is None:
        return page([], offset, limit)
    frame = store.experiments()
    if q:
        frame = frame[frame["name"].str.lower().str.contains(q.lower(), regex=False)]
    return page(records(frame), offset, limit)


def versions(store: Store, name: str, offset: int, limit: int) -> dict:
    return page(records(store.versions(name)), offset, limit)


def artefact_url(base_url: str, digest: str, dir_: str) -> str:
    return f"{base_url}arrakis/api/artefacts/{digest}?dir={quote(dir_)}"


def artefact_file(store: Store, digest: str) -> tuple[pathlib.Path, str]:
    """(real path, kind) of an artefact's file: only a regular file inside the store's artefacts folder
    (never a link leading out of it) may be read."""
    path, kind = store.artefact(digest)
    real = pathlib.Path(os.path.realpath(path))
    if store.root / "artefacts" not in real.parents or real.exists() and not real.is_file():
        raise PathError(f"the file of artefact {digest} is not a regular file inside the store: it is not served")
    if not real.exists():
        raise ArrakisKeyError(f"the file of artefact {digest} is missing from the store")
    return real, kind


def version(store: Store, name: str, ref: str, base_url: str, dir_: str, offset: int, limit: int) -> dict:
    """A version with one page of its runs (newest first) and the metrics and artefacts of those runs."""
    v = store.version(name, ref, limit=limit, offset=offset, newest_first=True)
    ids = [int(i) for i in v.runs["run_id"]]
    metrics = store.metrics(name, v.hash, run_ids=ids)
    return {"name": v.name, "v": v.index, "hash": v.hash, "kind": v.kind, "source": v.source,
            "first_seen": _value(v.first_seen), "last_seen": _value(v.last_seen), "run_count": v.run_count,
            "runs": page(records(v.runs), offset, limit, v.run_count),
            "metrics": records(metrics.drop(columns=["version"])),
            "artefacts": [{"run_id": run_id, "hash": h, "kind": kind, "url": artefact_url(base_url, h, dir_)}
                          for run_id, h, kind in store.artefacts_of(name, v.hash, run_ids=ids)]}


def runs(store: Store, name: str, args: dict[str, Any], offset: int, limit: int) -> dict:
    """One page of an experiment's runs (filtered), paged in SQL."""
    filters = dict(hash=args.get("hash") or None, status=args.get("status") or None, tag=args.get("tag") or None,
                   since=moment("since", args.get("since")), until=moment("until", args.get("until")))
    frame = store.runs(name, **filters, limit=limit, offset=offset, newest_first=order(args.get("order")))
    return page(records(frame), offset, limit, store.count_runs(name, **filters))


def run(store: Store, run_id: int, base_url: str, dir_: str) -> dict:
    raw = store.raw_run(run_id)
    raw["artefacts"] = [{"hash": h, "kind": kind, "url": artefact_url(base_url, h, dir_)}
                        for h, kind in raw.pop("artefact_list")]
    return raw


def diff(store: Store, name: str, a: str, b: str) -> dict:
    for ref in (a, b):  # the diff loads the artefacts of each version's last successful run: check them first
        for run_id in store.runs(name, ref, status="ok", limit=1, newest_first=True)["run_id"]:
            for digest, _ in store.raw_run(int(run_id))["artefact_list"]:
                artefact_file(store, digest)
    try:
        d = store.diff(name, a, b)
    except (ArrakisError, LookupError, ValueError, RecursionError):
        raise
    except Exception as e:  # noqa: BLE001 - e.g. a truncated tensor file: safetensors' own error type
        raise StoreError(f"the results of {name} {a} and {b} cannot be compared: an artefact file of the store "
                         f"cannot be read ({type(e).__name__}: {str(e)[:200]})") from e
    va, vb = d.version_a, d.version_b
    metrics = d.metrics.reset_index()
    metrics.columns = ["metric", "a", "b", "delta"]
    return {"name": name, "a": {"v": va.index, "hash": va.hash, "source": va.source},
            "b": {"v": vb.index, "hash": vb.hash, "source": vb.source}, "unified": d.source_diff,
            "results": records(d.results), "metrics": records(metrics)}


def check_patch(body: Any) -> dict:
    """The edit a PATCH body asks for, validated in full before anything is written."""
    if not isinstance(body, dict) or not body or not set(body) <= {"note", "add_tags", "remove_tags"}:
        raise ArrakisValueError('the body must be a JSON object with "note" (string), "add_tags" and/or '
                                '"remove_tags" (lists of strings)')
    if "note" in body and not isinstance(body["note"], str):
        raise ArrakisValueError(f"a note must be a string, got {type(body['note']).__name__}")
    for key in ("add_tags", "remove_tags"):
        tags = body.get(key, [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ArrakisValueError(f'"{key}" must be a list of strings, got {json.dumps(tags)[:100]}')
    return body  # tags and note are checked again by Store.edit_run, before it writes anything


def patch_run(store: Store, run_id: int, body: dict) -> dict:
    store.edit_run(run_id, body.get("note"), body.get("add_tags", ()), body.get("remove_tags", ()))
    raw = store.raw_run(run_id)
    return {k: raw[k] for k in ("run_id", "name", "hash", "status", "tags", "note")}
