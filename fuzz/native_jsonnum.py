"""Target ``native_jsonnum``: ``gateway._native.jsonnum`` against ``tests/native_refs.py``.

The fuzzer's bytes build a (possibly nested, possibly uneven or self-containing) list of leaves
of every kind a JSON decoder or a caller may hand over: ints at and past each width's edges,
floats past FP16/FP32 range, bools, None, strings, dicts, int and float subclasses. Contract:
``list_to_array`` raises ValueError/OverflowError exactly when ``ref_list_to_array`` does, and
otherwise returns the same array (dtype, shape, values); ``json_tensor`` either declines (None),
or shapes what the reference reads, or raises where the reference does. Never a crash, never
another exception.
"""

from __future__ import annotations

import enum
from typing import Any

import numpy as np

from fuzz._common import FLOAT_TYPES, INT_TYPES, int_range, ref_list_to_array
from fuzz.provider import Provider
from gateway._native.jsonnum import json_tensor, list_to_array

NUMERIC = ["BOOL", *INT_TYPES, *FLOAT_TYPES]


class Level(enum.IntEnum):
    HIGH = 3


class Meters(float):
    pass


def leaf(p: Provider, datatype: str) -> Any:
    mode = p.below(8)
    if mode == 0:
        return p.pick([None, True, False, "1", b"1", {}, (), Level.HIGH, Meters(1.5), np.float64(2.5), 0, 1])
    if mode == 1:
        return p.integer()
    if mode == 2:
        return p.pick([0.0, -0.0, 0.5, 65504.0, 65520.0, 3.5e38, 1e308, 2.0**-1074, float("inf"), -float("inf")])
    if datatype in INT_TYPES:
        lo, hi = int_range(datatype)
        return p.pick([lo, hi, lo - 1, hi + 1, p.below(1000)])
    if datatype == "BOOL":
        return p.pick([True, False, 0, 1])
    return p.uint(4) / 7 - 2**29


def nested(p: Provider, dims: list[int], datatype: str) -> Any:
    if not dims:
        return leaf(p, datatype)
    n = dims[0] + (p.pick([-1, 1]) if p.coin(24) else 0)
    out = [nested(p, dims[1:], datatype) for _ in range(max(0, n))]
    if out and p.coin(30):
        out[p.below(len(out))] = leaf(p, datatype) if dims[1:] else [leaf(p, datatype)]
    return out


def build(p: Provider) -> tuple[Any, str, list[int]]:
    datatype = p.pick(NUMERIC) if not p.coin(30) else p.pick(["BYTES", "FP8", ""])
    dims = [p.below(5) for _ in range(p.below(4))]
    mode = p.below(12)
    if mode == 0:
        depth = p.pick([63, 64, 65, 100])
        data: Any = [leaf(p, datatype)]
        for _ in range(depth - 1):
            data = [data]
        dims = [1] * depth
    elif mode == 1:
        data = []
        data.append(data)  # a list that contains itself
    elif mode == 2:
        data = p.pick([None, 1.5, "x", {"data": [1]}, (1, 2)])
    elif mode == 3:  # flat, of any length
        data = [leaf(p, datatype) for _ in range(p.below(20))]
    else:
        data = nested(p, dims, datatype)
    return data, datatype, dims


def one_input(raw: bytes) -> None:
    p = Provider(raw)
    data, datatype, dims = build(p)
    count = int(np.prod(dims)) if dims else 1
    expected = p.pick([-1, count, count, p.below(30)])
    _agree(lambda: list_to_array(data, datatype, expected),
           lambda: ref_list_to_array(data, datatype, expected) if datatype in NUMERIC else _refuse())
    shape: Any = dims if not p.coin(8) else p.pick([[2**31], [-1], [True], [1.0], [0, 2**40], "x"])
    inp: dict[str, Any] = {"name": "X", "datatype": datatype, "shape": shape, "data": data}
    if p.coin(8):
        inp["parameters"] = p.pick([{}, None, {"binary_data_size": 4}])
    try:
        got = json_tensor(inp)
    except (ValueError, OverflowError):
        got = "raised"
    if got is None:
        return  # declined: the general decoder's business (fuzz/http_body*)
    n = int(np.prod(shape))
    try:
        want = ref_list_to_array(data, datatype, n).reshape(shape)
    except (ValueError, OverflowError) as exc:
        assert got == "raised", f"json_tensor accepted what the reference refuses ({exc})"
        return
    assert got != "raised", "json_tensor refused what the reference accepts"
    name, arr = got
    assert name == "X"
    np.testing.assert_array_equal(arr, want, strict=True)


def _refuse() -> Any:
    raise ValueError("not a numeric datatype")


def _agree(native: Any, reference: Any) -> None:
    try:
        want = reference()
    except (ValueError, OverflowError):
        try:
            native()
        except (ValueError, OverflowError):
            return
        raise AssertionError("list_to_array accepted what the reference refuses") from None
    try:
        got = native()
    except (ValueError, OverflowError) as exc:
        raise AssertionError(f"list_to_array refused what the reference accepts: {exc}") from None
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    np.testing.assert_array_equal(got, want, strict=True)
