"""Awkward result values: stored without losing the run, and read back exactly (arrakis_jupyter.store)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import pathlib
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from arrakis_jupyter.store import RunRecord, Store, Unserialisable
from arrakis_jupyter.store.artefacts import ArtefactFiles, Encoder
from arrakis_jupyter.store.compare import compare_values


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store")


def round_trip(store, value):
    """Record ``value`` as a run's result and read it back."""
    return store.run(store.record(RunRecord(name="x", source="x", result=value))).result


def encoded(tmp_path, value):
    """The JSON tree of ``value`` (strict JSON, as the store writes it) and the files it refers to."""
    files = ArtefactFiles(tmp_path / "files")
    return json.loads(json.dumps(Encoder(files)(value), allow_nan=False)), files


def strict_json(path: pathlib.Path):
    """A file's JSON, refusing NaN / Infinity (which browsers' JSON.parse rejects)."""
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def bits(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).view(np.int64)


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and values, NaN where NaN (bit-exact for floating tensors)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point() or a.is_complex():
        return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))
    return torch.equal(a, b)


# ---- tensors and arrays ----------------------------------------------------------------------------
NAN_PAYLOAD = torch.tensor([0x7FF8_0000_0000_0123], dtype=torch.int64).view(torch.float64)


def test_a_tensor_with_nan_and_inf_is_stored_bit_exactly_with_a_finite_summary(store, tmp_path):
    t = torch.cat([torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), -0.0, 5e-324, -2.0],
                                dtype=torch.float64), NAN_PAYLOAD])
    got = round_trip(store, {"t": t, "f32": t.float(), "bf16": t.bfloat16()})
    for key, want in [("t", t), ("f32", t.float()), ("bf16", t.bfloat16())]:
        assert same_tensor(got[key], want), key
        assert torch.equal(torch.isnan(got[key]), torch.isnan(want))
    tree, _ = encoded(tmp_path, t)
    summary = tree["__arrakis__"]["summary"]
    assert summary["min"] == -2.0 and summary["max"] == 1.0 and summary["mean"] == pytest.approx(-1 / 4)
    assert (summary["nan"], summary["posinf"], summary["neginf"]) == (2, 1, 1)


@pytest.mark.parametrize("values", [[float("nan")] * 3, [float("inf"), -float("inf")], [1e308, 1e308, 1.7e308]])
def test_summaries_are_numbers_or_null_for_tensors_and_arrays(tmp_path, values):
    with np.errstate(over="ignore"):
        f32 = np.array(values, dtype=np.float32)
    for value in (torch.tensor(values, dtype=torch.float64), np.array(values), f32):
        tree, _ = encoded(tmp_path, value)
        summary = tree["__arrakis__"]["summary"]
        for key in ("min", "max", "mean"):
            assert summary[key] is None or (isinstance(summary[key], float) and math.isfinite(summary[key]))
        array = value.numpy() if isinstance(value, torch.Tensor) else value
        finite = [float(v) for v in array[np.isfinite(array)]]
        assert (summary["min"] is None) == (not finite)
        if finite:
            assert summary["mean"] == pytest.approx(math.fsum(v / len(finite) for v in finite))


TENSORS = {
    "0-d": torch.tensor(2.5),
    "0-d nan": torch.tensor(float("nan")),
    "empty": torch.zeros(0, 3),
    "bfloat16": torch.tensor([1.5, float("inf"), float("nan")], dtype=torch.bfloat16),
    "float16": torch.tensor([65504.0, -float("inf"), 1e-7], dtype=torch.float16),
    "complex64": torch.tensor([1 + 2j, float("nan") + 0j], dtype=torch.complex64),
    "complex128": torch.tensor([1 + 2j, complex(float("inf"), -1)], dtype=torch.complex128),
    "conjugate view": torch.tensor([1 + 2j, 3 - 1j]).conj(),
    "bool": torch.tensor([True, False]),
    "int": torch.tensor([2**62 + 1, -3]),
    "uint8": torch.tensor([0, 255], dtype=torch.uint8),
    "non-contiguous": torch.arange(12.0).reshape(3, 4).t()[::2],
    "offset view": torch.arange(6.0)[2:],
    "requires grad": torch.tensor([1.0, 2.0], requires_grad=True) * 2,
    "parameter": torch.nn.Parameter(torch.tensor([0.5])),
}


