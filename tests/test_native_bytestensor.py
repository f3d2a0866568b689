"""gateway._native.bytestensor against a struct-based reference of the KServe BYTES binary
format (4-byte little-endian length, then the bytes), including truncation and counts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native_refs import ref_decode, ref_encode

from gateway._native.bytestensor import decode_bytes_tensor, encode_bytes_tensor

SETTINGS = settings(max_examples=100, deadline=None)


def object_array(items: list, shape: tuple[int, ...] | None = None) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr.reshape(shape) if shape is not None else arr


elements = st.lists(st.binary(max_size=40) | st.binary(min_size=300, max_size=2000), max_size=30)
mixed = st.lists(st.binary(max_size=20) | st.text(max_size=10) | st.integers() | st.floats(allow_nan=False)
                 | st.none(), max_size=30)


@SETTINGS
@given(elements)
def test_round_trip_matches_reference(items: list[bytes]) -> None:
    buf = encode_bytes_tensor(object_array(items))
    assert buf == ref_encode(items)
    for source in (buf, bytearray(buf), memoryview(buf), np.frombuffer(buf, np.uint8)):
        got = decode_bytes_tensor(source, len(items))
        assert got.dtype == object and got.shape == (len(items),)
        assert all(type(x) is bytes for x in got)
        assert got.tolist() == items == ref_decode(buf)
    assert decode_bytes_tensor(buf).tolist() == items


@SETTINGS
@given(mixed, st.sampled_from([None, (1, -1), (-1, 1)]))
def test_encode_any_objects_like_reference(items: list, shape) -> None:
    arr = object_array(items, shape)
    assert encode_bytes_tensor(arr) == ref_encode(arr)
    if arr.ndim == 2:  # a transposed (Fortran-ordered) view encodes in its own row-major order
        assert encode_bytes_tensor(arr.T) == ref_encode(arr.T)


@SETTINGS
@given(elements, st.integers(0, 2**16))
def test_truncation_names_the_element(items: list[bytes], cut_seed: int) -> None:
    buf = encode_bytes_tensor(object_array(items))
    if not buf:
        return
    cut = cut_seed % len(buf)  # strictly shorter than buf
    try:
        ref_decode(buf[:cut])
    except ValueError as exc:
        with pytest.raises(ValueError, match=str(exc)):
            decode_bytes_tensor(buf[:cut])
    else:
        assert decode_bytes_tensor(buf[:cut]).tolist() == ref_decode(buf[:cut])


def test_encode_string_and_numeric_arrays() -> None:
    assert encode_bytes_tensor(np.array([["ab", "é"]])) == ref_encode(["ab", "é"])
    assert encode_bytes_tensor(np.array([b"ab", b"c"], dtype="S4")) == ref_encode([b"ab", b"c"])
    f32 = np.array([0.1, 2], dtype=np.float32)  # formatted as numpy scalars, like arr.flat
    assert encode_bytes_tensor(f32) == ref_encode(f32)
    assert encode_bytes_tensor([b"x", "y"]) == ref_encode([b"x", "y"])
    assert encode_bytes_tensor(np.empty((0, 3), object)) == b""
    big = object_array([b"z" * 100_000] * 8)  # past the GIL-release threshold
    assert encode_bytes_tensor(big) == ref_encode(big)
    assert decode_bytes_tensor(encode_bytes_tensor(big), 8).tolist() == big.tolist()


def test_encode_rejects_unencodable_strings() -> None:
    with pytest.raises(UnicodeEncodeError):
        encode_bytes_tensor(object_array(["ok", "\ud800"]))


def test_encode_survives_str_that_mutates_the_array() -> None:
    arr = object_array(["a", "b", None])

    class Sneaky:
        def __str__(self) -> str:
            arr[0] = None  # would free "a" if the kernel held only a raw pointer to it
            return "s"

    arr[2] = Sneaky()
    assert encode_bytes_tensor(arr) == ref_encode(["a", "b", "s"])


@pytest.mark.parametrize(
    ("buf", "count", "match"),
    [
        (b"\x01\x00\x00", -1, "element 0 is truncated: 3 bytes left where its 4-byte length prefix"),
        (b"\x05\x00\x00\x00abc", -1, "element 0 is truncated: it declares 5 bytes but 3 are left"),
        (b"\x01\x00\x00\x00a\x02\x00\x00\x00b", -1, "element 1 is truncated"),
        (b"\x01\x00\x00\x00a\x00", -1, "element 1 is truncated: 1 bytes left"),
        (b"\xff\xff\xff\xff", -1, "declares 4294967295 bytes but 0 are left"),
        (b"\x01\x00\x00\x00a", 2, "BYTES data has 1 elements but shape implies 2"),
        (b"", 1, "BYTES data has 0 elements but shape implies 1"),
        (b"\x00\x00\x00\x00" * 3, 2, "has 3 elements but shape implies 2"),
    ],
)
def test_decode_errors(buf: bytes, count: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode_bytes_tensor(buf, count)


def test_decode_empty_and_zero_length_elements() -> None:
    assert decode_bytes_tensor(b"", 0).shape == (0,)
    assert decode_bytes_tensor(b"\x00\x00\x00\x00" * 3, 3).tolist() == [b"", b"", b""]
    body = b"header" + encode_bytes_tensor(object_array([b"abc"])) + b"tail"
    assert decode_bytes_tensor(memoryview(body)[6:-4], 1).tolist() == [b"abc"]
