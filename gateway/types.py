"""Protocol-neutral vocabulary of the request path: datatypes, tensors, requests, responses.

Front ends decode wire formats into these and encode them back; everything below decode
(routing, batching, backends) sees only these types. Tensors are numpy arrays; BYTES tensors
are numpy object arrays of ``bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# KServe v2 datatype name -> numpy dtype (little-endian, as the binary extension requires).
DATATYPE_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

_NUMPY_TO_DATATYPE: dict[str, str] = {
    dt.str if dt.kind != "O" else "O": name for name, dt in DATATYPE_TO_NUMPY.items()
}
_NUMPY_TO_DATATYPE["|b1"] = "BOOL"
_NUMPY_TO_DATATYPE["|i1"] = "INT8"
_NUMPY_TO_DATATYPE["|u1"] = "UINT8"

# ONNX TensorProto element type -> KServe datatype (the subset onnxruntime serves).
ONNX_TO_DATATYPE: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


_DTYPE_CACHE: dict[np.dtype, str] = {}


def numpy_to_datatype(dtype: np.dtype) -> str:
    """KServe datatype name of a numpy dtype; object and bytes/str arrays are BYTES."""
    name = _DTYPE_CACHE.get(dtype)
    if name is None:
        name = _DTYPE_CACHE[dtype] = _numpy_to_datatype(dtype)
    return name


def _numpy_to_datatype(dtype: np.dtype) -> str:
    if dtype.kind in "OSU":
        return "BYTES"
    name = _NUMPY_TO_DATATYPE.get(dtype.newbyteorder("<").str if dtype.byteorder == ">" else dtype.str)
    if name is None:
        raise ValueError(f"unsupported numpy dtype {dtype}")
    return name


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output as the model declares it. -1 marks a variable dimension.

    For batchable models ``shape`` excludes nothing: the first dimension is the batch (-1).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return DATATYPE_TO_NUMPY[self.datatype]


@dataclass(slots=True)
class InferRequest:
    """One inference call after decode.

    ``inputs`` maps input name to an array whose dtype matches the declared datatype.
    ``outputs`` lists the requested output names (None: all).
    ``timeout_us`` is the client's deadline budget (0: the model default).
    ``entity``: the precomputed route's key as a header / metadata value, set by the router for
    models that have one (``gateway.pipeline.precomputed``).
    How the answer goes on the wire (binary extension, shared memory) is the fronts' own
    business: their decoders return it beside the request (``gateway.front.plan``).
    """

    model_name: str
    model_version: str = ""
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: list[str] | None = None
    id: str = ""
    parameters: dict[str, Any] | None = None
    timeout_us: int = 0
    entity: Any = None


@dataclass(slots=True)
class InferResponse:
    """Result of one inference call: outputs in the order the model (or the request) named them."""

    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str = ""
    parameters: dict[str, Any] | None = None
