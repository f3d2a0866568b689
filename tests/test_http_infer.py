"""End to end over real sockets with the official tritonclient.http, JSON and binary tensors.

Outputs are compared with onnxruntime run directly on the same .onnx file.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from models import random_array, reference

from gateway.testing import ServerThread

ALL_TYPES = ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "FP32",
             "FP64", "BYTES"]


def client(server: ServerThread) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http_url, concurrency=4)


def make_input(name: str, arr: np.ndarray, datatype: str, binary: bool) -> httpclient.InferInput:
    inp = httpclient.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr, binary_data=binary)
    return inp


def as_bytes(v: object) -> bytes:
    """tritonclient returns BYTES as bytes (binary) or str (JSON)."""
    return v.encode() if isinstance(v, str) else bytes(v)  # type: ignore[arg-type]


def test_server_metadata_and_health(server: ServerThread) -> None:
    c = client(server)
    assert c.is_server_live() and c.is_server_ready()
    meta = c.get_server_metadata()
    assert "binary_tensor_data" in meta["extensions"]
    assert c.is_model_ready("mlp") and c.is_model_ready("mlp", "1")
    md = c.get_model_metadata("mlp")
    assert md["versions"] == ["1", "2"]
    assert md["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 64]}]
    cfg = c.get_model_config("mlp")
    assert cfg["max_batch_size"] == 64 and cfg["input"][0]["dims"] == [64]
    assert c.get_model_config("static")["max_batch_size"] == 0


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_mlp_both_versions_match_onnxruntime(server: ServerThread, repo: Path, binary: bool) -> None:
    c = client(server)
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    for version in ("1", "2"):
        out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
        r = c.infer("mlp", [make_input("INPUT0", x, "FP32", binary)], model_version=version, outputs=[out],
                    request_id=f"req-{version}")
        got = r.as_numpy("OUTPUT0")
        want = reference(repo, "mlp", version, {"INPUT0": x})["OUTPUT0"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert r.get_response()["id"] == f"req-{version}"
        assert r.get_response()["model_version"] == version
    # no version: the highest loaded one serves
    r = c.infer("mlp", [make_input("INPUT0", x, "FP32", binary)])
    assert r.get_response()["model_version"] == "2"


@pytest.mark.parametrize("datatype", ALL_TYPES)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_every_datatype_round_trips(server: ServerThread, datatype: str, binary: bool) -> None:
    c = client(server)
    x = random_array(datatype, (2, 4), np.random.default_rng(1))
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
    r = c.infer(f"identity_{datatype.lower()}", [make_input("INPUT0", x, datatype, binary)], outputs=[out])
    got = r.as_numpy("OUTPUT0")
    if datatype == "BYTES":
        assert [as_bytes(v) for v in got.reshape(-1)] == list(x.reshape(-1))
    else:
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(got, x)


def test_fp16_json_numbers_are_rounded_like_numpy(server: ServerThread) -> None:
    """JSON numbers for FP16 need not be representable: each is rounded to nearest as
    ``np.float16`` rounds it (the round trip above sends only exact FP16 values)."""
    values = [0.1, 1 / 3, 2.718281828, -1234.5678, 65519.0, 6e-8, 1e-9, 3]
    body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP16", "shape": [2, 4], "data": values}]})
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    conn.request("POST", "/v2/models/identity_fp16/infer", body=body)
    r = conn.getresponse()
    out = json.loads(r.read())
    conn.close()
    assert r.status == 200, out
    want = np.asarray(values, dtype=np.float16).reshape(2, 4)
    assert want[1, 0] == 65504.0 and want[1, 2] == 0.0  # rounding that matters: to the max, to zero
    got = np.asarray(out["outputs"][0]["data"], dtype=np.float64).astype(np.float16).reshape(2, 4)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_multiple_inputs_outputs_and_requested_subset(server: ServerThread, repo: Path, binary: bool) -> None:
    c = client(server)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([[1, 2], [3, 4]], dtype=np.int64)
    s = np.array([[b"x"], [b"yz"]], dtype=object)
    inputs = [make_input("A", a, "FP32", binary), make_input("B", b, "INT64", binary),
              make_input("C", s, "BYTES", binary)]
    r = c.infer("multi", inputs, parameters={"custom": "value", "n": 3})
    np.testing.assert_array_equal(r.as_numpy("F"), a * 2)
    np.testing.assert_array_equal(r.as_numpy("N"), b + 1)
    assert [as_bytes(v) for v in r.as_numpy("S").reshape(-1)] == [b"x", b"yz"]
    only = c.infer("multi", inputs, outputs=[httpclient.InferRequestedOutput("N", binary_data=binary)])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["N"]
    assert only.as_numpy("F") is None
    ref = reference(repo, "add_sub", "1", {"INPUT0": a[:, :1].repeat(16, 1), "INPUT1": a[:, 1:2].repeat(16, 1)})
    r2 = c.infer("add_sub", [make_input("INPUT0", a[:, :1].repeat(16, 1), "FP32", binary),
                             make_input("INPUT1", a[:, 1:2].repeat(16, 1), "FP32", binary)])
    np.testing.assert_allclose(r2.as_numpy("OUTPUT0"), ref["OUTPUT0"])
    np.testing.assert_allclose(r2.as_numpy("OUTPUT1"), ref["OUTPUT1"])


def test_model_without_batch_dimension(server: ServerThread) -> None:
    c = client(server)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    r = c.infer("static", [make_input("INPUT0", x, "FP32", True)])
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), x * x)


def test_request_larger_than_max_batch_is_split_and_reassembled(server: ServerThread, repo: Path) -> None:
    c = client(server)
    x = np.random.default_rng(3).standard_normal((150, 64)).astype(np.float32)  # max_batch_size is 64
    r = c.infer("mlp", [make_input("INPUT0", x, "FP32", True)], model_version="1")
    want = reference(repo, "mlp", "1", {"INPUT0": x})["OUTPUT0"]
    np.testing.assert_allclose(r.as_numpy("OUTPUT0"), want, rtol=1e-5, atol=1e-5)


def test_variable_inner_dimension(server: ServerThread) -> None:
    c = client(server)
    for n in (3, 7):
        x = np.ones((2, n), dtype=np.float32)
        r = c.infer("rowsum", [make_input("INPUT0", x, "FP32", False)])
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), np.full((2, 1), n, dtype=np.float32))


def test_statistics_extension(server: ServerThread) -> None:
    c = client(server)
    x = np.zeros((1, 64), dtype=np.float32)
    c.infer("mlp", [make_input("INPUT0", x, "FP32", True)], model_version="1")
    stats = c.get_inference_statistics("mlp", "1")["model_stats"][0]
    assert stats["name"] == "mlp" and stats["version"] == "1"
    s = stats["inference_stats"]
    assert s["success"]["count"] >= 1 and s["compute_infer"]["count"] >= 1 and s["queue"]["count"] >= 1
    assert stats["batch_stats"] and stats["execution_count"] >= 1
    all_stats = c.get_inference_statistics()["model_stats"]
    assert {(m["name"], m["version"]) for m in all_stats} >= {("mlp", "1"), ("mlp", "2"), ("add_sub", "1")}
