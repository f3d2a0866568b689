"""Protobuf <-> core types for inference: ``decode_infer_request`` / ``encode_infer_response``.

This is the gRPC front's hot path, so it stays lean: raw tensor contents become numpy views
over the request's bytes (``np.frombuffer``, no copy), lookups go through module-level tables,
and nothing here allocates per element except BYTES tensors, whose elements are Python
``bytes`` by definition (split and joined by the compiled ``gateway._native.bytestensor``,
the same kernel the HTTP binary extension uses).

Malformed tensors are refused here, before the core sees them, with INVALID_ARGUMENT naming
the input: an unknown datatype, a negative dimension, a shape no array can have (more than 64
dimensions, or dimensions that multiply past 2**59), raw contents whose size does not match
shape x itemsize, a count of ``raw_input_contents`` that does not match the inputs, both raw
and typed contents, typed contents of the wrong length. Whether names, shapes and datatypes
fit the model is the core's check (``DataPlane.submit``).

Shared memory (``gateway.shm``): an input whose parameters name a ``shared_memory_region`` is
read from that region and takes no ``raw_input_contents`` entry (the raw contents belong, in
order, to the other inputs, as in Triton); an output so named is written into its region and
answered with an empty raw entry, so the raw contents stay aligned with the outputs. When
every input has raw contents (the common case) no input's parameters are looked at.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from typing import Any

import numpy as np

from gateway._native.bytestensor import decode_bytes_tensor, encode_bytes_tensor
from gateway.errors import invalid
from gateway.front.plan import EncodePlan
from gateway.pb import Message
from gateway.pb import service as pb
from gateway.shm import REGION as SHM_REGION
from gateway.shm import OutputTarget, SharedMemoryRegistry
from gateway.types import DATATYPE_TO_NUMPY, InferRequest, InferResponse, numpy_to_datatype

# Typed-contents field per datatype (KServe v2: narrow integers travel widened). FP16 and BF16
# have no typed form.
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_NARROW = frozenset(("INT8", "INT16", "UINT8", "UINT16"))
MAX_DIMS = 64  # numpy's limit
MAX_ELEMENTS = (1 << 63) // 16  # no datatype's array of more elements fits in a signed 64-bit byte size
_ModelInferResponse = pb.ModelInferResponse
# numpy dtype -> datatype name, filled on first sight of each dtype (a dict hit is cheaper
# than numpy_to_datatype's string work on every output of every response).
_DATATYPE_OF: dict[np.dtype, str] = {}


# ---- parameters -----------------------------------------------------------------------------

def params_from_pb(m: Mapping[str, Any]) -> dict[str, Any] | None:
    """InferParameter map -> dict of plain Python values (None when the map is empty)."""
    if not m:
        return None
    out: dict[str, Any] = {}
    for key, p in m.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, which) if which else None
    return out


def params_to_pb(values: Mapping[str, Any], m: MutableMapping[str, Any]) -> None:
    """Write plain Python values into an InferParameter map (bool before int: bool is an int)."""
    for key, v in values.items():
        p = m[key]
        if isinstance(v, bool):
            p.bool_param = v
        elif isinstance(v, int):
            if v >= 1 << 63:
                p.uint64_param = v
            else:
                p.int64_param = v
        elif isinstance(v, float):
            p.double_param = v
        else:
            p.string_param = v if isinstance(v, str) else str(v)


# ---- requests -------------------------------------------------------------------------------

def decode_infer_request(msg: Message, deadline_us: int = 0,
                         shm: SharedMemoryRegistry | None = None) -> tuple[InferRequest, EncodePlan | None]:
    """ModelInferRequest -> (InferRequest, how to encode its answer: None when no output has
    parameters); raises GatewayError(INVALID_ARGUMENT) on malformed input.

    ``deadline_us`` is what is left of the client's gRPC deadline (0: none). The Triton
    ``timeout`` parameter (microseconds) also bounds the request; the tighter of the two wins.
    ``shm``: the registered shared-memory regions (None: none served).
    """
    raw = msg.raw_input_contents
    n_raw = len(raw)
    tensors = msg.inputs
    # Only when some input has no raw contents can one be in shared memory.
    maybe_shm = n_raw != len(tensors)
    if maybe_shm and n_raw:
        n_shm = sum(1 for t in tensors if SHM_REGION in t.parameters)
        if n_raw + n_shm != len(tensors):
            in_shm = f" ({n_shm} in shared memory)" if n_shm else ""
            raise invalid(
                f"request has {len(tensors)} inputs{in_shm} but {n_raw} raw_input_contents: "
                "send raw contents for every input not in shared memory, or for none"
            )
    inputs: dict[str, np.ndarray] = {}
    r = 0
    for t in tensors:
        name = t.name
        datatype = t.datatype
        dtype = DATATYPE_TO_NUMPY.get(datatype)
        if dtype is None:
            raise invalid(f"input '{name}': unknown datatype '{datatype}'")
        shape = tuple(t.shape)
        if shape and min(shape) < 0:
            raise invalid(f"input '{name}': negative dimension in shape {list(shape)}")
        if len(shape) > MAX_DIMS:
            raise invalid(f"input '{name}': shape has {len(shape)} dimensions, more than {MAX_DIMS}")
        count = math.prod(shape)
        if (count or math.prod(d for d in shape if d)) > MAX_ELEMENTS:
            # no array has these dimensions, even an empty one (numpy refuses the shape), and a
            # count past 2**63 fits no kernel's size (a BYTES input in shared memory reached one)
            raise invalid(f"input '{name}': shape {list(shape)} is too large")
        if maybe_shm and SHM_REGION in t.parameters:
            if t.HasField("contents"):
                raise invalid(f"input '{name}': both a shared memory region and typed contents given")
            if shm is None:
                raise invalid(f"input '{name}': shared memory is not served here")
            arr = shm.read_input(name, datatype, dtype, shape, count, params_from_pb(t.parameters) or {})
        elif n_raw:
            if t.HasField("contents"):
                raise invalid(f"input '{name}': both raw_input_contents and typed contents given")
            arr = _from_raw(name, datatype, dtype, shape, count, raw[r])
            r += 1
        else:
            arr = _from_contents(name, datatype, dtype, shape, count, t)
        if name in inputs:
            raise invalid(f"input '{name}' appears more than once")
        inputs[name] = arr

    parameters = params_from_pb(msg.parameters) if msg.parameters else None
    timeout_us = deadline_us
    if parameters is not None:
        t_param = parameters.get("timeout")
        if isinstance(t_param, int) and not isinstance(t_param, bool) and t_param > 0:
            timeout_us = t_param if timeout_us <= 0 else min(timeout_us, t_param)

    outputs: list[str] | None = None
    output_parameters: dict[str, dict[str, Any]] | None = None
    shm_outputs: dict[str, OutputTarget] | None = None
    if msg.outputs:
        outputs = []
        for o in msg.outputs:
            outputs.append(o.name)
            if o.parameters:
                if output_parameters is None:
                    output_parameters = {}
                p = output_parameters[o.name] = params_from_pb(o.parameters) or {}
                if SHM_REGION in p:
                    if shm is None:
                        raise invalid(f"output '{o.name}': shared memory is not served here")
                    if shm_outputs is None:
                        shm_outputs = {}
                    shm_outputs[o.name] = shm.output_target(o.name, p)

    request = InferRequest(
        model_name=msg.model_name,
        model_version=msg.model_version,
        inputs=inputs,
        outputs=outputs,
        id=msg.id,
        parameters=parameters,
        timeout_us=timeout_us,
    )
    if output_parameters is None:
        return request, None
    return request, EncodePlan(shm=shm_outputs, output_parameters=output_parameters)


def _from_raw(name: str, datatype: str, dtype: np.dtype, shape: tuple[int, ...], count: int,
              buf: bytes) -> np.ndarray:
    if datatype == "BYTES":
        if count > len(buf) // 4:  # every element carries a 4-byte length prefix
            raise invalid(f"input '{name}': raw contents hold {len(buf)} bytes, too few for the "
                          f"{count} BYTES elements of shape {list(shape)}")
        try:
            return decode_bytes_tensor(buf, count).reshape(shape)
        except ValueError as exc:
            raise invalid(f"input '{name}': malformed BYTES raw contents: {exc}") from None
    if len(buf) != count * dtype.itemsize:
        raise invalid(
            f"input '{name}': raw contents hold {len(buf)} bytes but shape {list(shape)} of "
            f"{datatype} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _from_contents(name: str, datatype: str, dtype: np.dtype, shape: tuple[int, ...], count: int,
                   t: Message) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise invalid(f"input '{name}': {datatype} has no typed contents; send it in raw_input_contents")
    values = getattr(t.contents, field)
    if len(values) != count:
        raise invalid(
            f"input '{name}': {field} holds {len(values)} elements but shape {list(shape)} needs {count}"
        )
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    if datatype in _NARROW:  # travels widened: a cast alone would wrap 300 to 44 silently
        wide = np.array(values, dtype=np.int64)
        arr = wide.astype(dtype)
        if not np.array_equal(arr, wide):
            raise invalid(f"input '{name}': a value in {field} is out of range for {datatype}")
        return arr.reshape(shape)
    return np.array(values, dtype=dtype).reshape(shape)


# ---- responses ------------------------------------------------------------------------------

def _datatype_of(dtype: np.dtype) -> str:
    name = _DATATYPE_OF.get(dtype)
    if name is None:
        name = _DATATYPE_OF[dtype] = numpy_to_datatype(dtype)
    return name


def encode_infer_response(resp: InferResponse,
                          shm: dict[str, dict[str, Any]] | None = None) -> Message:
    """InferResponse -> ModelInferResponse with every output in ``raw_output_contents``.
    ``shm``: parameters of the outputs already written into shared memory (an empty raw entry each)."""
    msg = _ModelInferResponse(model_name=resp.model_name, model_version=resp.model_version, id=resp.id)
    tensors = msg.outputs
    raw = msg.raw_output_contents
    for name, arr in resp.outputs.items():
        datatype = _datatype_of(arr.dtype)
        tensor = tensors.add(name=name, datatype=datatype, shape=arr.shape)
        if shm is not None and name in shm:
            params_to_pb(shm[name], tensor.parameters)
            raw.append(b"")
        elif datatype == "BYTES":
            raw.append(encode_bytes_tensor(arr))
        elif arr.dtype.byteorder == ">":
            raw.append(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
        else:
            raw.append(arr.tobytes())
    if resp.parameters:
        params_to_pb(resp.parameters, msg.parameters)
    return msg
