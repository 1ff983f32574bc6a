"""Side-by-side comparison of two stored results (used by ``Store.diff``).

``max_abs_diff`` is always a float: inf where values are that far apart (or overflow), NaN where nothing
compares (NaN against a number, values that are not numbers); equal non-finite values (inf and inf, NaN and
NaN) count as equal, with a difference of 0.
"""
from __future__ import annotations

import math
import sys
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
    return isinstance(value, (int, float, complex, np.number)) and not isinstance(value, (bool, np.bool_))


def _numpy(value: Any) -> np.ndarray:
    """A tensor or array as numpy, exactly (dtypes numpy lacks, like bfloat16, widened)."""
    if not is_tensor(value):
        return np.asarray(value)
    t = value.detach().cpu().resolve_conj().resolve_neg()
    try:
        return t.numpy()
    except TypeError:  # bfloat16, float8, complex32...
        return (t.to(sys.modules["torch"].complex64) if t.is_complex() else t.double()).numpy()


def _array_diff(a: Any, b: Any) -> tuple[bool, float]:
    x, y = _numpy(a), _numpy(b)
    if x.shape != y.shape:
        return False, math.nan
    with np.errstate(all="ignore"):
        equal = bool(np.array_equal(x, y, equal_nan=x.dtype.kind in "fc" and y.dtype.kind in "fc"))
        if equal or not x.size:
            return equal, 0.0
        wide = np.complex128 if "c" in (x.dtype.kind, y.dtype.kind) else np.float64
        x, y = x.astype(wide), y.astype(wide)
        diff = np.abs(x - y)
        diff[(x == y) | np.isnan(x) & np.isnan(y)] = 0.0
        comparable = diff[~np.isnan(diff)]
        return False, float(comparable.max()) if comparable.size else math.nan


def _scalar_diff(a: Any, b: Any) -> tuple[bool, float]:
    a, b = (v.item() if isinstance(v, np.generic) else v for v in (a, b))
    if a == b or (_isnan(a) and _isnan(b)):
        return True, 0.0
    try:
        return False, float(abs(a - b))
    except OverflowError:  # ints too big for a float
        return False, math.inf


def _isnan(value: Any) -> bool:
    return isinstance(value, (float, complex)) and value != value


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
        except Exception:  # object arrays of things that are not numbers
            return False, math.nan
    if isinstance(a, pd.DataFrame) and isinstance(b, pd.DataFrame) or isinstance(a, pd.Series) and isinstance(b, pd.Series):
        equal = a.equals(b)
        numeric_a, numeric_b = a.select_dtypes("number") if a.ndim == 2 else a, b.select_dtypes("number") if b.ndim == 2 else b
        try:
            return equal, 0.0 if equal else _array_diff(numeric_a.to_numpy(na_value=np.nan),
                                                       numeric_b.to_numpy(na_value=np.nan))[1]
        except Exception:
            return equal, math.nan
    if _number(a) and _number(b):
        return _scalar_diff(a, b)
    try:
        return bool(a == b), math.nan
    except Exception:
        return False, math.nan


class _MissingType:
    def __repr__(self) -> str:
        return "<missing>"


_Missing = _MissingType()
