"""Warm-up inputs: the samples a Triton config declares (``model_warmup``), or defaults.

A version is warmed (its first runs allocate) before it reports ready, so the inputs must be ones
the model accepts. Declared samples are used as Triton uses them: ``zero_data``, ``random_data``
or ``input_data_file`` (one batch element's raw bytes, row-major, under ``<model>/warmup/``;
a BYTES element is a 4-byte little-endian length then the bytes), repeated ``batch_size`` times.
Without samples the defaults are zeros, and for BYTES the string ``b"1"``: an empty string is
what zeros would mean, but a model that parses its strings as numbers (ONNX ``Cast`` from
STRING) fails on it, and a decimal digit is valid for text and numbers alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.model_config import ConfigError
from gateway.types import TensorSpec

DEFAULT_BYTES = b"1"


@dataclass(frozen=True, slots=True)
class WarmupInput:
    """One input of a declared sample: its datatype (KServe name), dims without the batch
    dimension, and where the data comes from (``zero``, ``random`` or ``file``: ``path``, resolved
    from the declared ``file``)."""

    datatype: str
    dims: tuple[int, ...]
    kind: str
    path: Path | None = None
    file: str = ""


@dataclass(frozen=True, slots=True)
class WarmupSample:
    """A declared warm-up request (Triton's ``ModelWarmup``); ``field`` names it in the config
    (``model_warmup[0]``) for error messages."""

    name: str
    batch_size: int
    count: int
    inputs: tuple[tuple[str, WarmupInput], ...]
    field: str

    def to_triton(self) -> dict:
        def one(w: WarmupInput) -> dict:
            src: dict = ({"zero_data": True} if w.kind == "zero" else {"random_data": True} if w.kind == "random"
                         else {"input_data_file": w.file})
            return {"data_type": "TYPE_" + ("STRING" if w.datatype == "BYTES" else w.datatype),
                    "dims": list(w.dims), **src}

        return {"name": self.name, "batch_size": self.batch_size, "count": self.count,
                "inputs": {n: one(w) for n, w in self.inputs}}


Fail = Callable[[str, str], ConfigError]


def default_feeds(specs: Sequence[TensorSpec], rows: int | None) -> dict[str, np.ndarray]:
    """One tensor per input: variable dimensions 1, the batch dimension ``rows`` (None: unbatched)."""
    out = {}
    for spec in specs:
        shape = [d if d >= 0 else 1 for d in spec.shape]
        if rows is not None:
            shape[0] = rows
        if spec.datatype == "BYTES":
            arr = np.empty(shape, dtype=object)
            arr.fill(DEFAULT_BYTES)
        else:
            arr = np.zeros(shape, dtype=spec.dtype)
        out[spec.name] = arr
    return out


def sample_feeds(sample: WarmupSample, specs: Sequence[TensorSpec], max_batch_size: int,
                 fail: Fail) -> dict[str, np.ndarray]:
    """The tensors of one declared sample, checked against the model's (client-visible) inputs.
    ``fail(field_suffix, why)`` builds the error naming the config field."""
    batching = max_batch_size > 0
    given: Mapping[str, WarmupInput] = dict(sample.inputs)
    names = [s.name for s in specs]
    for name in given:
        if name not in names:
            raise fail(f".inputs['{name}']", f"names no input of the model (inputs: {', '.join(names)})")
    for name in names:
        if name not in given:
            raise fail(".inputs", f"lacks the model's input '{name}'")
    bs = sample.batch_size
    if batching and bs > max_batch_size:
        raise fail(".batch_size", f"is {bs}, above max_batch_size {max_batch_size}")
    if not batching and bs != 1:
        raise fail(".batch_size", f"is {bs} but the model does not batch (max_batch_size 0): it must be 1")
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in specs:
        w = given[spec.name]
        key = f".inputs['{spec.name}']"
        if w.datatype != spec.datatype:
            raise fail(key + ".data_type", f"is {_triton(w.datatype)} but input '{spec.name}' is {_triton(spec.datatype)}")
        inner = spec.shape[1:] if batching else spec.shape
        if len(w.dims) != len(inner) or any(d != -1 and d != x for d, x in zip(inner, w.dims, strict=True)):
            raise fail(key + ".dims", f"is {list(w.dims)} but input '{spec.name}' takes {list(inner)}"
                       + (" per batch row" if batching else ""))
        def fail_here(why: str, k: str = key) -> ConfigError:
            return fail(k, why)

        one = _element(w, spec, rng, fail_here)
        feeds[spec.name] = np.repeat(one[None], bs, axis=0) if batching else one
    return feeds


def tile_rows(feeds: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Repeat the rows of a batch cyclically up to ``rows`` (a max-size batch from a valid sample)."""
    return {k: np.take(v, np.arange(rows) % v.shape[0], axis=0) for k, v in feeds.items()}


def _triton(datatype: str) -> str:
    return "TYPE_" + ("STRING" if datatype == "BYTES" else datatype)


def _element(w: WarmupInput, spec: TensorSpec, rng: np.random.Generator,
             fail: Callable[[str], ConfigError]) -> np.ndarray:
    dims = w.dims
    n = int(np.prod(dims, dtype=np.int64))
    if w.kind == "file":
        assert w.path is not None
        data = w.path.read_bytes()
        if spec.datatype == "BYTES":
            return _strings_from(data, n, fail).reshape(dims)
        need = n * spec.dtype.itemsize
        if len(data) < need:
            raise fail(f"input_data_file {w.path} has {len(data)} bytes; {need} are needed for dims {list(dims)}")
        return np.frombuffer(data, dtype=spec.dtype, count=n).reshape(dims).copy()
    if spec.datatype == "BYTES":
        arr = np.empty(n, dtype=object)
        if w.kind == "zero":
            arr.fill(b"")  # Triton's zero data for strings: empty elements
        else:
            arr[:] = [str(d).encode() for d in rng.integers(0, 10, n)]
        return arr.reshape(dims)
    if w.kind == "zero":
        return np.zeros(dims, dtype=spec.dtype)
    if spec.datatype == "BOOL":
        return rng.integers(0, 2, dims).astype(bool)
    if spec.dtype.kind == "f":
        return rng.random(dims).astype(spec.dtype)
    return rng.integers(0, 10, dims).astype(spec.dtype)  # small values fit every integer type


def _strings_from(data: bytes, n: int, fail: Callable[[str], ConfigError]) -> np.ndarray:
    out = np.empty(n, dtype=object)
    pos = 0
    for i in range(n):
        if pos + 4 > len(data):
            raise fail(f"input_data_file holds {i} BYTES elements; {n} are needed")
        size = int.from_bytes(data[pos:pos + 4], "little")
        pos += 4
        if pos + size > len(data):
            raise fail(f"input_data_file element {i} declares {size} bytes past the end of the file")
        out[i] = data[pos:pos + size]
        pos += size
    return out
