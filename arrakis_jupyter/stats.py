"""Two-sample hypothesis tests: Welch's t-test, a permutation test and a paired sign-flip test.

``hypothesis_test(null_samples, alt_samples)`` asks whether ``alt_samples`` differ from ``null_samples``
(e.g. a metric under an intervention vs. under a baseline). ``alternative="greater"`` tests
mean(alt) > mean(null). Permutation p-values count "as or more extreme" with a relative tolerance of
1e-12 of the data's magnitude, so floating-point ties are never broken the wrong way. Two-sided
permutation p-values compare |difference of means| (not twice the smaller one-sided p-value).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import combinations, islice
from typing import Any

import numpy as np
import torch
from scipy import stats as _scipy_stats

from .errors import ArrakisValueError

METHODS = ("welch", "permutation", "paired_permutation")
ALTERNATIVES = ("two-sided", "greater", "less")
_REL_TOL = 1e-12  # "as or more extreme" tolerance, relative to the data's magnitude
_CHUNK = 1 << 20  # values held at once by the vectorised resampling (rows * row length)


@dataclass
class HypothesisTestResult:
    """Outcome of ``hypothesis_test``; ``statistic`` is Welch's t or the difference of means mean(alt) - mean(null)."""

    method: str
    alternative: str
    statistic: float
    p_value: float
    effect_size: float
    effect_size_name: str
    alpha: float
    reject_null: bool
    n_null: int
    n_alt: int
    mean_null: float
    mean_alt: float
    df: float | None
    n_resamples: int | None
    exact: bool

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain Python values (JSON-able)."""
        return asdict(self)


def hypothesis_test(null_samples: Any, alt_samples: Any, method: str = "welch", alternative: str = "two-sided",
                    alpha: float = 0.05, n_resamples: int = 10_000, seed: int | None = 0) -> HypothesisTestResult:
    """Test whether ``alt_samples`` differ from ``null_samples``.

    ``method``: ``"welch"`` (unequal-variance t-test), ``"permutation"`` (difference of means, exact when
    C(n_null + n_alt, n_alt) <= n_resamples, else ``n_resamples`` random permutations) or
    ``"paired_permutation"`` (sign flips of alt - null, exact when 2**n <= n_resamples). Random p-values are
    (count + 1) / (n_resamples + 1); exact ones count / total with the observed assignment included.
    Samples: a sequence of numbers / 0-d tensors / numpy scalars, or a 1-D tensor or array.
    """
    if method not in METHODS:
        raise ArrakisValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if alternative not in ALTERNATIVES:
        raise ArrakisValueError(f"alternative must be one of {', '.join(map(repr, ALTERNATIVES))}, got {alternative!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha < 1:
        raise ArrakisValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, numbers.Integral) or n_resamples < 1:
        raise ArrakisValueError(f"n_resamples must be a positive int, got {n_resamples!r}")
    null = _as_samples(null_samples, "null_samples")
    alt = _as_samples(alt_samples, "alt_samples")
    if method == "paired_permutation" and len(null) != len(alt):
        raise ArrakisValueError(f"paired_permutation needs samples of equal length, got {len(null)} null "
                                f"and {len(alt)} alt samples")

    common = {"method": method, "alternative": alternative, "alpha": float(alpha), "n_null": len(null),
              "n_alt": len(alt), "mean_null": float(null.mean()), "mean_alt": float(alt.mean())}
    if method == "welch":
        t, df, p = _welch(null, alt, alternative)
        return _result(common, statistic=t, p_value=p, effect_size=_cohen_d(null, alt), effect_size_name="cohen_d",
                       df=df, n_resamples=None, exact=False)
    rng = np.random.default_rng(seed)
    if method == "permutation":
        observed, p, used, exact = _permutation(null, alt, alternative, int(n_resamples), rng)
        return _result(common, statistic=observed, p_value=p, effect_size=_cohen_d(null, alt),
                       effect_size_name="cohen_d", df=None, n_resamples=used, exact=exact)
    diff = alt - null
    observed, p, used, exact = _sign_flip(diff, alternative, int(n_resamples), rng)
    return _result(common, statistic=observed, p_value=p, effect_size=_ratio(diff.mean(), diff.std(ddof=1)),
                   effect_size_name="cohen_dz", df=None, n_resamples=used, exact=exact)


# ---- inputs ------------------------------------------------------------------------------------

def _as_samples(values: Any, group: str) -> np.ndarray:
    """A 1-D float64 array of finite values, at least 2 of them."""
    if isinstance(values, torch.Tensor):
        if values.ndim != 1:
            raise ArrakisValueError(f"{group} must be 1-D, got a tensor of shape {tuple(values.shape)}")
        arr = values.detach().to("cpu", torch.float64).numpy()
    elif isinstance(values, np.ndarray) and values.dtype != object:
        if values.ndim != 1:
            raise ArrakisValueError(f"{group} must be 1-D, got an array of shape {values.shape}")
        if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool) \
                or np.issubdtype(values.dtype, np.complexfloating):
            raise ArrakisValueError(f"{group} must hold real numbers, got dtype {values.dtype}")
        arr = values.astype(np.float64)
    elif isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ArrakisValueError(f"{group} must be a sequence of numbers or a 1-D tensor/array, "
                                f"got {type(values).__name__}")
    else:
        arr = np.array([_as_scalar(v, group, i) for i, v in enumerate(values)], dtype=np.float64)
    if len(arr) < 2:
        raise ArrakisValueError(f"{group} needs at least 2 samples, got {len(arr)}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if len(bad):
        raise ArrakisValueError(f"{group} must be finite, got {arr[bad[0]]} at index {int(bad[0])}"
                                + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    return arr


def _as_scalar(value: Any, group: str, index: int) -> float:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if value.ndim != 0:
            raise ArrakisValueError(f"{group}[{index}] must be a scalar (number, 0-d tensor or numpy scalar), "
                                    f"got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, (numbers.Real, np.bool_)):
        return float(value)
    raise ArrakisValueError(f"{group}[{index}] must be a real number, got {type(value).__name__} {value!r}")


# ---- statistics --------------------------------------------------------------------------------

def _result(common: dict, **fields: Any) -> HypothesisTestResult:
    p = float(fields.pop("p_value"))
    df = fields.pop("df")
    return HypothesisTestResult(**common, p_value=p, reject_null=bool(p < common["alpha"]),
                                statistic=float(fields.pop("statistic")), effect_size=float(fields.pop("effect_size")),
                                df=None if df is None else float(df), **fields)


def _ratio(num: float, den: float) -> float:
    """num / den, with +-inf (or nan for 0 / 0) when the spread den is zero."""
    if den > 0:
        return float(num / den)
    return float("nan") if num == 0 else math.copysign(math.inf, num)


def _cohen_d(null: np.ndarray, alt: np.ndarray) -> float:
    pooled = math.sqrt((null.var(ddof=1) + alt.var(ddof=1)) / 2)
    return _ratio(alt.mean() - null.mean(), pooled)


def _welch(null: np.ndarray, alt: np.ndarray, alternative: str) -> tuple[float, float, float]:
    a, b = alt.var(ddof=1) / len(alt), null.var(ddof=1) / len(null)
    if a + b == 0:
        same = "equal" if alt.mean() == null.mean() else "different"
        raise ArrakisValueError(f"Welch's t is undefined: both groups have zero variance (constant samples, "
                                f"{same} means); use method='permutation'")
    t = (alt.mean() - null.mean()) / math.sqrt(a + b)
    df = (a + b) ** 2 / (a**2 / (len(alt) - 1) + b**2 / (len(null) - 1))
    dist = _scipy_stats.t(df)
    p = {"greater": dist.sf(t), "less": dist.cdf(t), "two-sided": 2 * dist.sf(abs(t))}[alternative]
    return float(t), float(df), float(min(p, 1.0))


def _extreme_count(stats: np.ndarray, observed: float, alternative: str, tol: float) -> int:
    """How many resampled statistics are as or more extreme than the observed one."""
    if alternative == "greater":
        return int(np.count_nonzero(stats >= observed - tol))
    if alternative == "less":
        return int(np.count_nonzero(stats <= observed + tol))
    return int(np.count_nonzero(np.abs(stats) >= abs(observed) - tol))


def _p_value(chunks: Iterator[np.ndarray], observed: float, alternative: str, tol: float,
             exact: bool) -> tuple[float, int]:
    count = total = 0
    for stats in chunks:
        count += _extreme_count(stats, observed, alternative, tol)
        total += len(stats)
    p = count / total if exact else (count + 1) / (total + 1)
    return p, total


def _permutation(null: np.ndarray, alt: np.ndarray, alternative: str, n_resamples: int,
                 rng: np.random.Generator) -> tuple[float, float, int, bool]:
    pooled = np.concatenate([null, alt])
    n, k = len(pooled), len(alt)
    total_sum = pooled.sum()
    observed = float(alt.mean() - null.mean())
    tol = _REL_TOL * max(abs(observed), float(np.abs(pooled).max()))

    def stat(alt_sums: np.ndarray) -> np.ndarray:
        return alt_sums / k - (total_sum - alt_sums) / (n - k)

    rows = max(1, _CHUNK // n)
    exact = math.comb(n, k) <= n_resamples
    if exact:  # every assignment of k of the n pooled values to the alt group
        combos = combinations(range(n), k)

        def chunks() -> Iterator[np.ndarray]:
            while block := list(islice(combos, rows)):
                yield stat(pooled[np.array(block)].sum(axis=1))
    else:
        def chunks() -> Iterator[np.ndarray]:
            for start in range(0, n_resamples, rows):
                m = min(rows, n_resamples - start)
                shuffled = rng.permuted(np.tile(pooled, (m, 1)), axis=1)
                yield stat(shuffled[:, :k].sum(axis=1))
    p, used = _p_value(chunks(), observed, alternative, tol, exact)
    return observed, p, used, exact


def _sign_flip(diff: np.ndarray, alternative: str, n_resamples: int,
               rng: np.random.Generator) -> tuple[float, float, int, bool]:
    n = len(diff)
    observed = float(diff.mean())
    tol = _REL_TOL * max(abs(observed), float(np.abs(diff).max()))
    rows = max(1, _CHUNK // n)
    exact = 2**n <= n_resamples
    if exact:
        def chunks() -> Iterator[np.ndarray]:
            for start in range(0, 2**n, rows):
                codes = np.arange(start, min(start + rows, 2**n))
                signs = 1.0 - 2.0 * ((codes[:, None] >> np.arange(n)) & 1)
                yield signs @ diff / n
    else:
        def chunks() -> Iterator[np.ndarray]:
            for start in range(0, n_resamples, rows):
                m = min(rows, n_resamples - start)
                signs = 1.0 - 2.0 * rng.integers(0, 2, size=(m, n))
                yield signs @ diff / n
    p, used = _p_value(chunks(), observed, alternative, tol, exact)
    return observed, p, used, exact
