"""hypothesis_test against independent references: scipy and brute-force enumeration written here."""
from __future__ import annotations

import json
import math
from itertools import combinations, product

import numpy as np
import pytest
import torch
from scipy import stats as ss

from arrakis_jupyter.errors import ArrakisValueError
from arrakis_jupyter.stats import HypothesisTestResult, hypothesis_test

ALTS = ["two-sided", "greater", "less"]
RNG = np.random.default_rng(123)
NULL5 = RNG.normal(0.0, 1.0, 5)
ALT4 = RNG.normal(0.8, 1.5, 4)


def mean_diff(x, y, axis=-1):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def brute_force_independent(null, alt, alternative):
    """p over every split of the pooled values into groups of the original sizes (observed included)."""
    pooled = np.concatenate([null, alt])
    obs = alt.mean() - null.mean()
    stats = []
    for idx in combinations(range(len(pooled)), len(alt)):
        mask = np.zeros(len(pooled), bool)
        mask[list(idx)] = True
        stats.append(pooled[mask].mean() - pooled[~mask].mean())
    stats = np.array(stats)
    eps = 1e-9  # ties: the observed split is recomputed here in a different summation order
    hit = {"greater": stats >= obs - eps, "less": stats <= obs + eps,
           "two-sided": np.abs(stats) >= abs(obs) - eps}[alternative]
    return hit.mean()


def brute_force_sign_flip(diff, alternative):
    obs = diff.mean()
    stats = np.array([np.mean(np.array(signs) * diff) for signs in product([1.0, -1.0], repeat=len(diff))])
    eps = 1e-9
    hit = {"greater": stats >= obs - eps, "less": stats <= obs + eps,
           "two-sided": np.abs(stats) >= abs(obs) - eps}[alternative]
    return hit.mean()


# ---- Welch -------------------------------------------------------------------------------------

@pytest.mark.parametrize("alternative", ALTS)
def test_welch_matches_scipy(alternative):
    r = hypothesis_test(NULL5, ALT4, alternative=alternative)
    ref = ss.ttest_ind(ALT4, NULL5, equal_var=False, alternative=alternative)
    # rel 1e-10: same formulas, only floating-point summation order differs
    assert r.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert r.df == pytest.approx(ref.df, rel=1e-10)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert (r.method, r.alternative, r.n_null, r.n_alt, r.n_resamples, r.exact) == ("welch", alternative, 5, 4, None,
                                                                                   False)
    assert r.reject_null == (r.p_value < 0.05)


def test_effect_sizes_match_direct_formulas():
    d = (ALT4.mean() - NULL5.mean()) / math.sqrt((np.var(NULL5, ddof=1) + np.var(ALT4, ddof=1)) / 2)
    for method in ("welch", "permutation"):
        r = hypothesis_test(NULL5, ALT4, method=method)
        assert r.effect_size_name == "cohen_d"
        assert r.effect_size == pytest.approx(d, rel=1e-12)  # identical formula, rounding only
        assert r.mean_null == pytest.approx(NULL5.mean(), rel=1e-12)
        assert r.mean_alt == pytest.approx(ALT4.mean(), rel=1e-12)
    null, alt = NULL5[:4], ALT4
    diff = alt - null
    r = hypothesis_test(null, alt, method="paired_permutation")
    assert r.effect_size_name == "cohen_dz"
    assert r.effect_size == pytest.approx(diff.mean() / diff.std(ddof=1), rel=1e-12)


def test_welch_calibrated_under_null():
    rng = np.random.default_rng(7)
    rejections = [hypothesis_test(rng.normal(size=12), rng.normal(size=15)).reject_null for _ in range(300)]
    # expected 0.05; binomial sd over 300 reps is ~0.0126, so [0.02, 0.09] is > 2.4 sd either side
    assert 0.02 <= np.mean(rejections) <= 0.09


