"""A stored prediction: the outputs of one entity's request, the version that computed them, when,
and a fingerprint of the inputs they were computed from.

One self-describing binary value per entry, the same in every store (SQLite, Redis), so that a batch
job writing to one and a server reading from another agree without a schema: a magic and format
number, the computed-at time (Unix seconds), the version, the 16-byte fingerprint, then per output
its name, numpy dtype, shape and raw bytes (BYTES elements length-prefixed). Decoding is one
``np.frombuffer`` per output, no copy: the arrays are read-only views of the value.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from xxhash import xxh3_128

from gateway._native.bytestensor import decode_bytes_tensor, encode_bytes_tensor

MAGIC = b"GWP1"
_HEAD = struct.Struct("<4sdH")  # magic, computed_at, version length
_LAYOUT = struct.Struct("<HI")  # outputs, bytes of their headers
_OUT = struct.Struct("<HBBQ")  # name length, dtype length, ndim, data bytes
_Layout = tuple[tuple[str, np.dtype, tuple[int, ...], int, int], ...]
_layouts: dict[bytes, tuple[_Layout, int]] = {}
"""Parsed output headers by their bytes: a model's entries share one layout (names, dtypes,
shapes), so decoding one is a dict lookup and a view per output."""


class BadEntry(ValueError):
    """A stored value that is not an entry of this format (damaged, or written by something else)."""


@dataclass(slots=True)
class Entry:
    version: str
    computed_at: float
    """Unix time (seconds) the outputs were computed."""
    fingerprint: bytes
    """``fingerprint(inputs)`` of the inputs, or b"" when unknown."""
    outputs: dict[str, np.ndarray]


def _input_header(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """What an input's fingerprint covers besides its bytes (one definition: the batch job's rows
    and the server's requests must hash alike)."""
    return name.encode() + b"\0" + dtype.str.encode() + b"\0" + repr(shape).encode() + b"\0"


def fingerprint(inputs: Mapping[str, np.ndarray]) -> bytes:
    """16 bytes that change when any input's name, dtype, shape or bytes change (xxh3-128)."""
    h = xxh3_128()
    for name in sorted(inputs):
        a = inputs[name]
        h.update(_input_header(name, a.dtype, a.shape))
        if a.dtype.kind == "O":
            h.update(encode_bytes_tensor(a))
        else:
            h.update(np.ascontiguousarray(a).data)
    return h.digest()


def _out_header(name: str, arr_dtype: np.dtype, shape: tuple[int, ...], size: int) -> bytes:
    n = name.encode()
    dt = b"O" if arr_dtype.kind == "O" else arr_dtype.str.encode()
    return _OUT.pack(len(n), len(dt), len(shape), size) + n + dt + struct.pack(f"<{len(shape)}q", *shape)


def encode(entry: Entry) -> bytes:
    """magic, computed_at, version, fingerprint, then every output's header (name, dtype, shape,
    size) together, then their data in the same order."""
    v = entry.version.encode()
    fp = entry.fingerprint
    heads, datas = [], []
    for name, arr in entry.outputs.items():
        data = encode_bytes_tensor(arr) if arr.dtype.kind == "O" else np.ascontiguousarray(arr).tobytes()
        heads.append(_out_header(name, arr.dtype, arr.shape, len(data)))
        datas.append(data)
    head = b"".join(heads)
    return b"".join([_HEAD.pack(MAGIC, entry.computed_at, len(v)), v, bytes([len(fp)]), fp,
                     _LAYOUT.pack(len(heads), len(head)), head, *datas])


def _parse_layout(block: bytes, count: int) -> _Layout:
    out = []
    at = rel = 0
    for _ in range(count):
        nlen, dlen, ndim, size = _OUT.unpack_from(block, at)
        at += _OUT.size
        name = block[at:at + nlen].decode()
        at += nlen
        dt = block[at:at + dlen].decode()
        at += dlen
        shape = struct.unpack_from(f"<{ndim}q", block, at)
        at += 8 * ndim
        out.append((name, np.dtype(object) if dt == "O" else np.dtype(dt), shape, rel, size))
        rel += size
    if at != len(block):
        raise BadEntry("output headers of the wrong length")
    return tuple(out)


