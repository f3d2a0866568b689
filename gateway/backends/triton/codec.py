"""Packed batches to ``ModelInferRequest`` and back, and the remote model's signature.

Tensors travel in ``raw_input_contents`` / ``raw_output_contents``: one ``bytes`` per tensor (numpy's
buffer, or the length-prefixed form for BYTES), so no Python work per element either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gateway._native.bytestensor import decode_bytes_tensor, encode_bytes_tensor
from gateway.errors import Code, GatewayError
from gateway.pb import Message
from gateway.pb import service as pb
from gateway.types import DATATYPE_TO_NUMPY, TensorSpec, numpy_to_datatype


def encode_request(model: str, version: str, feeds: dict[str, np.ndarray],
                   outputs: Sequence[str] = ()) -> Message:
    msg = pb.ModelInferRequest(model_name=model, model_version=version)
    raw = msg.raw_input_contents
    for name, arr in feeds.items():
        datatype = numpy_to_datatype(arr.dtype)
        msg.inputs.add(name=name, datatype=datatype, shape=arr.shape)
        if datatype == "BYTES":
            raw.append(encode_bytes_tensor(arr))
        else:
            if arr.dtype.byteorder == ">":
                arr = arr.astype(arr.dtype.newbyteorder("<"))
            raw.append(np.ascontiguousarray(arr).tobytes())
    for name in outputs:
        msg.outputs.add(name=name)
    return msg


def decode_response(msg: Message, where: str) -> dict[str, np.ndarray]:
    """Outputs of a ``ModelInferResponse`` (raw contents, as Triton sends them by default)."""
    out: dict[str, np.ndarray] = {}
    raw = msg.raw_output_contents
    if len(raw) != len(msg.outputs):
        raise GatewayError(Code.INTERNAL, f"{where} answered {len(msg.outputs)} outputs with {len(raw)} "
                                          "raw contents; expected one each")
    for t, buf in zip(msg.outputs, raw, strict=True):
        shape = tuple(t.shape)
        count = int(np.prod(shape)) if shape else 1
        dtype = DATATYPE_TO_NUMPY.get(t.datatype)
        if dtype is None:
            raise GatewayError(Code.INTERNAL, f"{where} answered output '{t.name}' of unknown datatype {t.datatype}")
        try:
            if t.datatype == "BYTES":
                arr = decode_bytes_tensor(buf, count).reshape(shape)
            else:
                arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
        except ValueError as exc:
            raise GatewayError(Code.INTERNAL, f"{where} answered output '{t.name}' whose {len(buf)} bytes do not "
                                              f"fit shape {list(shape)} of {t.datatype}: {exc}") from None
        out[t.name] = arr
    return out


def specs(tensors: Sequence[Message]) -> list[TensorSpec]:
    """TensorSpecs from ModelMetadata's tensors (-1 marks a variable dimension, the batch one too)."""
    return [TensorSpec(t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in tensors]
