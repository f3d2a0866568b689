"""End to end over real sockets with the official tritonclient.grpc (sync and aio).

Outputs are compared with onnxruntime run directly on the same .onnx file. Typed ``contents``
(which tritonclient never sends) go through Triton's own generated stubs.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from models import random_array, reference
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.front.grpc.codec import CONTENTS_FIELD
from gateway.testing import ServerThread
from gateway.types import DATATYPE_TO_NUMPY

ALL_TYPES = list(DATATYPE_TO_NUMPY)


def make_input(name: str, arr: np.ndarray, datatype: str) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr)
    return inp


def code_of(exc: InferenceServerException) -> str:
    return str(exc.status())


def test_health_metadata_config_statistics(grpc_server: ServerThread) -> None:
    c = grpcclient.InferenceServerClient(grpc_server.grpc_url)
    assert c.is_server_live() and c.is_server_ready()
    assert "statistics" in c.get_server_metadata().extensions
    assert c.is_model_ready("mlp") and c.is_model_ready("mlp", "1") and not c.is_model_ready("nope")
    md = c.get_model_metadata("mlp")
    assert (md.name, list(md.versions)) == ("mlp", ["1", "2"])
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [("INPUT0", "FP32", [-1, 64])]
    cfg = c.get_model_config("mlp").config
    assert cfg.max_batch_size > 0 and list(cfg.input[0].dims) == [64]
    assert cfg.WhichOneof("scheduling_choice") == "dynamic_batching"
    stats = c.get_inference_statistics("mlp").model_stats
    assert {s.version for s in stats} == {"1", "2"}
    index = {(m.name, m.version): m.state for m in c.get_model_repository_index().models}
    assert index[("mlp", "2")] == "READY"
    with pytest.raises(InferenceServerException) as info:
        c.get_model_metadata("nope")
    assert code_of(info.value) == "StatusCode.NOT_FOUND" and "nope" in info.value.message()


def test_mlp_matches_onnxruntime(grpc_server: ServerThread, repo: Path) -> None:
    c = grpcclient.InferenceServerClient(grpc_server.grpc_url)
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    for version in ("1", "2"):
        r = c.infer("mlp", [make_input("INPUT0", x, "FP32")], model_version=version, request_id=f"v{version}")
        assert r.get_response().id == f"v{version}" and r.get_response().model_version == version
        np.testing.assert_allclose(r.as_numpy("OUTPUT0"), reference(repo, "mlp", version, {"INPUT0": x})["OUTPUT0"],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("datatype", ALL_TYPES)
def test_every_datatype_round_trips(grpc_server: ServerThread, datatype: str) -> None:
    c = grpcclient.InferenceServerClient(grpc_server.grpc_url)
    x = random_array(datatype, (3, 4), np.random.default_rng(1))
    r = c.infer(f"identity_{datatype.lower()}", [make_input("INPUT0", x, datatype)])
    out = r.as_numpy("OUTPUT0")
    assert r.get_output("OUTPUT0").datatype == datatype
    if datatype == "BYTES":
        assert out.tolist() == x.tolist()
    else:
        assert out.dtype == x.dtype
        np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("datatype", [t for t in ALL_TYPES if t in CONTENTS_FIELD])
def test_typed_contents_with_triton_stubs(grpc_server: ServerThread, datatype: str) -> None:
    x = random_array(datatype, (2, 4), np.random.default_rng(2))
    req = service_pb2.ModelInferRequest(model_name=f"identity_{datatype.lower()}", id="typed")
    t = req.inputs.add(name="INPUT0", datatype=datatype, shape=[2, 4])
    getattr(t.contents, CONTENTS_FIELD[datatype]).extend(x.ravel().tolist())
    with grpc.insecure_channel(grpc_server.grpc_url) as ch:
        resp = service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=10)
    assert resp.id == "typed" and list(resp.outputs[0].shape) == [2, 4]
    result = grpcclient.InferResult(resp)
    got = result.as_numpy("OUTPUT0")
    assert got.tolist() == x.tolist()


def test_multiple_inputs_requested_outputs_parameters(grpc_server: ServerThread, repo: Path) -> None:
    c = grpcclient.InferenceServerClient(grpc_server.grpc_url)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 3)).astype(np.float32)
    b = rng.integers(-100, 100, (2, 2)).astype(np.int64)
    s = np.array([[b"x"], ["ü".encode()]], dtype=object)
    inputs = [make_input("A", a, "FP32"), make_input("B", b, "INT64"), make_input("C", s, "BYTES")]
    ref = reference(repo, "multi", "1", {"A": a, "B": b, "C": np.vectorize(bytes.decode, otypes=[object])(s)})
    r = c.infer("multi", inputs, request_id="m-1", parameters={"tag": "abc", "n": 3, "on": True})
    assert r.get_response().id == "m-1"
    np.testing.assert_allclose(r.as_numpy("F"), ref["F"])
    np.testing.assert_array_equal(r.as_numpy("N"), ref["N"])
    assert r.as_numpy("S").tolist() == s.tolist()
    only = c.infer("multi", inputs, outputs=[grpcclient.InferRequestedOutput("N")])
    assert [o.name for o in only.get_response().outputs] == ["N"]
    np.testing.assert_array_equal(only.as_numpy("N"), ref["N"])


def test_errors_map_to_status_codes(grpc_server: ServerThread) -> None:
    c = grpcclient.InferenceServerClient(grpc_server.grpc_url)
    x = np.zeros((1, 64), np.float32)
    cases = [
        (lambda: c.infer("nope", [make_input("INPUT0", x, "FP32")]), "NOT_FOUND", "nope"),
        (lambda: c.infer("mlp", [make_input("INPUT0", np.zeros((1, 3), np.float32), "FP32")]),
         "INVALID_ARGUMENT", "INPUT0"),
        (lambda: c.infer("mlp", [make_input("WRONG", x, "FP32")]), "INVALID_ARGUMENT", "INPUT0"),
        (lambda: c.get_trace_settings(), "UNIMPLEMENTED", "trac"),
        (lambda: c.get_log_settings(), "UNIMPLEMENTED", "log"),
    ]
    for call, status, word in cases:
        with pytest.raises(InferenceServerException) as info:
            call()
        assert code_of(info.value) == f"StatusCode.{status}", info.value
        assert word in info.value.message(), info.value.message()


def test_raw_size_mismatch_is_invalid_argument_naming_the_input(grpc_server: ServerThread) -> None:
    req = service_pb2.ModelInferRequest(model_name="mlp")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 64])
    req.raw_input_contents.append(b"\x00" * 255)
    with grpc.insecure_channel(grpc_server.grpc_url) as ch, pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "'INPUT0'" in info.value.details() and "255" in info.value.details()


@pytest.mark.asyncio
async def test_aio_client(grpc_server: ServerThread, repo: Path) -> None:
    import asyncio

    async with aioclient.InferenceServerClient(grpc_server.grpc_url) as c:
        assert await c.is_server_live() and await c.is_model_ready("mlp")
        assert (await c.get_model_metadata("mlp")).name == "mlp"
        xs = [np.random.default_rng(i).standard_normal((1 + i % 3, 64)).astype(np.float32) for i in range(20)]
        results = await asyncio.gather(*(
            c.infer("mlp", [make_input("INPUT0", x, "FP32")], model_version="1", request_id=str(i))
            for i, x in enumerate(xs)))
        for i, (x, r) in enumerate(zip(xs, results, strict=True)):
            assert r.get_response().id == str(i)
            np.testing.assert_allclose(r.as_numpy("OUTPUT0"), reference(repo, "mlp", "1", {"INPUT0": x})["OUTPUT0"],
                                       rtol=1e-5, atol=1e-5)
        with pytest.raises(InferenceServerException) as info:
            await c.infer("nope", [make_input("INPUT0", xs[0], "FP32")])
        assert code_of(info.value) == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize("shape,datatype,raw", [
    ([0, 1 << 62, 1 << 62], "FP32", [b""]),   # empty, but no array can have the other dims
    ([0, 1 << 62, 1 << 62], "FP32", None),    # the same with typed (empty) contents
    ([1 << 62, 4], "BYTES", [b""]),           # more elements than the bytes could hold
    ([1] * 65, "FP32", [b"\0\0\0\0"]),        # past numpy's 64 dimensions
], ids=["zero-size-overflow-raw", "zero-size-overflow-typed", "bytes-count-overflow", "65-dims"])
def test_impossible_shapes_are_invalid_argument_not_internal(grpc_server: ServerThread, shape, datatype, raw) -> None:
    req = service_pb2.ModelInferRequest(model_name="mlp" if datatype == "FP32" else "identity_bytes")
    req.inputs.add(name="INPUT0", datatype=datatype, shape=shape)
    if raw is not None:
        req.raw_input_contents.extend(raw)
    with grpc.insecure_channel(grpc_server.grpc_url) as ch:
        with pytest.raises(grpc.RpcError) as e:
            service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        assert "INPUT0" in e.value.details()
        ok = service_pb2.ModelInferRequest(model_name="mlp")
        ok.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 64])
        ok.raw_input_contents.append(bytes(256))
        assert len(service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(ok, timeout=10).outputs) == 1
