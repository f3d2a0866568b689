"""Plain Python/numpy references for the native kernels (``gateway._native``), written from the
documented semantics and nothing else: the property tests (tests/test_native_*.py) and the fuzz
targets (fuzz/native_*.py, fuzz/http_body.py) both hold the kernels to these.

No pytest or hypothesis here, so that the fuzz harness can import it on its own.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from gateway.types import DATATYPE_TO_NUMPY

INT_TYPES = ["INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"]
FLOAT_TYPES = ["FP16", "FP32", "FP64"]
MAX_DEPTH = 64
"""Deepest list nesting the kernels accept."""


def int_range(datatype: str) -> tuple[int, int]:
    info = np.iinfo(DATATYPE_TO_NUMPY[datatype])
    return int(info.min), int(info.max)


def ref_flatten(data: Any) -> list:
    """The leaves of an evenly nested list, row-major: every list at one depth as long as the
    others, non-lists only at the deepest level, at most ``MAX_DEPTH`` levels; else ValueError."""
    if not isinstance(data, list):
        raise ValueError("not a list")
    flat: list = []

    def shape_of(x: list, depth: int) -> list[int]:
        if depth > MAX_DEPTH:
            raise ValueError(f"deeper than {MAX_DEPTH}")
        if not all(isinstance(e, list) for e in x):
            if any(isinstance(e, list) for e in x):
                raise ValueError("nests unevenly")
            flat.extend(x)
            return [len(x)]
        subs = [shape_of(e, depth + 1) for e in x]
        if any(s != subs[0] for s in subs):
            raise ValueError("nests unevenly")
        return [len(x), *(subs[0] if subs else [])]

    shape_of(data, 1)
    return flat


def ref_list_to_array(data: Any, datatype: str, expected: int = -1) -> np.ndarray:
    """``list_to_array``'s documented semantics, written plainly."""
    flat = ref_flatten(data)
    if expected >= 0 and len(flat) != expected:
        raise ValueError(f"data has {len(flat)} elements but shape implies {expected}")
    dtype = DATATYPE_TO_NUMPY[datatype]
    for i, e in enumerate(flat):
        is_int = isinstance(e, int) and not isinstance(e, bool)
        if datatype == "BOOL":
            if not (isinstance(e, bool) or (is_int and e in (0, 1))):
                raise ValueError(f"element {i}")
        elif datatype in INT_TYPES:
            if not is_int:
                raise ValueError(f"element {i}")
            lo, hi = int_range(datatype)
            if not lo <= e <= hi:
                raise OverflowError(f"element {i}")
        elif not (is_int or isinstance(e, float)):
            raise ValueError(f"element {i}")
    if datatype == "BOOL":
        return np.array([bool(e) for e in flat], dtype=np.bool_)
    with np.errstate(over="ignore"):
        return np.array([float(e) if datatype in FLOAT_TYPES else e for e in flat], dtype=dtype)


def ref_encode(arr: Any) -> bytes:
    """The KServe BYTES binary form: per element a 4-byte little-endian length, then the bytes."""
    out = bytearray()
    for x in np.asarray(arr, dtype=object).flat if not isinstance(arr, np.ndarray) else arr.flat:
        b = x if isinstance(x, bytes) else x.encode() if isinstance(x, str) else str(x).encode()
        out += struct.pack("<I", len(b)) + b
    return bytes(out)


def ref_decode(buf: bytes) -> list[bytes]:
    """The elements of a BYTES binary buffer; ValueError naming the first truncated element."""
    out, off = [], 0
    while off < len(buf):
        if off + 4 > len(buf):
            raise ValueError(f"BYTES element {len(out)} is truncated")
        (n,) = struct.unpack_from("<I", buf, off)
        if off + 4 + n > len(buf):
            raise ValueError(f"BYTES element {len(out)} is truncated")
        out.append(bytes(buf[off + 4:off + 4 + n]))
        off += 4 + n
    return out