def decode(value: bytes) -> Entry:
    try:
        magic, computed_at, vlen = _HEAD.unpack_from(value, 0)
        if magic != MAGIC:
            raise BadEntry("not a stored prediction (bad magic)")
        at = _HEAD.size
        version = value[at:at + vlen].decode()
        at += vlen
        flen = value[at]
        fp = value[at + 1:at + 1 + flen]
        at += 1 + flen
        count, hlen = _LAYOUT.unpack_from(value, at)
        at += _LAYOUT.size
        block = value[at:at + hlen]
        found = _layouts.get(block)
        if found is None:
            parsed = _parse_layout(block, count)
            found = (parsed, sum(x[4] for x in parsed))
            if len(_layouts) > 1024:  # layouts are few (one per model's outputs); never grow with junk
                _layouts.clear()
            _layouts[block] = found
        layout, size_all = found
        at += hlen
        if at + size_all != len(value):
            raise BadEntry("truncated or padded")
        outputs: dict[str, np.ndarray] = {}
        for name, dtype, shape, rel, size in layout:
            if dtype.kind == "O":
                outputs[name] = decode_bytes_tensor(memoryview(value)[at + rel:at + rel + size]).reshape(shape)
            else:
                outputs[name] = np.frombuffer(value, dtype, size // dtype.itemsize, at + rel).reshape(shape)
    except BadEntry:
        raise
    except (struct.error, ValueError, TypeError, IndexError, UnicodeDecodeError) as exc:
        raise BadEntry(f"not a stored prediction: {exc}") from None
    return Entry(version, computed_at, fp, outputs)


def row_fingerprints(inputs: Mapping[str, np.ndarray]) -> list[bytes]:
    """``fingerprint`` of each row as a request of its own (shape ``[1, ...]``), for a batch of
    rows: what a batch job stores so that the server can tell a changed context."""
    names = sorted(inputs)
    n = len(next(iter(inputs.values()))) if inputs else 0
    bases = []
    for name in names:
        a = inputs[name]
        h = xxh3_128()
        h.update(_input_header(name, a.dtype, (1, *a.shape[1:])))
        bases.append(h)
    if any(inputs[name].dtype.kind == "O" for name in names):
        return [fingerprint({k: inputs[k][i:i + 1] for k in names}) for i in range(n)]
    rows = [np.ascontiguousarray(inputs[name]).reshape(n, -1).view(np.uint8) for name in names]
    out = []
    for i in range(n):
        h = bases[0].copy()
        h.update(rows[0][i].data)
        for j in range(1, len(names)):  # the next input's name and layout, then its row
            a = inputs[names[j]]
            h.update(_input_header(names[j], a.dtype, (1, *a.shape[1:])))
            h.update(rows[j][i].data)
        out.append(h.digest())
    return out


def encode_rows(version: str, computed_at: float, fingerprints: list[bytes],
                outputs: Mapping[str, np.ndarray]) -> list[bytes]:
    """``encode`` of each row's entry (outputs ``[1, ...]`` per row) for a batch of rows, built as
    one byte matrix (the fixed parts broadcast, the rows' bytes copied in) instead of row by row."""
    n = len(fingerprints)
    if any(a.dtype.kind == "O" for a in outputs.values()) or n == 0 or any(len(f) != 16 for f in fingerprints):
        return [encode(Entry(version, computed_at, fingerprints[i],
                             {k: a[i:i + 1] for k, a in outputs.items()})) for i in range(n)]
    v = version.encode()
    rows = {name: np.ascontiguousarray(arr).reshape(n, -1).view(np.uint8) for name, arr in outputs.items()}
    head = b"".join(_out_header(name, arr.dtype, (1, *arr.shape[1:]), rows[name].shape[1])
                    for name, arr in outputs.items())
    pieces: list[bytes | np.ndarray] = [_HEAD.pack(MAGIC, computed_at, len(v)) + v + bytes([16]),
                                        np.frombuffer(b"".join(fingerprints), np.uint8).reshape(n, 16),
                                        _LAYOUT.pack(len(outputs), len(head)) + head, *rows.values()]
    width = sum(p.shape[1] if isinstance(p, np.ndarray) else len(p) for p in pieces)
    m = np.empty((n, width), np.uint8)
    at = 0
    for p in pieces:
        w = p.shape[1] if isinstance(p, np.ndarray) else len(p)
        m[:, at:at + w] = p if isinstance(p, np.ndarray) else np.frombuffer(p, np.uint8)
        at += w
    return [r.tobytes() for r in m]
