"""DataFrames and Series in the store: pandas' table (or split) JSON with exact float values.

pandas writes floats rounded to 10 digits and ±inf as null; here float cells are written as Python
floats (whose repr round-trips) and the places of ±inf (and of NaN in object columns) are kept in the
artefact's node, with the dtypes and index/column labels, so that ``read_frame`` gives the frame back.
"""
from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
import pandas as pd

FRAME_JSON = {"default_handler": repr, "date_format": "iso", "date_unit": "ns"}


def frame_json(frame: pd.DataFrame, orient: str) -> tuple[str, dict[str, dict[str, list[int]]]]:
    """``frame`` in pandas' ``table`` or ``split`` JSON, with float values exact: pandas rounds them to 10
    digits, so they are written as Python floats (whose repr round-trips), null where not finite. Returns the
    JSON and where ±inf were (and NaN, in object columns): ``{field: {"inf": rows, "-inf": rows, "nan": rows}}``,
    fields numbered index levels first."""
    n_index = frame.index.nlevels
    fields = [frame.index.get_level_values(i) for i in range(n_index)]
    fields += [frame.iloc[:, j] for j in range(frame.shape[1])]
    exact = {k: _float_values(f) for k, f in enumerate(fields) if f.dtype.kind == "f" or f.dtype == object}
    if orient == "table":
        head = json.loads(frame.iloc[:1].to_json(orient="table", **FRAME_JSON))  # schema, and the rows' keys
        rest = frame.iloc[:, [j for j in range(frame.shape[1]) if fields[n_index + j].dtype.kind != "f"]]
        rows = json.loads(rest.to_json(orient="table", **FRAME_JSON))["data"]  # all but float columns
        keys = list(head["data"][0]) if head["data"] else []
        columns = [exact[k][0] if fields[k].dtype.kind == "f" else [row[key] for row in rows]
                   for k, key in enumerate(keys)]
        for k, (values, _) in exact.items():
            if fields[k].dtype == object:
                columns[k] = [c if v is _KEEP else v for c, v in zip(columns[k], values)]
        tree = {"schema": head["schema"], "data": [dict(zip(keys, values)) for values in zip(*columns)]}
    else:
        tree = json.loads(frame.to_json(orient="split", **FRAME_JSON))
        for k, (values, _) in exact.items():
            rows, key = (tree["data"], k - n_index) if k >= n_index else (tree["index"], k)
            if k < n_index == 1:
                tree["index"] = [c if v is _KEEP else v for c, v in zip(tree["index"], values)]
                continue
            for row, v in zip(rows, values):
                if v is not _KEEP:
                    row[key] = v
    nonfinite = {str(k): where for k, (_, where) in exact.items() if where}
    return json.dumps(tree, allow_nan=False, check_circular=False, separators=(",", ":")), nonfinite


_KEEP = object()  # a cell of an object column that is not a float: as pandas wrote it


def _float_values(values: pd.Series | pd.Index) -> tuple[list, dict[str, list[int]]]:
    """A column's float values as Python floats (None where not finite; ``_KEEP`` for the other cells of an
    object column), and the rows of ±inf (and of NaN, in an object column)."""
    if values.dtype == object:
        items = [float(v) if isinstance(v, (float, np.floating)) else _KEEP for v in values.tolist()]
        a = np.array([math.nan if v is _KEEP else v for v in items], dtype=np.float64)
        nan = [i for i, v in enumerate(items) if v is not _KEEP and v != v]
    else:
        a = np.asarray(values.to_numpy(dtype=np.float64, na_value=np.nan))
        items, nan = a.tolist(), []
    bad = ~np.isfinite(a)
    for i in np.flatnonzero(bad).tolist():
        if items[i] is not _KEEP:
            items[i] = None
    where = {"inf": np.flatnonzero(a == np.inf).tolist(), "-inf": np.flatnonzero(a == -np.inf).tolist(), "nan": nan}
    return items, {sign: rows for sign, rows in where.items() if rows}


