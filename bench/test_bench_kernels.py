"""Micro-benchmarks of the Cython kernels in gateway._native against the numpy / pure-Python
code they replace (convention 4: each native function shows that it wins).

Run: python -m pytest bench/test_bench_kernels.py --benchmark-only
Each benchmark group holds one Cython kernel and its reference on identical inputs.
"""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from gateway._native.bytestensor import decode_bytes_tensor, encode_bytes_tensor
from gateway._native.jsonnum import list_to_array
from gateway._native.pack import pack_rows, scatter_rows

_U32 = struct.Struct("<I")


def py_decode_bytes(buf: bytes, count: int) -> np.ndarray:
    out = np.empty(count, dtype=object)
    off = 0
    for i in range(count):
        (n,) = _U32.unpack_from(buf, off)
        out[i] = buf[off + 4:off + 4 + n]
        off += 4 + n
    return out


def py_encode_bytes(arr: np.ndarray) -> bytes:
    parts = []
    for x in arr.flat:
        b = x if isinstance(x, bytes) else x.encode() if isinstance(x, str) else str(x).encode()
        parts.append(_U32.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def py_slices(batch: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    out, o = [], 0
    for c in counts:
        out.append(batch[o:o + c])
        o += c
    return out


# ---- pack -----------------------------------------------------------------------------------

PACK_CASES = {"64x1x64": (64, (1, 64)), "8x1024x256": (8, (1024, 256))}


def _pack_inputs(case: str) -> tuple[list[np.ndarray], np.ndarray]:
    n, shape = PACK_CASES[case]
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]
    return arrays, np.empty((n * shape[0], *shape[1:]), np.float32)


@pytest.mark.parametrize("case", list(PACK_CASES))
@pytest.mark.parametrize("impl", ["cython", "numpy"])
def test_pack_rows(benchmark, case: str, impl: str) -> None:
    arrays, out = _pack_inputs(case)
    benchmark.group = f"pack fp32 {case}"
    if impl == "cython":
        benchmark(pack_rows, arrays, out)
    else:
        benchmark(np.concatenate, arrays, axis=0, out=out)
    np.testing.assert_array_equal(out, np.concatenate(arrays))


# ---- scatter --------------------------------------------------------------------------------

SCATTER_CASES = {"64x1x64": (64, (1, 64)), "8x1024x256": (8, (1024, 256)), "1000x1x64": (1000, (1, 64))}


@pytest.mark.parametrize("case", list(SCATTER_CASES))
@pytest.mark.parametrize("impl", ["cython", "np.split", "slices"])
def test_scatter_rows(benchmark, case: str, impl: str) -> None:
    n, shape = SCATTER_CASES[case]
    batch = np.zeros((n * shape[0], *shape[1:]), np.float32)
    counts = [shape[0]] * n
    benchmark.group = f"scatter fp32 {case}"
    fn = {"cython": scatter_rows,
          "np.split": lambda b, c: np.split(b, np.cumsum(c)[:-1]),
          "slices": py_slices}[impl]
    views = benchmark(fn, batch, counts)
    assert len(views) == n and views[-1].shape == shape


# ---- JSON numbers ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [64, 65536])
@pytest.mark.parametrize("impl", ["cython", "np.asarray"])
def test_list_to_array(benchmark, n: int, impl: str) -> None:
    data = orjson.loads(orjson.dumps(np.random.default_rng(n).standard_normal(n).tolist()))
    benchmark.group = f"json floats -> FP32 x{n}"
    if impl == "cython":
        arr = benchmark(list_to_array, data, "FP32", n)
    else:
        arr = benchmark(np.asarray, data, dtype=np.float32)
    assert arr.shape == (n,)


# ---- BYTES tensors --------------------------------------------------------------------------

def _bytes_items(n: int = 1000, size: int = 16) -> np.ndarray:
    arr = np.empty(n, dtype=object)
    arr[:] = [bytes([i % 256]) * size for i in range(n)]
    return arr


@pytest.mark.parametrize("impl", ["cython", "python"])
def test_decode_bytes(benchmark, impl: str) -> None:
    items = _bytes_items()
    buf = py_encode_bytes(items)
    benchmark.group = "BYTES decode 1000x16B"
    got = benchmark(decode_bytes_tensor if impl == "cython" else py_decode_bytes, buf, len(items))
    assert got.tolist() == items.tolist()


@pytest.mark.parametrize("impl", ["cython", "python"])
def test_encode_bytes(benchmark, impl: str) -> None:
    items = _bytes_items()
    benchmark.group = "BYTES encode 1000x16B"
    got = benchmark(encode_bytes_tensor if impl == "cython" else py_encode_bytes, items)
    assert got == py_encode_bytes(items)
