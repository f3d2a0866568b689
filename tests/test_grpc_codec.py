"""gRPC codec without a server: protobuf <-> InferRequest/InferResponse, table-driven.

Requests are built with tritonclient's own helpers where it has them (raw contents, BYTES
serialization), so the codec is checked against the reference client's encoding.
"""

from __future__ import annotations

import numpy as np
import pytest
from models import random_array
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from gateway._native.bytestensor import decode_bytes_tensor, encode_bytes_tensor
from gateway.errors import Code, GatewayError
from gateway.front.grpc.codec import (
    CONTENTS_FIELD,
    decode_infer_request,
    encode_infer_response,
    params_from_pb,
    params_to_pb,
)
from gateway.pb import service as pb
from gateway.types import DATATYPE_TO_NUMPY, InferResponse

ALL_TYPES = list(DATATYPE_TO_NUMPY)


def sample(datatype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Like models.random_array, but BYTES elements are arbitrary (non-UTF-8) bytes of varied length."""
    rng = np.random.default_rng(seed)
    if datatype == "BYTES":
        n = int(np.prod(shape))
        return np.array([bytes(rng.integers(0, 256, i % 7, dtype=np.uint8)) for i in range(n)],
                        dtype=object).reshape(shape)
    return random_array(datatype, shape, rng)


def raw_of(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return serialize_byte_tensor(arr).item() if arr.size else b""
    return arr.tobytes()


def request(*tensors: tuple[str, str, np.ndarray], raw: bool = True) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="m", model_version="2", id="req-1")
    for name, datatype, arr in tensors:
        t = msg.inputs.add(name=name, datatype=datatype, shape=arr.shape)
        if raw:
            msg.raw_input_contents.append(raw_of(arr, datatype))
        else:
            getattr(t.contents, CONTENTS_FIELD[datatype]).extend(arr.ravel().tolist())
    return msg


def invalid(msg: pb.ModelInferRequest, *words: str) -> None:
    with pytest.raises(GatewayError) as info:
        decode_infer_request(msg)
    assert info.value.code is Code.INVALID_ARGUMENT
    for w in words:
        assert w in info.value.message, info.value.message


@pytest.mark.parametrize("datatype", ALL_TYPES)
@pytest.mark.parametrize("shape", [(2, 3), (1,), (0, 4), ()])
def test_raw_round_trip(datatype: str, shape: tuple[int, ...]) -> None:
    arr = sample(datatype, shape)
    req, plan = decode_infer_request(request(("X", datatype, arr)))
    got = req.inputs["X"]
    assert got.shape == shape and got.dtype == DATATYPE_TO_NUMPY[datatype]
    np.testing.assert_array_equal(got, arr)
    assert (req.model_name, req.model_version, req.id, req.outputs) == ("m", "2", "req-1", None)
    assert plan is None  # no output parameters: nothing for the encoder beyond the response


@pytest.mark.parametrize("datatype", [t for t in ALL_TYPES if t in CONTENTS_FIELD])
def test_typed_contents_round_trip(datatype: str) -> None:
    arr = sample(datatype, (3, 2))
    got = decode_infer_request(request(("X", datatype, arr), raw=False))[0].inputs["X"]
    assert got.dtype == DATATYPE_TO_NUMPY[datatype]
    np.testing.assert_array_equal(got, arr)


def test_raw_fixed_size_input_is_a_view_over_the_message_bytes() -> None:
    arr = sample("FP32", (4, 16))
    got = decode_infer_request(request(("X", "FP32", arr)))[0].inputs["X"]
    assert not got.flags.writeable and not got.flags.owndata  # np.frombuffer: no copy


def test_several_inputs_parameters_outputs_and_timeout() -> None:
    msg = request(("A", "FP32", sample("FP32", (1, 3))), ("B", "INT64", sample("INT64", (1, 2))),
                  ("C", "BYTES", sample("BYTES", (1, 1))))
    msg.parameters["flag"].bool_param = True
    msg.parameters["n"].int64_param = -5
    msg.parameters["s"].string_param = "x"
    msg.parameters["timeout"].int64_param = 5000
    o = msg.outputs.add(name="F")
    o.parameters["classification"].int64_param = 2
    msg.outputs.add(name="S")
    req, plan = decode_infer_request(msg, deadline_us=9000)
    assert list(req.inputs) == ["A", "B", "C"]
    assert req.parameters == {"flag": True, "n": -5, "s": "x", "timeout": 5000}
    assert req.outputs == ["F", "S"]
    assert plan is not None and plan.output_parameters == {"F": {"classification": 2}} and plan.shm is None
    assert req.timeout_us == 5000  # the tighter of the gRPC deadline and the timeout parameter
    assert decode_infer_request(msg, deadline_us=100)[0].timeout_us == 100
    del msg.parameters["timeout"]
    assert decode_infer_request(msg)[0].timeout_us == 0


def test_malformed_tensors_are_refused_naming_the_input() -> None:
    good = sample("FP32", (2, 2))
    msg = request(("IN", "FP32", good))
    msg.raw_input_contents[0] = msg.raw_input_contents[0][:-1]
    invalid(msg, "'IN'", "15 bytes", "needs 16")

    msg = request(("IN", "FP32", good), ("IN2", "FP32", good))
    del msg.raw_input_contents[1]
    invalid(msg, "2 inputs", "1 raw_input_contents")

    msg = request(("IN", "FP32", good))
    msg.inputs[0].contents.fp32_contents.extend([1.0] * 4)
    invalid(msg, "'IN'", "both")

    msg = request(("IN", "FP32", good))
    msg.inputs[0].datatype = "FP8"
    invalid(msg, "'IN'", "unknown datatype 'FP8'")

    msg = request(("IN", "FP32", good))
    msg.inputs[0].shape[:] = [-1, 4]
    invalid(msg, "'IN'", "negative")

    msg = request(("IN", "FP32", sample("FP32", (2,))), raw=False)
    msg.inputs[0].datatype = "FP16"
    invalid(msg, "'IN'", "FP16 has no typed contents", "raw_input_contents")

    msg = request(("IN", "INT32", sample("INT32", (2, 2))), raw=False)
    msg.inputs[0].contents.int_contents.append(1)
    invalid(msg, "'IN'", "5 elements", "needs 4")

    msg = request(("IN", "INT8", np.zeros((1,), np.int8)), raw=False)
    msg.inputs[0].contents.int_contents[0] = 300
    invalid(msg, "'IN'", "out of range")

    msg = request(("IN", "FP32", good), ("IN", "FP32", good))
    invalid(msg, "'IN'", "more than once")

    msg = request(("IN", "FP32", np.zeros((0, 2), np.float32)))
    msg.inputs[0].shape[:] = [2, 2]  # no data at all for a non-empty shape
    del msg.raw_input_contents[:]
    invalid(msg, "'IN'", "fp32_contents holds 0")


@pytest.mark.parametrize("cut", [1, 3, 5, 9])
def test_truncated_bytes_raw_contents(cut: int) -> None:
    msg = request(("S", "BYTES", np.array([b"abcd", b"efgh"], dtype=object)))
    raw = msg.raw_input_contents[0]
    msg.raw_input_contents[0] = raw[: len(raw) - cut]
    invalid(msg, "'S'", "BYTES")


def test_bytes_with_trailing_garbage_is_refused() -> None:
    msg = request(("S", "BYTES", np.array([b"ab"], dtype=object)))
    msg.raw_input_contents[0] += b"\x00"
    invalid(msg, "'S'", "left")


@pytest.mark.parametrize("n", [0, 1, 7, 100])
def test_bytes_kernel_matches_tritonclient(n: int) -> None:
    """The codec's BYTES format is tritonclient's: cross-check the kernel against the client."""
    arr = np.array([("é" * (i % 5)).encode() + bytes([i % 256]) for i in range(n)], dtype=object)
    ref = serialize_byte_tensor(arr).item() if n else b""
    assert encode_bytes_tensor(arr) == ref
    back = decode_bytes_tensor(ref, n)
    assert list(back) == list(arr)
    if n:
        assert list(deserialize_bytes_tensor(encode_bytes_tensor(arr))) == list(arr)


def test_encode_response_raw_outputs_and_parameters() -> None:
    outs = {
        "F": np.arange(6, dtype=np.float32).reshape(2, 3),
        "B": np.array([[b"x"], [b"yz"]], dtype=object),
        "S": np.array(["é"], dtype=object),
        "BE": np.arange(3, dtype=">i4"),
        "T": np.arange(4, dtype=np.int16).reshape(2, 2).T,  # not C-contiguous
    }
    resp = InferResponse("m", "3", outs, id="r", parameters={"b": True, "i": 7, "f": 0.5, "s": "v"})
    msg = encode_infer_response(resp)
    assert (msg.model_name, msg.model_version, msg.id) == ("m", "3", "r")
    assert [(o.name, o.datatype, list(o.shape)) for o in msg.outputs] == [
        ("F", "FP32", [2, 3]), ("B", "BYTES", [2, 1]), ("S", "BYTES", [1]), ("BE", "INT32", [3]),
        ("T", "INT16", [2, 2])]
    raw = msg.raw_output_contents
    np.testing.assert_array_equal(np.frombuffer(raw[0], np.float32).reshape(2, 3), outs["F"])
    assert list(deserialize_bytes_tensor(raw[1])) == [b"x", b"yz"]
    assert list(deserialize_bytes_tensor(raw[2])) == ["é".encode()]
    np.testing.assert_array_equal(np.frombuffer(raw[3], "<i4"), [0, 1, 2])
    np.testing.assert_array_equal(np.frombuffer(raw[4], "<i2").reshape(2, 2), outs["T"])
    assert params_from_pb(msg.parameters) == {"b": True, "i": 7, "f": 0.5, "s": "v"}


def test_parameter_kinds() -> None:
    m = pb.ModelInferRequest().parameters
    params_to_pb({"t": True, "big": 1 << 63, "neg": -1, "d": 1.5, "s": "x", "o": [1]}, m)
    assert {k: v.WhichOneof("parameter_choice") for k, v in m.items()} == {
        "t": "bool_param", "big": "uint64_param", "neg": "int64_param", "d": "double_param",
        "s": "string_param", "o": "string_param"}
    assert params_from_pb(m) == {"t": True, "big": 1 << 63, "neg": -1, "d": 1.5, "s": "x", "o": "[1]"}
    assert params_from_pb(pb.ModelInferRequest().parameters) is None


def test_bytes_input_in_shared_memory_with_a_count_past_ssize_is_invalid(tmp_path) -> None:
    """Found by the fuzz harness (fuzz/corpus/grpc_request/fuzz-bytes-shm-count-past-ssize): a BYTES
    input read from shared memory, whose shape multiplies past 2**63, reached the BYTES kernel
    and raised OverflowError (a 500) instead of INVALID_ARGUMENT."""
    import os

    from gateway.shm import SharedMemoryRegistry

    name = f"gateway-test-{os.getpid()}"
    with open(f"/dev/shm/{name}", "wb") as f:
        f.write(bytes(64))
    shm = SharedMemoryRegistry()
    try:
        shm.register("r0", "/" + name, 0, 64)
    finally:
        os.unlink(f"/dev/shm/{name}")
    msg = pb.ModelInferRequest(model_name="m")
    t = msg.inputs.add(name="IN", datatype="BYTES", shape=[2**62, 4])
    t.parameters["shared_memory_region"].string_param = "r0"
    t.parameters["shared_memory_byte_size"].int64_param = 8
    with pytest.raises(GatewayError) as info:
        decode_infer_request(msg, shm=shm)
    assert info.value.code is Code.INVALID_ARGUMENT and "'IN'" in info.value.message
    t.shape[:] = [2]  # the same region and size with a shape that fits: two empty elements
    assert decode_infer_request(msg, shm=shm)[0].inputs["IN"].tolist() == [b"", b""]
    shm.close()
