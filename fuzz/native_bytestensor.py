"""Target ``native_bytestensor``: ``gateway._native.bytestensor`` against ``tests/native_refs.py``.

Decode: the input's bytes (after one control byte) as a BYTES buffer, whole or through a
memoryview slice, a bytearray or a numpy uint8 array, with a count of -1, the right one or a
wrong one. Contract: ValueError exactly when ``ref_decode`` refuses the buffer (same message
head: which element is truncated) or the count differs; otherwise the same ``bytes`` elements,
and encoding them back gives the buffer again. Encode: a list of bytes, str (non-ASCII, lone
surrogates), ints, floats and None must encode as ``ref_encode`` does, or fail with the same
exception class.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fuzz._common import ref_decode, ref_encode
from fuzz.provider import Provider
from gateway._native.bytestensor import decode_bytes_tensor, encode_bytes_tensor


def _objects(items: list[Any]) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


def one_input(data: bytes) -> None:
    if not data:
        return
    control, buf = data[0], data[1:]
    if control & 0x80:
        _encode(Provider(buf))
        return
    try:
        want: list[bytes] | None = ref_decode(buf)
        why = ""
    except ValueError as exc:
        want, why = None, str(exc)
    count = (-1, len(want) if want is not None else 0, (control >> 2) & 7)[control % 3]
    view: Any = (buf, memoryview(b"@" + buf + b"@")[1:-1], bytearray(buf), np.frombuffer(buf, np.uint8))[
        (control >> 5) & 3]
    try:
        got = decode_bytes_tensor(view, count)
    except ValueError as exc:
        if want is None:
            assert str(exc).startswith(why), f"{exc} (reference: {why})"
        else:
            assert 0 <= count != len(want), f"refused a well-formed buffer: {exc}"
        return
    assert want is not None, f"accepted a buffer the reference refuses ({why})"
    assert count < 0 or count == len(want), f"accepted {len(want)} elements for a count of {count}"
    assert got.dtype == object and got.shape == (len(want),)
    items = got.tolist()
    assert all(type(x) is bytes for x in items) and items == want
    assert encode_bytes_tensor(got) == buf, "decode then encode changed the buffer"


def _encode(p: Provider) -> None:
    items: list[Any] = []
    for _ in range(p.below(12)):
        kind = p.below(6)
        if kind == 0:
            items.append(p.take(p.below(300) if p.coin(8) else p.below(8)))
        elif kind == 1:
            items.append(p.text(6))
        elif kind == 2:
            items.append(p.pick(["\ud800", "é", "\x00", "日本"]))
        elif kind == 3:
            items.append(p.integer())
        elif kind == 4:
            items.append(p.pick([0.1, -0.0, 1e300, float("nan"), np.float32(2.5)]))
        else:
            items.append(None)
    arr = _objects(items)
    if items and p.coin(3):
        arr = arr.reshape(1, -1).T  # a non-contiguous view: encoded in its own row-major order
    try:
        want = ref_encode(arr)
    except Exception as exc:  # whatever the reference raises, the kernel must raise too
        try:
            encode_bytes_tensor(arr)
        except type(exc):
            return
        raise AssertionError(f"encode accepted what the reference refuses ({exc!r})") from None
    assert encode_bytes_tensor(arr) == want