def test_clear_shift_rejected():
    rng = np.random.default_rng(8)
    null, alt = rng.normal(0, 1, 30), rng.normal(2, 1, 30)
    r = hypothesis_test(null, alt)
    assert r.p_value < 1e-6 and r.reject_null and r.statistic > 0
    assert hypothesis_test(null, alt, alternative="less").p_value > 0.99
    perm = hypothesis_test(null, alt, method="permutation", n_resamples=2000)
    assert perm.p_value == pytest.approx(1 / 2001)  # nothing as extreme: the smallest p a random test gives


# ---- permutation tests -------------------------------------------------------------------------

@pytest.mark.parametrize("alternative", ALTS)
def test_exact_permutation_matches_brute_force(alternative):
    r = hypothesis_test(NULL5, ALT4, method="permutation", alternative=alternative)
    assert r.exact and r.n_resamples == math.comb(9, 4) and r.df is None
    assert r.statistic == pytest.approx(ALT4.mean() - NULL5.mean(), rel=1e-12)
    # exact counts over the same 126 splits: equal up to the division's rounding
    assert r.p_value == pytest.approx(brute_force_independent(NULL5, ALT4, alternative), rel=1e-12)


@pytest.mark.parametrize("alternative", ["greater", "less"])
def test_exact_permutation_matches_scipy_one_sided(alternative):
    r = hypothesis_test(NULL5, ALT4, method="permutation", alternative=alternative)
    ref = ss.permutation_test((ALT4, NULL5), mean_diff, permutation_type="independent", vectorized=True,
                              n_resamples=np.inf, alternative=alternative)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-12)


def test_exact_permutation_matches_scipy_two_sided_equal_sizes():
    # scipy's two-sided p is 2 * min(one-sided p); with equal group sizes the permutation distribution is
    # symmetric, so that equals P(|T| >= |t|), the convention used here
    null, alt = NULL5[:4], ALT4
    r = hypothesis_test(null, alt, method="permutation")
    ref = ss.permutation_test((alt, null), mean_diff, permutation_type="independent", vectorized=True,
                              n_resamples=np.inf)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-12)


@pytest.mark.parametrize("alternative", ALTS)
def test_exact_paired_matches_brute_force_and_scipy(alternative):
    rng = np.random.default_rng(5)
    null = rng.normal(size=8)
    alt = null + rng.normal(0.4, 1.0, 8)
    r = hypothesis_test(null, alt, method="paired_permutation", alternative=alternative)
    assert r.exact and r.n_resamples == 2**8
    assert r.statistic == pytest.approx((alt - null).mean(), rel=1e-12)
    assert r.p_value == pytest.approx(brute_force_sign_flip(alt - null, alternative), rel=1e-12)
    ref = ss.permutation_test((alt - null,), lambda d, axis=-1: np.mean(d, axis=axis), permutation_type="samples",
                              vectorized=True, n_resamples=np.inf, alternative=alternative)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-12)  # sign-flip distribution is symmetric


def test_random_permutation_close_to_exact():
    rng = np.random.default_rng(11)
    null, alt = rng.normal(0, 1, 10), rng.normal(0.6, 1, 10)
    exact = hypothesis_test(null, alt, method="permutation", n_resamples=200_000)
    assert exact.exact and exact.n_resamples == math.comb(20, 10)
    approx = hypothesis_test(null, alt, method="permutation", n_resamples=20_000, seed=3)
    assert not approx.exact and approx.n_resamples == 20_000
    # Monte Carlo sd of p ~ sqrt(p(1-p)/20000) <= 0.0036; 0.02 is > 5 sd
    assert abs(approx.p_value - exact.p_value) < 0.02
    again = hypothesis_test(null, alt, method="permutation", n_resamples=20_000, seed=3)
    assert again.p_value == approx.p_value  # seeded

    null, alt = rng.normal(0, 1, 16), rng.normal(0.5, 1, 16)
    paired_exact = hypothesis_test(null, alt, method="paired_permutation", n_resamples=2**16)
    paired = hypothesis_test(null, alt, method="paired_permutation", n_resamples=20_000)
    assert paired_exact.exact and not paired.exact
    assert abs(paired.p_value - paired_exact.p_value) < 0.02


