"""gateway._native.jsonnum.list_to_array against a pure-Python/numpy reference: flattening of
nested lists, per-datatype element rules, ranges, counts, and the error messages."""

from __future__ import annotations

import enum
import math

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native_refs import FLOAT_TYPES, INT_TYPES, int_range, ref_list_to_array

from gateway._native.jsonnum import list_to_array
from gateway.types import DATATYPE_TO_NUMPY

SETTINGS = settings(max_examples=100, deadline=None)


def leaves_for(datatype: str) -> st.SearchStrategy:
    if datatype == "BOOL":
        return st.booleans() | st.sampled_from([0, 1])
    if datatype in INT_TYPES:
        lo, hi = int_range(datatype)
        return st.integers(lo, hi)
    return st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**80), 2**80)  # JSON numbers


BAD_LEAVES = (st.text(max_size=3) | st.none() | st.dictionaries(st.text(max_size=2), st.integers(), max_size=1)
              | st.booleans() | st.floats(allow_nan=False) | st.integers(-(2**70), 2**70))


def nest(flat: list, shape: list[int]):
    if len(shape) <= 1:
        return list(flat)
    step = len(flat) // shape[0] if shape[0] else 0
    return [nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


@st.composite
def rectangular(draw, leaves: st.SearchStrategy):
    shape = draw(st.lists(st.integers(0, 5), min_size=1, max_size=3))
    flat = draw(st.lists(leaves, min_size=math.prod(shape), max_size=math.prod(shape)))
    return nest(flat, shape), math.prod(shape)


def ragged(leaves: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(st.recursive(leaves, lambda kids: st.lists(kids, max_size=4), max_leaves=20),
                    max_size=6)


def assert_same(got: np.ndarray, want: np.ndarray, datatype: str) -> None:
    assert got.dtype == DATATYPE_TO_NUMPY[datatype] and got.ndim == 1
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want, strict=True)


@SETTINGS
@given(st.sampled_from(list(DATATYPE_TO_NUMPY)[:-1]).flatmap(
    lambda dt: st.tuples(st.just(dt), rectangular(leaves_for(dt)))))
def test_rectangular_data_matches_reference(case) -> None:
    datatype, (data, count) = case
    assert_same(list_to_array(data, datatype, count), ref_list_to_array(data, datatype, count), datatype)
    assert_same(list_to_array(data, datatype), ref_list_to_array(data, datatype), datatype)
    # What reaches us in production went through orjson; the result must not change.
    if all(-(2**63) <= x < 2**64 for x in _ints(data)):  # orjson.dumps' integer range
        assert_same(list_to_array(orjson.loads(orjson.dumps(data)), datatype, count),
                    ref_list_to_array(data, datatype, count), datatype)


def _ints(data):
    for x in data:
        if isinstance(x, list):
            yield from _ints(x)
        elif isinstance(x, int):
            yield x


@SETTINGS
@given(st.sampled_from(list(DATATYPE_TO_NUMPY)[:-1]).flatmap(
    lambda dt: st.tuples(st.just(dt), ragged(leaves_for(dt) | BAD_LEAVES), st.integers(-1, 30))))
def test_ragged_and_invalid_data_agree_with_reference(case) -> None:
    datatype, data, expected = case
    try:
        want = ref_list_to_array(data, datatype, expected)
    except (ValueError, OverflowError):
        with pytest.raises((ValueError, OverflowError)):
            list_to_array(data, datatype, expected)
        return
    assert_same(list_to_array(data, datatype, expected), want, datatype)


@pytest.mark.parametrize("n", [0, 1, 64, 65536])
def test_flat_float_sizes(n: int) -> None:
    values = np.random.default_rng(n).standard_normal(n).tolist()
    for datatype in FLOAT_TYPES:
        assert_same(list_to_array(values, datatype, n), ref_list_to_array(values, datatype), datatype)


@pytest.mark.parametrize("datatype", INT_TYPES)
def test_integer_range_edges(datatype: str) -> None:
    lo, hi = int_range(datatype)
    assert_same(list_to_array([lo, hi, 0], datatype), np.array([lo, hi, 0], DATATYPE_TO_NUMPY[datatype]),
                datatype)
    for bad in (lo - 1, hi + 1, 2**200, -(2**200)):
        with pytest.raises(OverflowError, match=rf"element 1 = .* out of range for {datatype} \[{lo}, {hi}\]"):
            list_to_array([0, bad], datatype)


@pytest.mark.parametrize(
    ("data", "datatype", "exc", "match"),
    [
        ([1, 2.5], "INT32", ValueError, "element 1 is float 2.5; INT32 data must hold integers"),
        ([1.0], "UINT8", ValueError, "element 0 is float"),
        ([[1, 2], [3, "x"]], "FP32", ValueError, "element 3 is str 'x'; FP32 data must hold numbers"),
        ([True], "FP32", ValueError, "element 0 is bool True"),
        ([1, False], "INT64", ValueError, "element 1 is bool False"),
        ([None], "FP64", ValueError, "element 0 is NoneType None"),
        ([{"a": 1}], "INT8", ValueError, "element 0 is dict"),
        ([1, 2], "BOOL", ValueError, "element 1 is int 2; BOOL data must hold true/false"),
        ([0.0], "BOOL", ValueError, "element 0 is float"),
        ([1, 2, 3], "FP32", ValueError, "data has 3 elements but shape implies 4"),
        ([[1], [2], [3]], "FP32", ValueError, "data has 3 elements but shape implies 2"),
        ([[1, 2, 3]], "FP32", ValueError, "data has 3 elements but shape implies 4"),
        ([[1, 2], [3]], "FP32", ValueError, "nests unevenly: a list at depth 1 has 1 items where the first"),
        ([1, [2]], "INT32", ValueError, "nests unevenly: a list at depth 1, where the first element"),
        ([[1], 2], "INT32", ValueError, "nests unevenly: a number at depth 1, where the first element"),
        ([[[1]], [2]], "BOOL", ValueError, "nests unevenly: a number at depth 2"),
        ([[], [1]], "FP64", ValueError, "nests unevenly: a list at depth 1 has 1 items where the first"),
        (1.5, "FP32", ValueError, "must be a JSON array, got float"),
        ({"data": [1]}, "FP32", ValueError, "must be a JSON array, got dict"),
        ((1, 2), "FP32", ValueError, "must be a JSON array, got tuple"),
        ([1], "BYTES", ValueError, "not a numeric KServe datatype"),
        ([1], "FP8", ValueError, "not a numeric KServe datatype"),
        ([10**400], "FP64", OverflowError, "element 0 = 1000.* too large for FP64"),
        (["x" * 100], "FP32", ValueError, r"element 0 is str 'xxx.*\.\.\.; FP32"),
    ],
)
def test_errors_name_the_problem(data, datatype: str, exc: type, match: str) -> None:
    expected = 4 if "implies 4" in match else 2 if "implies 2" in match else -1
    with pytest.raises(exc, match=match):
        list_to_array(data, datatype, expected)


def test_deep_or_self_containing_lists_are_rejected() -> None:
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError, match="deeper than"):
        list_to_array(loop, "FP32")
    deep: list = [1.0]
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ValueError, match="deeper than"):
        list_to_array(deep, "FP32")