@pytest.mark.parametrize("name", TENSORS)
def test_tensors_of_every_kind_come_back_exactly(store, name):
    value = TENSORS[name]
    got = round_trip(store, [value])[0]
    want = value.detach().resolve_conj()
    assert isinstance(got, torch.Tensor) and not got.requires_grad
    assert same_tensor(got, want), (got, want)


ARRAYS = {
    "float": np.array([1.0, np.nan, np.inf, -0.0]),
    "complex128": np.array([1 + 2j, np.nan * 1j]),
    "longdouble": np.array([1, 2], dtype=np.longdouble) / 3,
    "datetime64": np.array(["2020-01-01T00:00:00.123456789", "NaT"], dtype="datetime64[ns]"),
    "timedelta64": np.array([5, -1], dtype="timedelta64[us]"),
    "big-endian": np.arange(3, dtype=">f8"),
    "0-d": np.array(7, dtype=np.int16),
    "empty": np.zeros((0, 2), dtype=np.complex128),
    "strings": np.array(["ab", "c"]),
}


@pytest.mark.parametrize("name", ARRAYS)
def test_arrays_of_every_kind_come_back_exactly(store, name):
    value = ARRAYS[name]
    got = round_trip(store, value)
    assert got.shape == value.shape and got.dtype.newbyteorder("=") == value.dtype.newbyteorder("=")
    np.testing.assert_array_equal(got, value, strict=False)


def test_numpy_scalars_come_back_as_their_values(store):
    values = [np.float64("nan"), np.float32("inf"), np.float16(-np.inf), np.int64(-5), np.bool_(True),
              np.complex128(1 - 1j), np.longdouble(1) / 3, np.datetime64("2021-02-03T04:05:06.000000007"),
              np.timedelta64(3, "ms"), np.str_("s")]
    got = round_trip(store, values)
    assert math.isnan(got[0]) and got[1] == math.inf and got[2] == -math.inf
    assert got[3:6] == [-5, True, 1 - 1j]
    assert got[6] == np.longdouble(1) / 3 and got[7] == values[7] and got[8] == values[8] and got[9] == "s"


# ---- DataFrames and Series -------------------------------------------------------------------------
AWKWARD_FLOATS = [1 / 3, 0.1 + 0.2, 5e-324, 2.2250738585072014e-308, -0.0, 1.7976931348623157e308, -1e308,
                  123456.78901234568, math.pi * 1e-5, float("inf"), -float("inf"), float("nan"), 1e16 + 2]


