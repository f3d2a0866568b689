"""KServe v2 REST bodies <-> core types: JSON tensors and the binary tensor extension.

Decode keeps binary tensors as zero-copy numpy views over the request body; JSON number
arrays go straight into typed buffers through the native ``list_to_array`` (no numpy type
discovery). Encode is the native ``inferenc`` (numbers by ``std::to_chars``, the body in one
buffer); the general path (shared memory) embeds its ``json_array`` text, so both agree.
Every malformed body raises ``GatewayError(INVALID_ARGUMENT)`` naming what is wrong.

Shared memory (``gateway.shm``): an input or requested output whose ``parameters`` name a
``shared_memory_region`` is read from / written to that region; its parameters are looked at
only on the general path (inputs with parameters never take the native fast path).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from gateway._native.bytestensor import decode_bytes_tensor, encode_bytes_tensor
from gateway._native.inferenc import encode_body, json_array
from gateway._native.inferjson import counts as decode_native_counts
from gateway._native.inferjson import decode_fast
from gateway._native.jsonnum import json_tensor, list_to_array
from gateway.errors import invalid
from gateway.front.plan import EncodePlan
from gateway.pipeline.validate import MAX_NEST_DEPTH, check_shape
from gateway.shm import REGION as SHM_REGION
from gateway.shm import OutputTarget, SharedMemoryRegistry
from gateway.types import DATATYPE_TO_NUMPY, InferRequest, InferResponse, numpy_to_datatype

_loads = orjson.loads
_dumps = orjson.dumps
_NUMPY_OPT = orjson.OPT_SERIALIZE_NUMPY
_BINARY_ALL = EncodePlan(frozenset(["*"]))  # parameters.binary_data_output without an outputs list


def decode_infer(body: bytes, header_length: int, model: str, version: str,
                 shm: SharedMemoryRegistry | None = None) -> tuple[InferRequest, EncodePlan | None]:
    """Parse an infer request body. ``header_length`` < 0: all JSON; else the binary extension.
    ``shm``: the registered shared-memory regions (None: none served). Returns the request and how
    to encode its answer (None: all outputs as JSON).

    The common bodies are parsed in C (``inferjson.decode_fast``, counted in ``decode_counts``);
    the rest, and every malformed body, by ``decode_general``, which names what is wrong."""
    fast = decode_fast(body, header_length, model, version)
    if fast is not None:
        return fast[0], plan_for(fast[1])
    return decode_general(body, header_length, model, version, shm)


def plan_for(binary: frozenset[str] | None) -> EncodePlan | None:
    """The encode plan of a request the native decoder took (``binary``: its binary outputs), shared
    by every request that asks for the same ones."""
    if binary is None:
        return None
    plan = _PLANS.get(binary)
    if plan is None:
        if len(_PLANS) > 4096:
            _PLANS.clear()
        plan = _PLANS[binary] = EncodePlan(binary)
    return plan


_PLANS: dict[frozenset[str], EncodePlan] = {_BINARY_ALL.binary: _BINARY_ALL}  # type: ignore[dict-item]


def decode_counts() -> tuple[int, int]:
    """(bodies the native decoder took, bodies it handed to ``decode_general``) in this process."""
    return decode_native_counts()  # type: ignore[no-any-return]


def decode_general(body: bytes, header_length: int, model: str, version: str,
                   shm: SharedMemoryRegistry | None = None) -> tuple[InferRequest, EncodePlan | None]:
    """``decode_infer`` for any body: JSON through orjson, every check interpreted (the
    reference the native decoder is tested against)."""
    if header_length >= 0:
        if header_length > len(body):
            raise invalid(f"Inference-Header-Content-Length {header_length} exceeds the body ({len(body)} bytes)")
        head = body[:header_length]
    else:
        head = body
        header_length = len(body)
    try:
        obj = _loads(head)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"malformed JSON in request body: {exc}") from None
    if not isinstance(obj, dict):
        raise invalid("request body must be a JSON object")
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise invalid("request must have a non-empty 'inputs' list")
    offset = header_length
    tensors: dict[str, np.ndarray] = {}
    for i, inp in enumerate(inputs):
        if type(inp) is not dict:
            raise invalid(f"inputs[{i}] must be an object")
        try:
            fast = json_tensor(inp)  # numeric JSON tensors in one native call
        except (ValueError, TypeError, OverflowError) as exc:
            raise invalid(f"input '{inp.get('name')}': {exc}") from None
        if fast is not None:
            name, arr = fast
        else:
            arr, offset = _decode_input(inp, i, body, offset, shm)
            name = inp["name"]
        if name in tensors:
            raise invalid(f"input '{name}' appears twice")
        tensors[name] = arr
    if offset != len(body):
        raise invalid(f"request body has {len(body) - offset} bytes of binary data no input claims")
    req = InferRequest(model, version, tensors)
    rid = obj.get("id")
    if rid is not None:
        if not isinstance(rid, str):
            raise invalid("'id' must be a string")
        req.id = rid
    params = obj.get("parameters")
    binary_all = False
    if params is not None:
        if not isinstance(params, dict):
            raise invalid("'parameters' must be an object")
        req.parameters = params
        binary_all = params.get("binary_data_output") is True
        t = params.get("timeout")
        if t is not None:
            if not isinstance(t, int) or isinstance(t, bool) or t < 0:
                raise invalid(f"parameter 'timeout' must be a non-negative integer (microseconds), got {t!r}")
            req.timeout_us = t
    outputs = obj.get("outputs")
    if outputs is not None:
        req.outputs, plan = _decode_outputs(outputs, binary_all, shm)
        return req, plan
    return req, _BINARY_ALL if binary_all else None


def _decode_input(inp: dict[str, Any], i: int, body: bytes, offset: int,
                  shm: SharedMemoryRegistry | None) -> tuple[np.ndarray, int]:
    name = inp.get("name")
    if not isinstance(name, str):
        raise invalid(f"inputs[{i}] needs a string 'name'")
    datatype = inp.get("datatype")
    dtype = DATATYPE_TO_NUMPY.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise invalid(f"input '{name}' has unknown datatype {datatype!r}")
    shape = inp.get("shape")
    count = check_shape(name, shape)
    params = inp.get("parameters")
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise invalid(f"input '{name}': binary_data_size must be a non-negative integer")
        if len(params) > 1 and SHM_REGION in params:  # type: ignore[arg-type,operator]  # a dict here
            raise invalid(f"input '{name}' has both binary data and a shared memory region")
        if "data" in inp:
            raise invalid(f"input '{name}' has both 'data' and parameters.binary_data_size; send one")
        if offset + size > len(body):
            raise invalid(f"input '{name}': binary_data_size {size} runs past the end of the body")
        if datatype == "BYTES":
            try:
                arr = decode_bytes_tensor(memoryview(body)[offset:offset + size], count)
            except ValueError as exc:
                raise invalid(f"input '{name}': {exc}") from None
        else:
            if size != count * dtype.itemsize:
                raise invalid(f"input '{name}': binary_data_size {size} does not match shape {shape} "
                              f"of {datatype} ({count * dtype.itemsize} bytes)")
            arr = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
        return arr.reshape(shape), offset + size
    if "data" not in inp:
        if isinstance(params, dict) and SHM_REGION in params:
            if shm is None:
                raise invalid(f"input '{name}': shared memory is not served here")
            return shm.read_input(name, str(datatype), dtype, shape, count, params), offset  # type: ignore[arg-type]  # shape checked above
        raise invalid(f"input '{name}' has neither 'data' nor parameters.binary_data_size "
                      "nor parameters.shared_memory_region")
    if isinstance(params, dict) and SHM_REGION in params:
        raise invalid(f"input '{name}' has both 'data' and a shared memory region")
    data = inp["data"]
    if datatype == "BYTES":
        arr = _bytes_from_json(name, data, count)
    else:
        try:
            arr = list_to_array(data, datatype, count)
        except (ValueError, TypeError, OverflowError) as exc:
            raise invalid(f"input '{name}': {exc}") from None
    return arr.reshape(shape), offset


def _bytes_from_json(name: str, data: Any, count: int) -> np.ndarray:
    flat = [x.encode("utf-8") for x in _regular_leaves(name, data)]
    if len(flat) != count:
        raise invalid(f"input '{name}' has {len(flat)} elements but its shape implies {count}")
    arr = np.empty(count, dtype=object)
    arr[:] = flat
    return arr


def _regular_leaves(name: str, data: Any) -> list[str]:
    """The strings of BYTES ``data``: flat, or nested as a regular array (every list at one depth
    as long as the others, strings only at the deepest), at most ``MAX_NEST_DEPTH`` deep. Walked
    level by level, not recursively: a deep nest is the client's error, not a RecursionError.
    A bare string is not an array, whatever the shape (as for numbers: ``list_to_array``)."""
    if type(data) is not list:
        raise invalid(f"input '{name}': data must be a JSON array, got {type(data).__name__}")
    dims: list[int] = []  # the shape the first element at each depth implies
    x = data
    while type(x) is list:
        if len(dims) == MAX_NEST_DEPTH:
            raise invalid(f"input '{name}': data nests lists deeper than {MAX_NEST_DEPTH} levels")
        dims.append(len(x))
        if not x:
            break
        x = x[0]
    level: list[Any] = [data]
    for depth, n in enumerate(dims):
        below: list[Any] = []
        for lst in level:
            if type(lst) is not list or len(lst) != n:
                raise invalid(f"input '{name}': data nests unevenly (at depth {depth} a "
                              f"{'list of ' + str(len(lst)) if type(lst) is list else type(lst).__name__} "
                              f"where the first element implies a list of {n})")
            below += lst
        level = below
    for x in level:
        if type(x) is not str:
            if type(x) is list:
                raise invalid(f"input '{name}': data nests unevenly (a list where a string is expected)")
            raise invalid(f"input '{name}': BYTES data must be strings, got {type(x).__name__}")
    return level


def _decode_outputs(outputs: Any, binary_all: bool,
                    shm: SharedMemoryRegistry | None) -> tuple[list[str], EncodePlan | None]:
    if not isinstance(outputs, list):
        raise invalid("'outputs' must be a list")
    names: list[str] = []
    binary: set[str] = set()
    targets: dict[str, OutputTarget] | None = None
    for j, out in enumerate(outputs):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise invalid(f"outputs[{j}] needs a string 'name'")
        name = out["name"]
        if name in names:
            raise invalid(f"output '{name}' is requested twice")
        names.append(name)
        p = out.get("parameters")
        if isinstance(p, dict):
            if p.get("classification"):
                raise invalid(f"output '{name}': the classification extension is not supported")
            if SHM_REGION in p:  # written into the region, never sent
                if shm is None:
                    raise invalid(f"output '{name}': shared memory is not served here")
                if targets is None:
                    targets = {}
                targets[name] = shm.output_target(name, p)
                continue
            flag = p.get("binary_data")
            if flag is True or (flag is None and binary_all):
                binary.add(name)
        elif binary_all:
            binary.add(name)
    if binary or targets is not None:
        return names, EncodePlan(frozenset(binary) if binary else None, targets)
    return names, None


def encode_infer(resp: InferResponse, binary: frozenset[str] | None,
                 shm: dict[str, dict[str, Any]] | None = None) -> tuple[bytes, int]:
    """Serialise a response; returns (body, json header length or -1 when all JSON).
    ``shm``: parameters of the outputs already written into shared memory (sent without data).
    Without shared memory the native ``encode_body`` writes the body in one buffer; the general
    path writes the same bytes (its numbers are ``json_array``'s)."""
    if shm is None:
        fast = encode_body(resp, binary)
        if fast is not None:
            return fast  # type: ignore[no-any-return]
    return encode_general(resp, binary, shm)


def encode_general(resp: InferResponse, binary: frozenset[str] | None,
                   shm: dict[str, dict[str, Any]] | None = None) -> tuple[bytes, int]:
    """``encode_infer`` through dicts and orjson: shared-memory outputs, and the reference the
    native encoder is tested against."""
    outputs = []
    chunks: list[bytes] = []
    every = binary is not None and "*" in binary
    for name, arr in resp.outputs.items():
        datatype = numpy_to_datatype(arr.dtype)
        if shm is not None and name in shm:
            outputs.append({"name": name, "datatype": datatype, "shape": arr.shape, "parameters": shm[name]})
        elif binary is not None and (every or name in binary):
            if datatype == "BYTES":
                raw = encode_bytes_tensor(arr)
            else:  # the protocol's byte order, whatever the array's
                raw = np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")).tobytes()
            chunks.append(raw)
            outputs.append({"name": name, "datatype": datatype, "shape": arr.shape,
                            "parameters": {"binary_data_size": len(raw)}})
        elif datatype == "BYTES":
            outputs.append({"name": name, "datatype": datatype, "shape": arr.shape,
                            "data": [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
                                     for x in arr.reshape(-1)]})
        else:
            outputs.append({"name": name, "datatype": datatype, "shape": arr.shape,
                            "data": orjson.Fragment(json_array(arr))})
    doc: dict[str, Any] = {"model_name": resp.model_name, "model_version": resp.model_version}
    if resp.id:
        doc["id"] = resp.id
    if resp.parameters:
        doc["parameters"] = resp.parameters
    doc["outputs"] = outputs
    head = _dumps(doc, option=_NUMPY_OPT)
    if not chunks:
        return head, -1
    return b"".join([head, *chunks]), len(head)


def dumps(obj: Any) -> bytes:
    return _dumps(obj, option=_NUMPY_OPT)