def test_number_subclasses_are_numbers() -> None:
    class Level(enum.IntEnum):
        HIGH = 3

    class Meters(float):
        pass

    assert_same(list_to_array([Level.HIGH, Meters(1.5), np.float64(2.0)], "FP64"),
                np.array([3.0, 1.5, 2.0]), "FP64")
    assert_same(list_to_array([Level.HIGH], "INT8"), np.array([3], np.int8), "INT8")


def test_out_of_range_floats_become_infinite_without_warning() -> None:
    # pyproject turns warnings into errors, so a RuntimeWarning would fail this test.
    got = list_to_array([1e300, -1e300, 70000.0, 65504.0, 2**80, math.inf], "FP16")
    assert got.tolist() == [math.inf, -math.inf, math.inf, 65504.0, math.inf, math.inf]
    assert list_to_array([1e300], "FP32").tolist() == [math.inf]


def test_fp16_rounds_like_numpy() -> None:
    # Values near FP16 ties: a double->float32->float16 route would round some differently.
    rng = np.random.default_rng(3)
    values = (rng.standard_normal(20000) * 1000).tolist() + [1 + 2**-11 + 2**-30, 2049.0000001]
    np.testing.assert_array_equal(list_to_array(values, "FP16"), np.array(values, dtype=np.float16))
