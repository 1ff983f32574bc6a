"""Side-by-side comparison of two stored results (used by ``Store.diff``)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .artefacts import describe, is_tensor

MAX_ROWS = 200


def _short(value: Any) -> str:
    if is_tensor(value) or isinstance(value, (np.ndarray, pd.DataFrame, pd.Series)) or value is None:
        return describe(value) if value is not None else "None"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _array_diff(a: Any, b: Any) -> tuple[bool, float]:
    x = a.detach().double().cpu().numpy() if is_tensor(a) else np.asarray(a, dtype=float)
    y = b.detach().double().cpu().numpy() if is_tensor(b) else np.asarray(b, dtype=float)
    if x.shape != y.shape:
        return False, math.nan
    diff = float(np.nanmax(np.abs(x - y))) if x.size else 0.0
    return bool(np.array_equal(x, y, equal_nan=True)), diff


def compare_values(a: Any, b: Any, path: str = "result") -> pd.DataFrame:
    """One row per leaf that differs in structure or value: path, a, b, equal, max_abs_diff."""
    rows: list[dict] = []
    _walk(a, b, path, rows)
    return pd.DataFrame(rows[:MAX_ROWS], columns=["path", "a", "b", "equal", "max_abs_diff"])


def _walk(a: Any, b: Any, path: str, rows: list[dict]) -> None:
    if len(rows) >= MAX_ROWS:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            _walk(a.get(key, _Missing), b.get(key, _Missing), f"{path}[{key!r}]", rows)
        return
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b) and len(a) <= 50:
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, f"{path}[{i}]", rows)
        return
    equal, diff = _leaf(a, b)
    rows.append({"path": path, "a": _short(a), "b": _short(b), "equal": equal, "max_abs_diff": diff})


def _leaf(a: Any, b: Any) -> tuple[bool, float]:
    def array(v: Any) -> bool:
        return is_tensor(v) or isinstance(v, np.ndarray)

    if array(a) and array(b):
        try:
            return _array_diff(a, b)
        except (TypeError, ValueError):
            return False, math.nan
    if isinstance(a, pd.DataFrame) and isinstance(b, pd.DataFrame) or isinstance(a, pd.Series) and isinstance(b, pd.Series):
        equal = a.equals(b)
        numeric_a, numeric_b = a.select_dtypes("number") if a.ndim == 2 else a, b.select_dtypes("number") if b.ndim == 2 else b
        try:
            return equal, _array_diff(numeric_a.to_numpy(), numeric_b.to_numpy())[1]
        except (TypeError, ValueError):
            return equal, math.nan
    if _number(a) and _number(b):
        return a == b or (math.isnan(a) and math.isnan(b)), abs(a - b)
    try:
        return bool(a == b), math.nan
    except Exception:
        return False, math.nan


class _MissingType:
    def __repr__(self) -> str:
        return "<missing>"


_Missing = _MissingType()
