"""Target ``http_body_grammar``: ``decode_infer`` on bodies built from a grammar.

Raw bytes rarely get past the JSON parser; here the fuzzer's bytes choose the parts of a
KServe request instead (``fuzz.provider``): datatypes, shapes with huge, negative, zero and
non-integer dimensions, more than 64 of them, data nested evenly or not, deep, of the wrong
leaf type, binary sizes right or off by a little, shared-memory parameters, repeated names,
request and output parameters. The body is then checked as ``http_body`` checks one, and a
numeric input without parameters (the native ``json_tensor`` fast path) must decode exactly as
the same input with ``"parameters": {}`` (the general path) does.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson

from fuzz._common import INT_TYPES, int_range
from fuzz.http_body import check_body
from fuzz.provider import Provider
from gateway._native.bytestensor import encode_bytes_tensor
from gateway.types import DATATYPE_TO_NUMPY

DATATYPES = list(DATATYPE_TO_NUMPY)
NAMES = ["INPUT0", "INPUT1", "X", ""]


def one_input(data: bytes) -> None:
    p = Provider(data)
    obj, tail, binary = build(p)
    head = _dumps(obj)
    hlen = -1
    if binary or tail:
        hlen = len(head) if not p.coin(16) else p.below(len(head) + len(tail) + 2) - 1
    req = check_body(head + tail, hlen)
    if isinstance(obj, dict) and isinstance(obj.get("inputs"), list) and hlen in (-1, len(head)):
        _fast_equals_general(obj, head, tail, hlen, req)


def _fast_equals_general(obj: dict[str, Any], head: bytes, tail: bytes, hlen: int, req: Any) -> None:
    """With ``"parameters": {}`` added to every input that has none, nothing may change."""
    inputs = obj["inputs"]
    if not any(type(i) is dict and "parameters" not in i for i in inputs):
        return
    general = dict(obj, inputs=[dict(i, parameters={}) if type(i) is dict and "parameters" not in i else i
                                for i in inputs])
    ghead = _dumps(general)
    other = check_body(ghead + tail, -1 if hlen < 0 else len(ghead))
    assert (req is None) == (other is None), (
        f"the fast path {'refused' if req is None else 'accepted'} what the general path "
        f"{'accepted' if req is None else 'refused'}")
    if req is not None:
        for name, arr in req.inputs.items():
            np.testing.assert_array_equal(arr, other.inputs[name], strict=True)


class Deep:
    """Data nested ``depth`` lists deep around one leaf, written by ``_dumps`` as text."""

    __slots__ = ("depth", "leaf")

    def __init__(self, depth: int, leaf: Any) -> None:
        self.depth = depth
        self.leaf = leaf


def _dumps(obj: Any) -> bytes:
    deep: list[Deep] = []

    def default(x: Any) -> str:
        if isinstance(x, Deep):
            deep.append(x)
            return f"@@deep{len(deep) - 1}@@"
        raise TypeError

    try:
        text = orjson.dumps(obj, default=default)
    except (orjson.JSONEncodeError, TypeError):  # integers past 64 bits: as text, as a client may send
        deep.clear()
        text = json.dumps(obj, default=default).encode()
    for i, d in enumerate(deep):
        text = text.replace(f'"@@deep{i}@@"'.encode(), b"[" * d.depth + _dumps(d.leaf) + b"]" * d.depth)
    return text


# ---- the grammar ----------------------------------------------------------------------------

def build(p: Provider) -> tuple[Any, bytes, bool]:
    """(the JSON document, the binary tail, whether to send it as the binary extension)."""
    binary = p.coin(3)
    tail = bytearray()
    if p.coin(40):
        return p.pick([[], None, 1, "x", {"inputs": {}}, {"inputs": None}]), b"", binary
    n = p.below(5)
    inputs: list[Any] = []
    for _ in range(n):
        t, raw = tensor(p)
        inputs.append(t)
        if raw is not None:
            tail += raw
            binary = True
    if p.coin(30):
        inputs.append(p.pick([1, "x", None, [], {}]))
    obj: dict[str, Any] = {"inputs": inputs}
    if p.coin(3):
        obj["outputs"] = [output(p) for _ in range(p.below(4))]
    if p.coin(4):
        obj["id"] = p.pick(["", "req-1", 7, None])
    if p.coin(4):
        obj["parameters"] = request_parameters(p)
    if p.coin(20):
        tail += p.take(p.below(9))
    return obj, bytes(tail), binary


def shape(p: Provider) -> Any:
    mode = p.below(16)
    if mode == 0:
        return [1] * (63 + p.below(4))  # around numpy's 64-dimension limit
    if mode == 1:
        return p.pick([None, 3, "2", [[2]], [1.0], [True], {}])
    if mode == 2:
        return [0, *(p.integer() for _ in range(1 + p.below(3)))]
    if mode == 3:
        return [p.integer() for _ in range(p.below(4))]
    return [p.below(5) for _ in range(p.below(4))]


def leaf(p: Provider, datatype: str) -> Any:
    mode = p.below(12)
    if mode == 0:
        return p.pick([None, True, False, "a", "", {}, 1.5, -0.0, 1e308, 0, 1, -1, 2**64])
    if mode == 1:
        return p.integer()
    if datatype == "BYTES":
        return p.text(6)
    if datatype == "BOOL":
        return p.pick([True, False, 0, 1])
    if datatype in INT_TYPES:
        lo, hi = int_range(datatype)
        return p.pick([lo, hi, lo - 1, hi + 1, 0, p.below(100)])
    return p.pick([0.5, -2.25, 3, 65504.0, 65520.0, 1e39, -1e-45, 2**53 + 1, p.below(1000) / 7])


def nested(p: Provider, dims: list[int], datatype: str, depth: int = 0) -> Any:
    """A list of ``dims``' shape (perturbed now and then: a list short, a leaf where a list goes)."""
    if not dims:
        return leaf(p, datatype)
    n = dims[0]
    if p.coin(24):
        n = max(0, n + p.pick([-1, 1]))
    out = [nested(p, dims[1:], datatype, depth + 1) for _ in range(n)]
    if out and p.coin(40):
        out[p.below(len(out))] = leaf(p, datatype) if dims[1:] else [leaf(p, datatype)]
    return out