def assert_floats_exact(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(bits(got[~nan]), bits(want[~nan])), (got, want)


def test_dataframe_floats_come_back_bit_for_bit_with_inf_and_nan_in_their_cells(store, tmp_path):
    rng = np.random.default_rng(0)
    n = len(AWKWARD_FLOATS)
    with np.errstate(over="ignore"):
        f32 = np.array(AWKWARD_FLOATS).astype(np.float32)
    random = rng.standard_normal(n) * 10.0 ** rng.integers(-300, 300, n)
    frame = pd.DataFrame({"awkward": AWKWARD_FLOATS, "random": random, "f32": f32, "n": range(n)},
                         index=pd.Index(AWKWARD_FLOATS[:-3] + [0.5, 0.25, 0.125], name="x"))
    got = round_trip(store, {"frame": frame, "series": frame["awkward"].rename("s")})
    pd.testing.assert_frame_equal(got["frame"], frame)
    pd.testing.assert_series_equal(got["series"], frame["awkward"].rename("s"))
    for col in ("awkward", "random", "f32"):
        assert_floats_exact(got["frame"][col], frame[col])
    assert_floats_exact(got["frame"].index, frame.index)
    assert_floats_exact(got["series"], frame["awkward"])
    # the artefact stays pandas' table JSON (what the sidebar shows), valid JSON with null for non-finite cells
    tree, files = encoded(tmp_path, frame)
    node = tree["__arrakis__"]
    assert node["orient"] == "table"
    table = strict_json(files.path(node["artefact"], "dataframe"))
    assert [f["name"] for f in table["schema"]["fields"]] == ["x", "awkward", "random", "f32", "n"]
    assert table["data"][0]["awkward"] == 1 / 3 and table["data"][9]["awkward"] is None
    assert table["data"][10]["random"] == frame["random"].iloc[10]


def test_dataframe_dtypes_and_index_survive(store):
    frame = pd.DataFrame({
        "f32": np.array([0.1, np.nan, np.inf], dtype=np.float32), "i": [1, -2, 2**62], "b": [True, False, True],
        "s": ["a", None, "ç"], "d": pd.to_datetime(["2020-01-01 00:00:00.123456", "2021-06-01 00:00:00.000000", None]),
        "c": pd.Categorical(["u", "v", "u"], categories=["v", "u", "w"]), "nullable": pd.array([1, None, 3], "Int64"),
        "t": pd.to_timedelta([1.5, None, -3], unit="s"), "o": np.array([0.1 + 0.2, "x", -math.inf], dtype=object),
    }, index=pd.MultiIndex.from_tuples([("a", 0.1), ("a", 0.2), ("b", -np.inf)], names=["k", "lr"]))
    got = round_trip(store, frame)
    pd.testing.assert_frame_equal(got, frame)
    assert_floats_exact(got.index.get_level_values("lr"), frame.index.get_level_values("lr"))
    assert got["o"].tolist() == [0.1 + 0.2, "x", -math.inf]


@pytest.mark.parametrize("columns", [["a", "a", "b"], pd.MultiIndex.from_tuples([("x", 1), ("x", 2), ("y", 1)]),
                                     ["index", "b", "c"]], ids=["duplicate", "multiindex", "named-index"])
def test_frames_table_json_cannot_hold_fall_back_to_split_just_as_exactly(store, tmp_path, columns):
    frame = pd.DataFrame({0: [1 / 3, np.inf, np.nan], 1: [1.0, 2.0, 3.0], 2: [-np.inf, 0.1 + 0.2, 5e-324]})
    frame.columns = columns
    got = round_trip(store, frame)
    pd.testing.assert_frame_equal(got, frame)
    for j in range(3):
        assert_floats_exact(got.iloc[:, j], frame.iloc[:, j])
    tree, files = encoded(tmp_path, frame)
    assert tree["__arrakis__"]["orient"] == "split"
    split = strict_json(files.path(tree["__arrakis__"]["artefact"], "dataframe"))
    assert split["data"][0] == [1 / 3, 1.0, None] and split["data"][2][2] == 5e-324


def test_empty_and_odd_frames(store):
    frames = [pd.DataFrame(), pd.DataFrame({"a": pd.Series([], dtype=float)}),
              pd.DataFrame({"a": [np.nan, np.nan]}), pd.DataFrame({"a": [1.5]}, index=[np.inf])]
    for frame, got in zip(frames, round_trip(store, frames)):
        pd.testing.assert_frame_equal(got, frame, check_index_type=True, check_column_type=True)


# ---- values that cannot be stored never lose the run ------------------------------------------------
class BadRepr:
    def __repr__(self):
        raise RuntimeError("no repr")


class BadPng:
    def _repr_png_(self):
        raise OSError("renderer gone")


class BadFigure:
    """Looks like a matplotlib figure whose savefig raises."""

    def savefig(self, *a, **kw):
        raise RuntimeError("savefig failed")


BadFigure.__module__ = "matplotlib.figure"


@dataclasses.dataclass
class BadField:
    x: int = 1

    def __getattribute__(self, name):
        if name == "x":
            raise KeyError("field exploded")
        return object.__getattribute__(self, name)


class BadLen(list):
    def __len__(self):
        raise RuntimeError("no len")

    def __iter__(self):
        raise RuntimeError("no iter")


class MyFloat(float):
    pass


def test_values_that_cannot_be_stored_become_placeholders_and_the_rest_is_kept(store):
    hostile = {"repr": BadRepr(), "png": BadPng(), "figure": BadFigure(), "field": BadField(), "list": BadLen([1]),
               "frame": pd.DataFrame({"a": [BadRepr()]}), "meta": torch.zeros(2, device="meta"),
               "sparse": torch.eye(2).to_sparse_csr(), "int": 10**5000}
    value = {**hostile, "kept": [1.5, "ok"]}
    got = round_trip(store, value)
    assert got["kept"] == [1.5, "ok"]
    assert got["int"] == 10**5000  # kept exactly, even past JSON's 4300-digit limit
    reasons = {"png": "OSError", "figure": "RuntimeError", "field": "KeyError", "list": "RuntimeError",
               "frame": "RuntimeError"}
    for key in ("repr", "png", "figure", "field", "list", "frame", "meta", "sparse"):
        assert isinstance(got[key], Unserialisable), key
        assert got[key].python_type.endswith(type(hostile[key]).__qualname__), key
        assert reasons.get(key, "") in got[key].reason, (key, got[key].reason)


def test_self_referential_containers_keep_their_other_items(store):
    items: list = [1, "a"]
    items.append(items)
    d: dict = {"n": 1}
    d["self"] = d
    got = round_trip(store, {"list": items, "dict": d})
    assert got["list"][:2] == [1, "a"] and isinstance(got["list"][2], Unserialisable)
    assert got["dict"]["n"] == 1 and isinstance(got["dict"]["self"], Unserialisable)


def test_dicts_with_non_string_keys_and_scalar_oddities(store):
    value = {math.nan: 1, (1, "a"): 2, 3: 4, None: 5, True: 6, 2.5: 7, frozenset({1, 2}): 8, dt.date(2020, 1, 2): 9,
             -math.inf: 10}
    got = round_trip(store, value)
    assert got == value
    sub = round_trip(store, [MyFloat(1.25), MyFloat("nan"), 2**70, -(2**64), 1 + 2j, complex(math.inf, math.nan),
                             {"__arrakis__": 1}, {1, frozenset({2})}, (), "\ud800"])
    assert sub[0] == 1.25 and math.isnan(sub[1]) and sub[2:4] == [2**70, -(2**64)] and sub[4] == 1 + 2j
    assert sub[5].real == math.inf and math.isnan(sub[5].imag)
    assert sub[6:] == [{"__arrakis__": 1}, {1, frozenset({2})}, (), "\ud800"]


def test_arguments_and_figures_are_encoded_as_carefully(store):
    run_id = store.record(RunRecord(name="x", source="x", result=None, arguments={"bad": BadRepr(), "t": NAN_PAYLOAD}))
    args = store.run(run_id).arguments
    assert isinstance(args["bad"], Unserialisable) and same_tensor(args["t"], NAN_PAYLOAD)


# ---- comparing results -----------------------------------------------------------------------------
def test_compare_values_handles_non_finite_and_huge_numbers_without_warnings():
    a = {"inf": math.inf, "nan": math.nan, "big": 1e308, "neg": -1e308, "int": 10**400, "mixed": 10**400,
         "arr": np.array([np.inf, np.nan, 1e308]), "t": torch.tensor([math.inf, math.nan, 1.0]),
         "c": torch.tensor([1 + 1j, math.inf]), "frame": pd.DataFrame({"x": [np.inf, np.nan, -1e308]}),
         "nanarr": np.array([np.nan]), "i": np.array([2**62 + 1])}
    b = {"inf": math.inf, "nan": math.nan, "big": -1e308, "neg": 1e308, "int": 10**400 + 1, "mixed": 1.0,
         "arr": np.array([np.inf, np.nan, -1e308]), "t": torch.tensor([math.inf, math.nan, 1.0]),
         "c": torch.tensor([1 + 1j, math.inf]), "frame": pd.DataFrame({"x": [np.inf, np.nan, 1e308]}),
         "nanarr": np.array([1.0]), "i": np.array([2**62])}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = compare_values(a, b).set_index("path")
    for path, row in rows.iterrows():
        assert isinstance(row["max_abs_diff"], float), path
    diff = rows["max_abs_diff"].to_dict()
    equal = rows["equal"].to_dict()
    assert equal["result['inf']"] and diff["result['inf']"] == 0.0
    assert equal["result['nan']"] and diff["result['nan']"] == 0.0
    assert not equal["result['big']"] and diff["result['big']"] == math.inf
    assert not equal["result['int']"] and diff["result['int']"] == 1.0
    assert not equal["result['mixed']"] and diff["result['mixed']"] == math.inf
    assert not equal["result['arr']"] and diff["result['arr']"] == math.inf
    assert equal["result['t']"] and diff["result['t']"] == 0.0
    assert equal["result['c']"] and diff["result['c']"] == 0.0
    assert not equal["result['frame']"] and diff["result['frame']"] == math.inf
    assert not equal["result['nanarr']"] and math.isnan(diff["result['nanarr']"])
    assert not equal["result['i']"]


def test_store_diff_of_results_with_non_finite_values(store):
    store.record(RunRecord(name="d", source="a", result={"x": math.inf, "t": torch.tensor([np.nan, 1e308],
                                                                                          dtype=torch.float64)}))
    store.record(RunRecord(name="d", source="b", result={"x": -math.inf, "t": torch.tensor([np.nan, -1e308],
                                                                                           dtype=torch.float64)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        results = store.diff("d", "v1", "v2").results.set_index("path")
    assert results.loc["result['x']", "max_abs_diff"] == math.inf
    assert results.loc["result['t']", "max_abs_diff"] == math.inf
