"""gateway._native.pack against numpy references: pack_rows == np.concatenate, scatter_rows ==
consecutive slices, on random dtypes, shapes and row counts, plus every rejection path."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._native.pack import pack_rows, scatter_rows

DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
          np.uint64, np.float16, np.float32, np.float64, object]
SETTINGS = settings(max_examples=100, deadline=None)


def random_array(rng: np.random.Generator, dtype, shape: tuple[int, ...]) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "O":
        flat = [rng.bytes(int(rng.integers(0, 6))) for _ in range(int(np.prod(shape)))]
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        return arr.reshape(shape)
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * dt.itemsize, dtype=np.uint8)
    arr = raw.view(dt).reshape(shape)
    return (arr != 0) if dt.kind == "b" else arr  # bools must be 0/1 bytes


def ref_scatter(batch: np.ndarray, counts) -> list[np.ndarray]:
    out, o = [], 0
    for c in counts:
        out.append(batch[o:o + int(c)])
        o += int(c)
    return out


parts_strategy = st.tuples(
    st.sampled_from(DTYPES),
    st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple),  # trailing shape
    st.lists(st.integers(0, 6), min_size=0, max_size=20),  # rows per request
    st.integers(0, 2**32 - 1),
)


@SETTINGS
@given(parts_strategy)
def test_pack_matches_concatenate(case) -> None:
    dtype, trailing, rows, seed = case
    rng = np.random.default_rng(seed)
    arrays = [random_array(rng, dtype, (r, *trailing)) for r in rows]
    out = np.empty((sum(rows), *trailing), dtype=dtype)
    pack_rows(arrays, out)
    ref = np.concatenate(arrays, axis=0) if arrays else np.empty_like(out)
    np.testing.assert_array_equal(out, ref)


@SETTINGS
@given(parts_strategy, st.sampled_from(["list", "tuple", "int64", "int32", "uint16"]))
def test_scatter_matches_slices(case, kind: str) -> None:
    dtype, trailing, rows, seed = case
    batch = random_array(np.random.default_rng(seed), dtype, (sum(rows), *trailing))
    counts = {"list": list, "tuple": tuple}.get(kind, lambda r: np.array(r, dtype=kind))(rows)
    views = scatter_rows(batch, counts)
    assert len(views) == len(rows)
    for v, r in zip(views, ref_scatter(batch, rows), strict=True):
        assert v.shape == r.shape and v.dtype == r.dtype and v.strides == r.strides
        assert v.flags.writeable and v.flags.c_contiguous == r.flags.c_contiguous
        np.testing.assert_array_equal(v, r)
        if v.size:
            assert np.shares_memory(v, batch)


def test_pack_round_trips_through_scatter() -> None:
    rng = np.random.default_rng(1)
    rows = [int(r) for r in rng.integers(0, 3, size=1000)]  # many requests, some empty
    arrays = [rng.standard_normal((r, 7)).astype(np.float32) for r in rows]
    out = np.empty((sum(rows), 7), np.float32)
    pack_rows(arrays, out)
    for a, v in zip(arrays, scatter_rows(out, rows), strict=True):
        np.testing.assert_array_equal(a, v)


def test_large_rows_take_the_nogil_path() -> None:
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal((1024, 256)).astype(np.float32) for _ in range(8)]
    out = np.empty((8192, 256), np.float32)
    pack_rows(arrays, out)
    np.testing.assert_array_equal(out, np.concatenate(arrays))
    views = scatter_rows(out, [1024] * 8)
    for a, v in zip(arrays, views, strict=True):
        np.testing.assert_array_equal(a, v)


def test_non_contiguous_parts_and_batches_are_still_correct() -> None:
    base = np.arange(60, dtype=np.int32).reshape(10, 6)
    parts = [base[::2], base[1:3, :]]  # strided rows, then a contiguous block
    out = np.empty((7, 6), np.int32)
    pack_rows([p for p in parts], out)
    np.testing.assert_array_equal(out, np.concatenate(parts))
    fortran = np.asfortranarray(base)
    for v, r in zip(scatter_rows(fortran, [3, 7]), ref_scatter(fortran, [3, 7]), strict=True):
        assert v.strides == r.strides
        np.testing.assert_array_equal(v, r)
    strided = base[::3, ::2]
    for v, r in zip(scatter_rows(strided, [1, 3]), ref_scatter(strided, [1, 3]), strict=True):
        np.testing.assert_array_equal(v, r)


def test_scatter_views_follow_the_batch() -> None:
    batch = np.zeros((4, 2), np.float64)
    views = scatter_rows(batch, [1, 3])
    views[1][0, 0] = 5.0
    assert batch[1, 0] == 5.0
    readonly = batch.copy()
    readonly.flags.writeable = False
    assert not any(v.flags.writeable for v in scatter_rows(readonly, [2, 2]))

    class Sub(np.ndarray):
        pass

    sub = batch.view(Sub)
    assert all(type(v) is Sub for v in scatter_rows(sub, [2, 2]))


def test_scatter_views_keep_the_batch_alive_and_release_it() -> None:
    batch = np.arange(12.0).reshape(6, 2).copy()  # owns its data: it is the views' base
    before = sys.getrefcount(batch)
    views = scatter_rows(batch, [2, 4])
    del batch
    assert views[1][3, 1] == 11.0
    batch = views[0].base
    del views
    assert sys.getrefcount(batch) == before


@pytest.mark.parametrize(
    ("arrays", "out", "match"),
    [
        ([np.zeros((2, 3), np.float32)], np.empty((2, 3), np.float64), "dtype"),
        ([np.zeros((2, 3), ">f4")], np.empty((2, 3), "<f4"), "dtype"),
        ([np.zeros((2, 4), np.float32)], np.empty((2, 3), np.float32), "shape"),
        ([np.zeros((2, 3, 1), np.float32)], np.empty((2, 3), np.float32), "shape"),
        ([np.zeros((2, 3), np.float32)], np.empty((3, 3), np.float32), "2 rows but out has 3"),
        ([np.zeros((2, 3), np.float32)] * 2, np.empty((3, 3), np.float32), "4 rows but out has 3"),
        ([np.zeros((2,), object)], np.empty((2,), np.float32), "dtype"),
        ([np.zeros((2,), object)], np.empty((3,), object), "2 rows but out has 3"),
        ([np.zeros((2, 3))], np.empty((3, 2)).T, "C-contiguous"),
        ([np.zeros(())], np.empty(()), "at least one dimension"),
    ],
)
def test_pack_rejects_mismatches_without_writing(arrays, out, match: str) -> None:
    if out.dtype.kind == "f":
        out.fill(7)
    snapshot = out.copy()
    with pytest.raises(ValueError, match=match):
        pack_rows(arrays, out)
    np.testing.assert_array_equal(out, snapshot)


def test_pack_rejects_read_only_out_and_non_arrays() -> None:
    out = np.empty((1, 2), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        pack_rows([np.zeros((1, 2), np.float32)], out)
    with pytest.raises(TypeError, match="item 1 is a list"):
        pack_rows([np.zeros((1, 2), np.float32), [[0.0, 0.0]]], np.empty((2, 2), np.float32))


@pytest.mark.parametrize(
    ("counts", "exc", "match"),
    [
        ([2, 2], ValueError, "cover 4 rows but the batch has 5"),
        ([2, 4], ValueError, "cover 6 rows but the batch has 5"),
        (np.array([5, 1]), ValueError, "cover 6 rows"),
        ([6, -1], ValueError, "count 1 is negative"),
        (np.array([6, -1]), ValueError, "count 1 is negative"),
        ([], ValueError, "cover 0 rows"),
        (np.array([2.0, 3.0]), TypeError, "integer array"),
        (np.array([[5]]), TypeError, "1-D"),
        ([2.0, 3.0], TypeError, "integer"),
    ],
)
def test_scatter_rejects_counts_that_do_not_cover_the_batch(counts, exc, match: str) -> None:
    with pytest.raises(exc, match=match):
        scatter_rows(np.zeros((5, 2)), counts)


def test_scatter_rejects_a_scalar_batch() -> None:
    with pytest.raises(ValueError, match="at least one dimension"):
        scatter_rows(np.ones(()), [])