def test_input_types_and_to_dict():
    values = [0.1, 0.5, 0.3, 0.9]
    ref = hypothesis_test(values, [1.0, 1.2, 0.7])
    inputs = [torch.tensor(values, dtype=torch.float64), np.array(values), [torch.tensor(v, dtype=torch.float64)
              for v in values], [np.float64(v) for v in values], tuple(values), (v for v in values)]
    for inp in inputs:
        assert hypothesis_test(inp, torch.tensor([1.0, 1.2, 0.7], dtype=torch.float64)).p_value == ref.p_value
    low = hypothesis_test(torch.tensor(values), np.array([1.0, 1.2, 0.7], np.float32))  # float32 inputs
    assert low.p_value == pytest.approx(ref.p_value, rel=1e-6)  # only float32 rounding of the inputs differs
    d = ref.to_dict()
    assert set(d) == set(HypothesisTestResult.__dataclass_fields__)
    assert json.loads(json.dumps(d)) == d
    assert all(type(v) in (str, float, int, bool, type(None)) for v in d.values())


# ---- bad inputs ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "match"), [
    ({"null_samples": [1.0]}, r"null_samples needs at least 2 samples, got 1"),
    ({"alt_samples": []}, r"alt_samples needs at least 2 samples, got 0"),
    ({"alt_samples": [1.0, float("nan"), 2.0]}, r"alt_samples must be finite, got nan at index 1"),
    ({"null_samples": torch.tensor([1.0, 2.0, float("inf")])}, r"null_samples must be finite, got inf at index 2"),
    ({"null_samples": [1.0, torch.ones(2)]}, r"null_samples\[1\] must be a scalar"),
    ({"null_samples": [1.0, "2"]}, r"null_samples\[1\] must be a real number"),
    ({"null_samples": np.ones((2, 2))}, r"null_samples must be 1-D, got an array of shape \(2, 2\)"),
    ({"alt_samples": torch.tensor(1.0)}, r"alt_samples must be 1-D"),
    ({"alt_samples": "12"}, r"alt_samples must be a sequence of numbers"),
    ({"method": "ttest"}, r"method must be one of 'welch', 'permutation', 'paired_permutation', got 'ttest'"),
    ({"alternative": "two_sided"}, r"alternative must be one of 'two-sided', 'greater', 'less', got 'two_sided'"),
    ({"alpha": 0.0}, r"alpha must be a number in \(0, 1\), got 0.0"),
    ({"alpha": 1.5}, r"alpha must be a number in \(0, 1\), got 1.5"),
    ({"n_resamples": 0, "method": "permutation"}, r"n_resamples must be a positive int, got 0"),
    ({"method": "paired_permutation"}, r"paired_permutation needs samples of equal length, got 3 null and 4 alt"),
    ({"null_samples": [1.0, 1.0], "alt_samples": [2.0, 2.0]},
     r"both groups have zero variance .*different means.*method='permutation'"),
    ({"null_samples": [1.0, 1.0], "alt_samples": [1.0, 1.0]}, r"both groups have zero variance .*equal means"),
])
def test_bad_inputs(kwargs, match):
    args = {"null_samples": [0.0, 1.0, 2.0], "alt_samples": [1.0, 2.0, 3.0, 4.0], **kwargs}
    with pytest.raises(ArrakisValueError, match=match):
        hypothesis_test(**args)


def test_constant_groups_work_with_permutation():
    r = hypothesis_test([1.0, 1.0, 1.0], [2.0, 2.0, 2.0], method="permutation", alternative="greater")
    assert r.exact and r.p_value == pytest.approx(1 / math.comb(6, 3))  # only the observed split is as extreme
    assert r.effect_size == math.inf
