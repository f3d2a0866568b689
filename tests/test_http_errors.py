"""Every error path answers the protocol's error, and the server keeps serving afterwards."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path

import numpy as np
import pytest

from gateway.testing import ServerThread

GOOD = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16},
                              {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": [2.0] * 16}]})


def post(port: int, path: str, body: bytes | str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    data = r.read()
    hdrs = {k.lower(): v for k, v in r.getheaders()}
    conn.close()
    return r.status, hdrs, data


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def still_serving(port: int) -> None:
    status, _, body = post(port, "/v2/models/add_sub/infer", GOOD)
    assert status == 200, body
    out = json.loads(body)["outputs"][0]
    assert out["data"] == [3.0] * 16


def inp(**over: object) -> dict:
    base = {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16}
    base.update(over)
    return base


BAD_BODIES = {
    "not json": b"{not json",
    "not an object": b"[1, 2]",
    "no inputs": json.dumps({"outputs": []}),
    "empty inputs": json.dumps({"inputs": []}),
    "unknown datatype": json.dumps({"inputs": [inp(datatype="FP33"), inp(name="INPUT1")]}),
    "wrong datatype": json.dumps({"inputs": [inp(datatype="FP64"), inp(name="INPUT1")]}),
    "shape mismatch with data": json.dumps({"inputs": [inp(shape=[1, 15]), inp(name="INPUT1")]}),
    "wrong inner dim": json.dumps({"inputs": [inp(shape=[2, 8]), inp(name="INPUT1")]}),
    "wrong rank": json.dumps({"inputs": [inp(shape=[16]), inp(name="INPUT1", shape=[16])]}),
    "negative dim": json.dumps({"inputs": [inp(shape=[-1, 16])]}),
    "unknown input": json.dumps({"inputs": [inp(name="NOPE"), inp(name="INPUT1")]}),
    "missing input": json.dumps({"inputs": [inp()]}),
    "duplicate input": json.dumps({"inputs": [inp(), inp()]}),
    "string in numbers": json.dumps({"inputs": [inp(data=["a"] * 16), inp(name="INPUT1")]}),
    "rows disagree": json.dumps({"inputs": [inp(), inp(name="INPUT1", shape=[2, 16], data=[1.0] * 32)]}),
    "zero rows": json.dumps({"inputs": [inp(shape=[0, 16], data=[]), inp(name="INPUT1", shape=[0, 16], data=[])]}),
    "unknown output": json.dumps({"inputs": [inp(), inp(name="INPUT1")], "outputs": [{"name": "NOPE"}]}),
    "bad timeout": json.dumps({"inputs": [inp(), inp(name="INPUT1")], "parameters": {"timeout": "soon"}}),
    "id not string": json.dumps({"id": 5, "inputs": [inp(), inp(name="INPUT1")]}),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_json_requests_get_400(server: ServerThread, case: str) -> None:
    status, hdrs, body = post(server.http_port, "/v2/models/add_sub/infer", BAD_BODIES[case])
    assert status == 400, body
    assert hdrs["content-type"] == "application/json"
    assert json.loads(body)["error"]
    still_serving(server.http_port)


def test_binary_extension_errors(server: ServerThread) -> None:
    head = json.dumps({"inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "parameters": {"binary_data_size": 64}},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "parameters": {"binary_data_size": 64}}]}).encode()
    raw = np.ones(16, dtype=np.float32).tobytes()
    port = server.http_port
    ok, _, body = post(port, "/v2/models/add_sub/infer", head + raw + raw,
                       {"Inference-Header-Content-Length": str(len(head))})
    assert ok == 200, body
    for bad_body, hlen in [(head + raw, len(head)),                       # truncated tensor data
                           (head + raw + raw + b"xx", len(head)),         # unclaimed trailing bytes
                           (head + raw + raw, len(head) + 10_000),        # header length past the end
                           (head + raw + raw, "abc")]:                     # not an integer
        status, _, body = post(port, "/v2/models/add_sub/infer", bad_body,
                               {"Inference-Header-Content-Length": str(hlen)})
        assert status == 400, body
        assert json.loads(body)["error"]
    still_serving(port)


def test_unknown_model_version_and_route_404(server: ServerThread) -> None:
    port = server.http_port
    for path in ("/v2/models/nope/infer", "/v2/models/add_sub/versions/9/infer"):
        status, _, body = post(port, path, GOOD)
        assert status == 404 and "error" in json.loads(body)
    for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/nothing", "/v2/models/mlp/versions/7/config"):
        status, body = get(port, path)
        assert status == 404, path
        assert json.loads(body)["error"]
    still_serving(port)


def test_body_too_large_gets_413(repo: Path) -> None:
    with ServerThread(repository=repo, loop="uvloop", grpc_port=-1, max_body_bytes=1000) as srv:
        big = json.dumps({"inputs": [inp(shape=[100, 16], data=[1.0] * 1600), inp(name="INPUT1")]})
        status, hdrs, body = post(srv.http_port, "/v2/models/add_sub/infer", big)
        assert status == 413
        assert "max_body_bytes" in json.loads(body)["error"]
        still_serving(srv.http_port)


def test_malformed_http_gets_400_and_close(server: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as s:
        s.sendall(b"GARBAGE\r\n\r\n")
        data = s.recv(65536)
        assert data.startswith(b"HTTP/1.1 400")
    still_serving(server.http_port)


def test_pipelined_requests_answered_in_order(server: ServerThread) -> None:
    bodies = []
    for i in range(20):
        v = float(i)
        b = json.dumps({"id": str(i), "inputs": [inp(data=[v] * 16), inp(name="INPUT1", data=[0.0] * 16)]}).encode()
        bodies.append(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: " + str(len(b)).encode() + b"\r\n\r\n" + b)
    # interleave a GET and a bad request: every answer still comes back in request order
    bodies.insert(5, b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
    bodies.insert(9, b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n{{{")
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as s:
        s.sendall(b"".join(bodies))
        f = s.makefile("rb")
        ids = []
        for _ in range(len(bodies)):
            status_line = f.readline()
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            payload = f.read(length)
            if b" 200 " in status_line and payload:
                ids.append(json.loads(payload)["id"])
            else:
                ids.append(status_line.split()[1].decode())
    expected = [str(i) for i in range(20)]
    expected.insert(5, "200")
    expected.insert(9, "400")
    assert ids == expected


def test_connection_close_is_honoured(server: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200") and b"connection: close" in data.lower()


def test_bad_rows_from_model_fail_whole_batch(server: ServerThread) -> None:
    """A model that returns the wrong number of rows fails the batch; nobody gets a wrong answer."""
    import concurrent.futures

    body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: post(server.http_port, "/v2/models/bad_rows/infer", body), range(8)))
    assert [r[0] for r in results] == [500] * 8
    for _, _, payload in results:
        assert "rows" in json.loads(payload)["error"]
    stats = json.loads(get(server.http_port, "/v2/models/bad_rows/stats")[1])["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == 0
    assert stats["inference_stats"]["fail"]["count"] >= 8
    still_serving(server.http_port)


def test_expect_100_continue(server: ServerThread) -> None:
    """curl sends `Expect: 100-continue` for larger bodies and waits for the interim answer."""
    body = GOOD.encode()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as s:
        s.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        assert s.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body)
        data = s.recv(65536)
        assert data.startswith(b"HTTP/1.1 200")


def test_oversized_head_is_rejected(server: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        data = s.recv(65536)
        assert data.startswith(b"HTTP/1.1 431 Request Header Fields Too Large")
        assert b"max_header_bytes" in data
    still_serving(server.http_port)
