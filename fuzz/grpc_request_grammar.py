"""Target ``grpc_request_grammar``: ``decode_infer_request`` on messages built from a grammar.

The fuzzer's bytes choose each part of a ``ModelInferRequest`` (``fuzz.provider``): datatypes,
shapes of any int64 dimensions (zero among huge ones, more than 64 of them), raw contents of the
right size or a little off, BYTES raw contents well formed or truncated, typed contents of the
right field or not, as many raw entries as inputs or not, shared-memory parameters, timeouts,
outputs. The message is then held to ``grpc_request``'s contract, once as built and once after
a serialize/parse round trip (what grpc hands over).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fuzz.grpc_request import check_message
from fuzz.provider import Provider
from gateway._native.bytestensor import encode_bytes_tensor
from gateway.front.grpc.codec import CONTENTS_FIELD
from gateway.pb import service as pb
from gateway.types import DATATYPE_TO_NUMPY

DATATYPES = [*DATATYPE_TO_NUMPY, "FP8", ""]
FIELDS = sorted(set(CONTENTS_FIELD.values()))
INT64 = (-(2**63), 2**63 - 1)


def one_input(data: bytes) -> None:
    msg = build(Provider(data))
    check_message(msg)
    check_message(pb.ModelInferRequest.FromString(msg.SerializeToString()))


def _int64(v: int) -> int:
    return min(max(v, INT64[0]), INT64[1])


def _count(shape: list[int]) -> int | None:
    """Elements of a shape small enough to build contents for; None otherwise."""
    if any(d < 0 for d in shape) or len(shape) > 64:
        return None
    n = int(np.prod(shape, dtype=object)) if shape else 1
    return n if n <= 256 else None


def build(p: Provider) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name=p.pick(["m", "", "add_sub"]), model_version=p.pick(["", "1", "x"]),
                               id=p.pick(["", "r"]))
    n = p.below(4)
    raws: list[bytes] = []
    for _ in range(n):
        t = msg.inputs.add(name=p.pick(["INPUT0", "INPUT1", "INPUT0", ""]), datatype=p.pick(DATATYPES))
        shape = _shape(p)
        t.shape.extend(shape)
        count = _count(shape)
        if p.coin(6):
            _shm(p, t.parameters)
        mode = p.below(4)
        if mode <= 1:
            raws.append(_raw(p, t.datatype, count))
        elif mode == 2:
            _contents(p, t, count)
    # as many raw entries as inputs mostly; sometimes one more or less
    if p.coin(8) and raws:
        raws.pop()
    elif p.coin(8):
        raws.append(p.take(p.below(9)))
    msg.raw_input_contents.extend(raws)
    for _ in range(p.below(3)):
        o = msg.outputs.add(name=p.pick(["OUTPUT0", "OUTPUT1", ""]))
        if p.coin(3):
            _shm(p, o.parameters)
        elif p.coin(4):
            o.parameters["binary_data"].bool_param = True
    if p.coin(3):
        _param(p, msg.parameters["timeout"])
    if p.coin(6):
        _param(p, msg.parameters[p.pick(["sequence_id", "priority", "x"])])
    return msg


def _shape(p: Provider) -> list[int]:
    mode = p.below(10)
    if mode == 0:
        return [1] * (63 + p.below(4))
    if mode == 1:
        return [0, *(_int64(p.integer()) for _ in range(1 + p.below(3)))]
    if mode == 2:
        return [_int64(p.integer()) for _ in range(p.below(4))]
    return [p.below(5) for _ in range(p.below(4))]


def _raw(p: Provider, datatype: str, count: int | None) -> bytes:
    if count is None:
        return p.take(p.below(17))
    if datatype == "BYTES":
        items = np.empty(count, dtype=object)
        items[:] = [p.take(p.below(5)) for _ in range(count)]
        raw = encode_bytes_tensor(items)
        if p.coin(6):
            raw = raw[:max(0, len(raw) - 1 - p.below(4))]
        elif p.coin(12):
            raw += p.take(p.below(6))
        return raw
    size = count * DATATYPE_TO_NUMPY.get(datatype, np.dtype(np.uint8)).itemsize
    if p.coin(6):
        size = max(0, size + p.pick([-1, 1, -4, 4]))
    return p.take(size).ljust(size, b"\0")


def _contents(p: Provider, t: Any, count: int | None) -> None:
    field = CONTENTS_FIELD.get(t.datatype) if not p.coin(8) else p.pick(FIELDS)
    if field is None:
        return
    n = (count if count is not None else p.below(4)) + (p.pick([-1, 1]) if p.coin(8) else 0)
    values = getattr(t.contents, field)
    for _ in range(max(0, n)):
        if field == "bool_contents":
            values.append(p.coin())
        elif field == "bytes_contents":
            values.append(p.take(p.below(4)))
        elif field in ("fp32_contents", "fp64_contents"):
            values.append(p.pick([0.0, -1.5, 3.4e38, 1e300, float("nan"), float("inf"), 2.0**-149]))
        elif field == "int_contents":
            values.append(p.pick([0, 1, -1, 127, 128, -129, 255, 256, 32767, 32768, -32769, 2**31 - 1, -(2**31)]))
        elif field == "uint_contents":
            values.append(p.pick([0, 1, 255, 256, 65535, 65536, 2**32 - 1]))
        elif field == "int64_contents":
            values.append(_int64(p.integer()))
        else:
            values.append(min(max(p.integer(), 0), 2**64 - 1))


def _shm(p: Provider, params: Any) -> None:
    params["shared_memory_region"].string_param = p.pick(["r0", "r1", "nope"])
    if not p.coin(8):
        params["shared_memory_byte_size"].int64_param = p.pick([0, 4, 8, 16, 64, 4096, 4097, -1])
    if p.coin(2):
        params["shared_memory_offset"].int64_param = p.pick([0, 4, 60, 61, 4092, 4096, -1, 2**62])


def _param(p: Provider, param: Any) -> None:
    kind = p.below(5)
    if kind == 0:
        param.bool_param = p.coin()
    elif kind == 1:
        param.int64_param = _int64(p.integer())
    elif kind == 2:
        param.uint64_param = min(max(p.integer(), 0), 2**64 - 1)
    elif kind == 3:
        param.string_param = p.pick(["", "10", "x"])
    else:
        param.double_param = p.pick([0.5, -1.0, 1e30])
