"""The REST API's payloads, as plain functions of a store (no web framework): what handlers.py serves."""
from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import quote

import pandas as pd

from ..errors import ArrakisValueError
from ..store import Store

MAX_LIMIT = 500
DEFAULT_LIMIT = 50


def _value(v: Any) -> Any:
    """A JSON value for one DataFrame cell: timestamps as ISO strings, NaN/NaT as null."""
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


def page(items: list[dict], offset: int, limit: int) -> dict:
    return {"items": items[offset:offset + limit], "total": len(items), "offset": offset, "limit": limit}


def paging(offset: Any, limit: Any) -> tuple[int, int]:
    """(offset, limit) from query strings, validated."""
    try:
        o = int(offset) if offset not in (None, "") else 0
        n = int(limit) if limit not in (None, "") else DEFAULT_LIMIT
    except ValueError:
        raise ArrakisValueError(f"offset and limit must be integers, got offset={offset!r} limit={limit!r}") from None
    if o < 0 or not 1 <= n <= MAX_LIMIT:
        raise ArrakisValueError(f"offset must be >= 0 and limit in 1..{MAX_LIMIT}, got offset={o} limit={n}")
    return o, n


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


def version(store: Store, name: str, ref: str, base_url: str, dir_: str) -> dict:
    v = store.version(name, ref)
    metrics = store.metrics(name, v.hash)
    return {"name": v.name, "v": v.index, "hash": v.hash, "kind": v.kind, "source": v.source,
            "first_seen": _value(v.first_seen), "last_seen": _value(v.last_seen), "runs": records(v.runs),
            "metrics": records(metrics.drop(columns=["version"])),
            "artefacts": [{"run_id": run_id, "hash": h, "kind": kind, "url": artefact_url(base_url, h, dir_)}
                          for run_id, h, kind in store.artefacts_of(name, v.hash)]}


def runs(store: Store, name: str, args: dict[str, Any], offset: int, limit: int) -> dict:
    frame = store.runs(name, args.get("hash") or None, status=args.get("status") or None,
                       tag=args.get("tag") or None, since=args.get("since") or None, until=args.get("until") or None)
    return page(records(frame), offset, limit)


def run(store: Store, run_id: int, base_url: str, dir_: str) -> dict:
    raw = store.raw_run(run_id)
    raw["artefacts"] = [{"hash": h, "kind": kind, "url": artefact_url(base_url, h, dir_)}
                        for h, kind in raw.pop("artefact_list")]
    return raw


def diff(store: Store, name: str, a: str, b: str) -> dict:
    d = store.diff(name, a, b)
    va, vb = d.version_a, d.version_b
    metrics = d.metrics.reset_index()
    metrics.columns = ["metric", "a", "b", "delta"]
    return {"name": name, "a": {"v": va.index, "hash": va.hash, "source": va.source},
            "b": {"v": vb.index, "hash": vb.hash, "source": vb.source}, "unified": d.source_diff,
            "results": records(d.results), "metrics": records(metrics)}


def patch_run(store: Store, run_id: int, body: Any) -> dict:
    if not isinstance(body, dict) or not set(body) <= {"note", "add_tags", "remove_tags"} or not body:
        raise ArrakisValueError('the body must be a JSON object with "note" (string), "add_tags" and/or '
                                '"remove_tags" (lists of strings)')
    for key in ("add_tags", "remove_tags"):
        tags = body.get(key, [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ArrakisValueError(f'"{key}" must be a list of strings, got {json.dumps(tags)[:100]}')
    if "note" in body:
        store.set_note(run_id, body["note"])
    if body.get("add_tags"):
        store.add_tags(run_id, *body["add_tags"])
    if body.get("remove_tags"):
        store.remove_tags(run_id, *body["remove_tags"])
    raw = store.raw_run(run_id)
    return {k: raw[k] for k in ("run_id", "name", "hash", "status", "tags", "note")}