def data_for(p: Provider, shp: Any, datatype: str) -> Any:
    mode = p.below(10)
    small = type(shp) is list and all(type(d) is int and 0 <= d <= 8 for d in shp) and len(shp) <= 6 \
        and int(np.prod(shp or [1])) <= 64
    if mode == 0:
        depth = p.pick([62, 63, 64, 65, 66, 200, 1000])  # orjson reads 1024 levels
        if depth > 200:  # past what the serializers write: spliced in as text (``_dumps``)
            return Deep(depth, leaf(p, datatype))
        x: Any = [leaf(p, datatype)]
        for _ in range(depth - 1):
            x = [x]
        return x
    if mode == 1:
        return p.pick([[], None, 1, "a", {}, [[]], [[], []], [[], [1]], [1, [2]], [[1], 2]])
    if small and mode < 7:
        return nested(p, list(shp), datatype)
    if small and mode < 9:  # flat
        return [leaf(p, datatype) for _ in range(int(np.prod(shp or [1])) + p.pick([0, 0, 0, -1, 1]))]
    return [leaf(p, datatype) for _ in range(p.below(6))]


def raw_for(p: Provider, shp: Any, datatype: str) -> bytes:
    """Binary data for a tensor: the right size for its shape mostly, else a little off or random."""
    count = int(np.prod(shp)) if type(shp) is list and all(type(d) is int and 0 <= d <= 64 for d in shp) \
        and len(shp) <= 4 else p.below(4)
    if datatype == "BYTES":
        items = np.empty(count, dtype=object)
        items[:] = [p.take(p.below(5)) for _ in range(count)]
        raw = encode_bytes_tensor(items)
        if p.coin(6):
            raw = raw[:max(0, len(raw) - 1 - p.below(4))]
        return raw
    size = count * DATATYPE_TO_NUMPY.get(datatype, np.dtype(np.uint8)).itemsize
    if p.coin(6):
        size = max(0, size + p.pick([-1, 1, -4, 4]))
    return p.take(size).ljust(size, b"\0")


def tensor(p: Provider) -> tuple[dict[str, Any], bytes | None]:
    t: dict[str, Any] = {}
    datatype = p.pick(DATATYPES) if not p.coin(20) else p.pick(["FP8", "", "fp32", 1, None])
    if not p.coin(30):
        t["name"] = p.pick(NAMES) if not p.coin(30) else p.pick([1, None, ["INPUT0"]])
    if not p.coin(30):
        t["datatype"] = datatype
    shp = shape(p)
    if not p.coin(30):
        t["shape"] = shp
    mode = p.below(8)
    raw = None
    dt = datatype if isinstance(datatype, str) else "FP32"
    if mode <= 4:
        t["data"] = data_for(p, shp, dt)
    params: dict[str, Any] = {}
    if mode in (5, 6) or p.coin(24):
        raw = raw_for(p, shp, dt)
        params["binary_data_size"] = len(raw) if not p.coin(10) else p.pick([-1, 0, len(raw) + 1, True, 1.0, 2**64])
    if mode == 7 or p.coin(24):
        params["shared_memory_region"] = p.pick(["r0", "r1", "nope", 3])
        if not p.coin(8):
            params["shared_memory_byte_size"] = p.pick([0, 4, 8, 16, 64, 4096, 4097, -1]) + p.below(2) * 4
        if p.coin(2):
            params["shared_memory_offset"] = p.pick([0, 4, 60, 61, 4092, 4096, -1, 2**63])
    if params or p.coin(20):
        t["parameters"] = params if not p.coin(30) else p.pick([None, [], 1])
    return t, raw


def output(p: Provider) -> Any:
    if p.coin(20):
        return p.pick([None, "OUTPUT0", {}, {"name": 1}])
    o: dict[str, Any] = {"name": p.pick(["OUTPUT0", "OUTPUT1", "OUTPUT0"])}
    if p.coin(2):
        o["parameters"] = p.pick([{"binary_data": True}, {"binary_data": False}, {"classification": 2},
                                  {"shared_memory_region": "r0", "shared_memory_byte_size": 64},
                                  {"shared_memory_region": "r1", "shared_memory_byte_size": 65},
                                  {"shared_memory_region": "nope", "shared_memory_byte_size": 4}, [], None])
    return o


def request_parameters(p: Provider) -> Any:
    if p.coin(10):
        return p.pick([[], 1, "x"])
    return {k: p.pick([True, False, 0, 10, -1, 2**64, "1", None, 1.5])
            for k in p.pick([["binary_data_output"], ["timeout"], ["binary_data_output", "timeout"], ["x"]])}