def read_frame(text: str, node: dict) -> pd.DataFrame:
    """The DataFrame ``frame_json`` wrote (parsed exactly, by Python's json), its ±inf, dtypes and labels restored."""
    if "labels" not in node:  # written before exact floats: pandas' reader, as then
        return pd.read_json(io.StringIO(text), orient=node["orient"])
    tree, (index_spec, columns_spec) = json.loads(text), node["labels"]
    n_index = index_spec["levels"]
    if node["orient"] == "table":
        fields = _table_fields(tree)
        names: list = [f["name"] for f in tree["schema"]["fields"][n_index:]]
    else:
        width, rows = len(tree["columns"]), tree["data"]
        index = tree["index"] if n_index == 1 else [[v[i] for v in tree["index"]] for i in range(n_index)]
        fields = ([pd.Series(index, dtype=object)] if n_index == 1 else [pd.Series(v, dtype=object) for v in index])
        fields += [pd.Series([row[j] for row in rows], dtype=None if rows else object) for j in range(width)]
        names = tree["columns"] if columns_spec["levels"] == 1 else [list(v) for v in zip(*tree["columns"])]
    for k, where in node.get("nonfinite", {}).items():
        field = fields[int(k)]
        values = field.to_numpy(copy=True) if field.dtype == object else field.to_numpy(np.float64, True, np.nan)
        for sign, rows in where.items():
            values[rows] = float(sign)
        fields[int(k)] = pd.Series(values)
    columns = [_astype(f, d) for f, d in zip(fields[n_index:], node["dtypes"])]
    frame = pd.DataFrame({j: c.array for j, c in enumerate(columns)}, index=_axis(fields[:n_index], index_spec))
    frame.columns = _axis(names if columns_spec["levels"] > 1 else [names], columns_spec)
    return frame


def _table_fields(tree: dict) -> list[pd.Series]:
    """The fields (index levels, then columns) of pandas' table JSON, typed as its schema says."""
    from pandas.io.json._table_schema import convert_json_field_to_pandas_type

    fields, rows = tree["schema"]["fields"], tree["data"]
    keys = list(rows[0]) if rows else []
    out = []
    for j, field in enumerate(fields):
        column = pd.Series([row[keys[j]] for row in rows], dtype=None if rows else object)
        try:
            out.append(column.astype(convert_json_field_to_pandas_type(field)))
        except Exception:  # ISO durations, which pandas cannot read...: typed by the node's dtypes, if at all
            out.append(column)
    return out


def axis_spec(labels: pd.Index) -> dict:
    """What rebuilds an index (or the columns) from JSON: levels, names and each level's dtype."""
    levels = [labels.get_level_values(i) for i in range(labels.nlevels)]
    spec = {"levels": labels.nlevels, "names": [label(n) for n in labels.names],
            "dtypes": [str(v.dtype) for v in levels]}
    if isinstance(labels, pd.RangeIndex):
        spec["range"] = [labels.start, labels.stop, labels.step]
    return spec


def _axis(levels: list, spec: dict) -> pd.Index:
    """An index (or columns) from its levels' values and ``_axis_spec``."""
    if "range" in spec:
        return pd.RangeIndex(*spec["range"], name=spec["names"][0])
    arrays = [_astype(pd.Index(v), d) for v, d in zip(levels, spec["dtypes"])]
    if spec["levels"] == 1:
        return arrays[0].rename(spec["names"][0])
    return pd.MultiIndex.from_arrays(arrays, names=spec["names"])


def _astype(values: Any, dtype: str) -> Any:
    """``values`` as ``dtype`` (a dtype's name), or as they are where pandas cannot convert them."""
    if str(values.dtype) == dtype:
        return values
    try:
        return values.astype(dtype)
    except Exception:  # kept as read
        return values


def label(name: Any) -> Any:
    """A Series / index name as JSON (its repr where it is not a str, int or None)."""
    name = name.item() if isinstance(name, np.generic) else name
    return name if isinstance(name, (str, int, type(None))) else _repr(name)


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as e:  # a broken __repr__ must not lose the run
        return f"<repr failed: {type(e).__name__}>"
