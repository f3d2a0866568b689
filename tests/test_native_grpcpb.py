"""The native gRPC front's protobuf codec (``_native/grpcpb.pyx``) against upb and the codec.

``decode_infer`` must give exactly the ``InferRequest`` that protobuf's parser plus
``front.grpc.codec.decode_infer_request`` give, or None (the general path then answers, errors
included); it must take every common message. ``encode_infer`` must write a message that parses to
what ``encode_infer_response`` builds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway._native.grpcpb import decode_infer, encode_infer
from gateway.errors import GatewayError
from gateway.front.grpc.codec import decode_infer_request, encode_infer_response
from gateway.pb import service as pb
from gateway.types import DATATYPE_TO_NUMPY, InferRequest, InferResponse

NUMERIC = [k for k in DATATYPE_TO_NUMPY if k != "BYTES"]
_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)


@st.composite
def messages(draw: Any) -> tuple[bytes, bool]:
    """A serialized ModelInferRequest, and whether it is one the native path must take."""
    common = True
    req = pb.ModelInferRequest(model_name=draw(_names), model_version=draw(st.sampled_from(["", "1", "2"])),
                               id=draw(_names))
    n = draw(st.integers(1, 3))
    typed = draw(st.booleans()) and draw(st.booleans())
    for i in range(n):
        dt = draw(st.sampled_from(NUMERIC + ["BYTES", "NOPE"]))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        t = req.inputs.add(name=f"in{i}" if draw(st.integers(0, 20)) != 0 else "dup", datatype=dt, shape=shape)
        count = int(np.prod(shape)) if shape else 1
        if dt in ("BYTES", "NOPE"):
            common = False
            req.raw_input_contents.append(b"\0\0\0\0" * count if dt == "BYTES" else b"x" * count)
            continue
        arr = np.asarray(draw(st.lists(st.integers(0, 1), min_size=count, max_size=count)),
                         dtype=DATATYPE_TO_NUMPY[dt]).reshape(shape)
        if typed and dt in ("FP32", "INT32", "INT64", "FP64"):
            field = {"FP32": "fp32_contents", "INT32": "int_contents", "INT64": "int64_contents",
                     "FP64": "fp64_contents"}[dt]
            getattr(t.contents, field).extend(arr.ravel().tolist())
            common = False
        else:
            raw = arr.tobytes()
            if draw(st.integers(0, 15)) == 0:  # a wrong size
                raw += b"\0"
                common = False
            req.raw_input_contents.append(raw)
        if draw(st.integers(0, 10)) == 0:
            t.parameters["shared_memory_region"].string_param = "r"
            common = False
    if typed:
        del req.raw_input_contents[:]
    for name in draw(st.lists(st.sampled_from(["o1", "o2"]), max_size=2)):
        o = req.outputs.add(name=name)
        if draw(st.integers(0, 5)) == 0:
            o.parameters["binary_data"].bool_param = True
            common = False
    if draw(st.integers(0, 5)) == 0:
        req.parameters["timeout"].int64_param = 5
        common = False
    if len({t.name for t in req.inputs}) != len(req.inputs):
        common = False
    if not typed and len(req.raw_input_contents) != len(req.inputs):
        common = False
    return req.SerializeToString(), common and not typed


def general(msg: bytes, timeout_us: int) -> InferRequest | None:
    try:
        return decode_infer_request(pb.ModelInferRequest.FromString(msg), timeout_us)[0]
    except GatewayError:
        return None
    except Exception:  # protobuf's DecodeError
        return None


def same(a: InferRequest, b: InferRequest) -> None:
    assert (a.model_name, a.model_version, a.id, a.outputs, a.parameters, a.timeout_us, a.entity) == \
        (b.model_name, b.model_version, b.id, b.outputs, b.parameters, b.timeout_us, b.entity)
    assert list(a.inputs) == list(b.inputs)
    for k in a.inputs:
        x, y = a.inputs[k], b.inputs[k]
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y, equal_nan=True)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=messages(), timeout=st.sampled_from([0, 7, 10**9]))
def test_decode_equals_upb_and_the_codec_and_takes_every_common_message(m: tuple[bytes, bool], timeout: int) -> None:
    msg, common = m
    fast = decode_infer(msg, timeout)
    ref = general(msg, timeout)
    if fast is not None:
        assert ref is not None, "the native path took a message the general one refuses"
        same(fast, ref)
    if common:
        assert fast is not None and ref is not None


@settings(max_examples=400, deadline=None)
@given(m=messages(), cut=st.integers(0, 400), flip=st.integers(0, 400), byte=st.integers(0, 255))
def test_damaged_messages_are_never_misread(m: tuple[bytes, bool], cut: int, flip: int, byte: int) -> None:
    """Truncated or with one byte changed: None, or what upb and the codec make of it."""
    msg = bytearray(m[0][:max(0, len(m[0]) - cut)] if cut % 2 else m[0])
    if msg and flip % 3 == 0:
        msg[flip % len(msg)] = byte
    fast = decode_infer(bytes(msg), 0)
    if fast is not None:
        ref = general(bytes(msg), 0)
        assert ref is not None
        same(fast, ref)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64))
def test_random_bytes(raw: bytes) -> None:
    fast = decode_infer(raw, 0)
    if fast is not None:
        ref = general(raw, 0)
        assert ref is not None
        same(fast, ref)


@settings(max_examples=300, deadline=None)
@given(outs=st.dictionaries(_names, st.tuples(st.sampled_from(NUMERIC),
                                               st.lists(st.integers(0, 3), max_size=3)), max_size=3),
       model=_names, version=st.sampled_from(["", "1"]), rid=_names)
def test_encode_parses_to_the_codec_s_message(outs: dict[str, tuple[str, list[int]]], model: str, version: str,
                                              rid: str) -> None:
    arrays = {k: np.arange(int(np.prod(s)) if s else 1).astype(DATATYPE_TO_NUMPY[dt]).reshape(s)
              for k, (dt, s) in outs.items()}
    data = encode_infer(model, version, rid, arrays)
    assert data is not None
    assert pb.ModelInferResponse.FromString(data) == encode_infer_response(InferResponse(model, version, arrays, rid))


def test_encode_leaves_what_it_does_not_write_to_the_codec() -> None:
    assert encode_infer("m", "1", "", {"o": np.array([b"x"], dtype=object)}) is None  # BYTES
    assert encode_infer("m", "1", "", {"o": np.arange(6, dtype=np.float32).reshape(2, 3).T}) is None  # strided
    assert encode_infer("m", "1", "", {"o": np.arange(3, dtype=">f4")}) is None  # big-endian


@pytest.mark.parametrize("n", [1, 64, 65])
def test_many_inputs(n: int) -> None:
    req = pb.ModelInferRequest(model_name="m")
    for i in range(n):
        req.inputs.add(name=f"i{i}", datatype="FP32", shape=[1])
        req.raw_input_contents.append(np.float32(i).tobytes())
    fast = decode_infer(req.SerializeToString(), 0)
    if n <= 64:
        assert fast is not None
        same(fast, general(req.SerializeToString(), 0))  # type: ignore[arg-type]
    else:
        assert fast is None  # past the path's fixed tables: the general one


def test_unpacked_shape_and_unknown_fields() -> None:
    """A shape sent unpacked (legal protobuf: parsers take both forms) and fields this schema does
    not have (kept by upb, ignored by the codec) read as upb reads them."""
    def ld(key: int, data: bytes) -> bytes:
        return bytes([key, len(data)]) + data
    tensor = ld(0x0A, b"x") + ld(0x12, b"FP32") + bytes([0x18, 2, 0x18, 3]) + bytes([0x78, 1])  # field 15: unknown
    raw = np.arange(6, dtype=np.float32).tobytes()
    msg = ld(0x0A, b"m") + ld(0x2A, tensor) + ld(0x3A, raw) + bytes([0x80, 0x01, 5])  # field 16: unknown
    fast = decode_infer(msg, 0)
    ref = general(msg, 0)
    assert fast is not None and ref is not None and fast.inputs["x"].shape == (2, 3)
    same(fast, ref)
