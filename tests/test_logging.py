"""Operability: server_name in metadata, unknown GATEWAY_* variables reported, the opt-in access log
(HTTP and gRPC), and ``--log-format json`` (every stderr line one JSON object)."""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from test_cli import free_port, wait_ready
from tritonclient.utils import InferenceServerException

from gateway.logs import ACCESS_LOGGER, JsonFormatter
from gateway.settings import ServerSettings
from gateway.testing import ServerThread

ADD_SUB = json.dumps({"id": "rid-7", "inputs": [
    {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16},
    {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": [2.0] * 16}]}).encode()


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[dict]:
        return [json.loads(r.getMessage()) for r in self.records]

    def wait_for(self, n: int, timeout: float = 10.0) -> None:
        # a gRPC abort sends its status before the handler returns: its line may follow the answer
        end = time.monotonic() + timeout
        while len(self.records) < n and time.monotonic() < end:
            time.sleep(0.01)


@pytest.fixture
def access() -> Iterator[Collect]:
    """A handler on the gateway.access logger, as an operator would route it."""
    logger = logging.getLogger(ACCESS_LOGGER)
    h = Collect()
    old = logger.level
    logger.addHandler(h)
    logger.setLevel(logging.INFO)
    yield h
    logger.removeHandler(h)
    logger.setLevel(old)


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


# ---- server_name -----------------------------------------------------------------------------------
def test_server_name_in_metadata_over_http_and_grpc(repo: Path) -> None:
    with ServerThread(repository=repo, server_name="edge-gw-3") as srv:
        assert httpclient.InferenceServerClient(srv.http_url).get_server_metadata()["name"] == "edge-gw-3"
        assert grpcclient.InferenceServerClient(srv.grpc_url).get_server_metadata().name == "edge-gw-3"


def test_server_name_default_and_from_env() -> None:
    assert ServerSettings(demo=True).server_name == "inference-gateway"
    s = ServerSettings.load(None, env={"GATEWAY_DEMO": "1", "GATEWAY_SERVER_NAME": "from-env"})
    assert s.server_name == "from-env"


# ---- unknown GATEWAY_* variables -------------------------------------------------------------------
def test_unknown_env_reported_with_the_closest_setting() -> None:
    env = {"GATEWAY_HTTP_PROT": "9000", "GATEWAY_ACESS_LOG": "1", "GATEWAY_DEBUG": "1", "GATEWAY_HTTP_PORT": "1",
           "GATEWAY_ZZZZZZZZZZZZ": "x", "OTHER_HTTP_PROT": "1"}
    warnings = ServerSettings.unknown_env(env)
    assert len(warnings) == 3, warnings
    prot = next(w for w in warnings if "GATEWAY_HTTP_PROT" in w)
    assert "GATEWAY_HTTP_PORT" in prot and "http_port" in prot
    assert any("GATEWAY_ACESS_LOG" in w and "GATEWAY_ACCESS_LOG" in w for w in warnings)
    assert any("GATEWAY_ZZZZZZZZZZZZ" in w and "did you mean" not in w for w in warnings)
    assert not any("GATEWAY_DEBUG" in w for w in warnings)  # a build-time variable (setup.py)
    assert ServerSettings.unknown_env({"GATEWAY_HTTP_PORT": "1", "GATEWAY_DEBUG": "1"}) == []
    # reporting is not failing: the same environment still loads
    assert ServerSettings.load(None, env={**env, "GATEWAY_DEMO": "1"}).http_port == 1


def test_log_format_is_checked() -> None:
    with pytest.raises(ValueError, match="log_format"):
        ServerSettings.load(None, env={"GATEWAY_DEMO": "1", "GATEWAY_LOG_FORMAT": "xml"})


# ---- access log ------------------------------------------------------------------------------------
def exercise(srv: ServerThread, access: Collect | None = None) -> None:
    """A 200, a 400 and a 404 over HTTP, and an OK and a NOT_FOUND over gRPC."""
    assert request(srv.http_port, "POST", "/v2/models/add_sub/infer", ADD_SUB)[0] == 200
    assert request(srv.http_port, "POST", "/v2/models/add_sub/versions/1/infer", b"{not json")[0] == 400
    assert request(srv.http_port, "GET", "/v2/models/nope/versions/3")[0] == 404
    g = grpcclient.InferenceServerClient(srv.grpc_url)
    x = grpcclient.InferInput("INPUT0", [1, 64], "FP32")
    x.set_data_from_numpy(np.ones((1, 64), np.float32))
    g.infer("mlp", [x], request_id="grpc-1")
    with pytest.raises(InferenceServerException):
        g.infer("nope", [x])
    g.close()
    if access is not None:
        access.wait_for(5)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_access_log_is_off_by_default(repo: Path, access: Collect, loop: str) -> None:
    with ServerThread(repository=repo, loop=loop) as srv:
        from gateway.front.http.server import HttpProtocol

        exercise(srv)
        assert all(type(c) is HttpProtocol for c in srv.app.http.connections)  # the plain protocol
    assert access.records == []


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_access_log_one_json_line_per_request(repo: Path, access: Collect, loop: str, grpc_front: str) -> None:
    with ServerThread(repository=repo, loop=loop, access_log=True, max_body_bytes=1 << 20,
                      grpc_front=grpc_front) as srv:
        exercise(srv, access)
        with socket.create_connection(("127.0.0.1", srv.http_port), timeout=30) as s:  # refused on its head
            s.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (2 << 20))
            assert s.recv(65536).startswith(b"HTTP/1.1 413 ")
        lines = access.lines()
    assert [(x["protocol"], x["status"]) for x in lines] == [
        ("http", 200), ("http", 400), ("http", 404), ("grpc", "OK"), ("grpc", "NOT_FOUND"), ("http", 413)]
    ok, bad, missing, g_ok, g_missing, too_large = lines
    assert ok["method"] == "POST" and ok["path"] == "/v2/models/add_sub/infer"
    assert (ok["model"], ok["version"], ok["request_id"]) == ("add_sub", None, "rid-7")
    assert ok["request_bytes"] == len(ADD_SUB) and ok["response_bytes"] > 0 and ok["duration_ms"] >= 0
    assert ok["client"].startswith("127.0.0.1:") and ok["time"].endswith("Z") and "T" in ok["time"]
    assert (bad["model"], bad["version"], bad["request_id"]) == ("add_sub", "1", None)
    assert (missing["method"], missing["model"], missing["version"]) == ("GET", "nope", "3")
    assert g_ok["method"] == "ModelInfer" and g_ok["path"].endswith("/ModelInfer")
    assert (g_ok["model"], g_ok["request_id"]) == ("mlp", "grpc-1") and g_ok["response_bytes"] is None
    assert g_missing["model"] == "nope" and g_ok["client"].startswith("127.0.0.1:")
    assert too_large["method"] == "POST" and too_large["path"] == "/v2/models/add_sub/infer"
    for r in access.records:  # the same fields, structured, for handlers that want them
        assert r.access == json.loads(r.getMessage())  # type: ignore[attr-defined]


def test_access_log_grpc_stream_is_one_line(repo: Path, access: Collect, grpc_front: str) -> None:
    with ServerThread(repository=repo, access_log=True, grpc_front=grpc_front) as srv:
        g = grpcclient.InferenceServerClient(srv.grpc_url)
        answers: list[object] = []
        g.start_stream(callback=lambda result, error: answers.append(result if error is None else error))
        x = grpcclient.InferInput("INPUT0", [1, 64], "FP32")
        x.set_data_from_numpy(np.ones((1, 64), np.float32))
        for i in range(3):
            g.async_stream_infer("mlp", [x], request_id=f"s{i}")
        end = time.monotonic() + 30
        while len(answers) < 3 and time.monotonic() < end:
            time.sleep(0.01)
        g.stop_stream()
        g.close()
        access.wait_for(1)
        lines = access.lines()
    assert len(answers) == 3
    assert [(x["method"], x["status"]) for x in lines] == [("ModelStreamInfer", "OK")]


def test_access_log_for_pipelined_requests_in_order(repo: Path, access: Collect) -> None:
    with ServerThread(repository=repo, access_log=True) as srv:
        one = (b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(ADD_SUB)
               + ADD_SUB)
        bad = b"GET /v2/models/nope HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection(("127.0.0.1", srv.http_port), timeout=30) as s:
            s.sendall(one + bad + one)
            got = b""
            while got.count(b"HTTP/1.1 ") < 3 or not got.endswith(b"}"):
                got += s.recv(65536)
    assert sorted(x["status"] for x in access.lines()) == [200, 200, 404]


# ---- --log-format json -----------------------------------------------------------------------------
def test_json_log_format_every_stderr_line_is_json() -> None:
    http_port, grpc_port = free_port(), free_port()
    env = {**os.environ, "GATEWAY_HTTP_PROT": "9000", "GATEWAY_DEBUG": "1", "GATEWAY_ACCESS_LOG": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--demo", "--log-format", "json",
                             "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_ready(http_port, proc)
        assert request(http_port, "POST", "/v2/models/add_sub/infer", ADD_SUB)[0] == 200
        assert request(http_port, "GET", "/v2/models/nope")[0] == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        stderr = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [json.loads(line) for line in stderr.splitlines()]  # every line parses
    logs = [x for x in lines if "level" in x]
    assert all({"time", "level", "logger", "message"} <= x.keys() for x in logs)
    warn = [x for x in logs if x["level"] == "WARNING" and "GATEWAY_HTTP_PROT" in x["message"]]
    assert len(warn) == 1 and "GATEWAY_HTTP_PORT" in warn[0]["message"]
    assert not any("GATEWAY_DEBUG" in x["message"] for x in logs)
    assert any("shutting down" in x["message"] for x in logs)
    access = [x for x in lines if "protocol" in x]
    # the readiness polls are requests too
    assert [x["status"] for x in access if x["path"] != "/v2/health/ready"] == [200, 404]


def test_json_formatter_carries_the_exception() -> None:
    rec = logging.LogRecord("gateway.x", logging.ERROR, __file__, 1, "failed %s", ("here",), None)
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    doc = json.loads(line)
    assert (doc["level"], doc["logger"], doc["message"]) == ("ERROR", "gateway.x", "failed here")
    assert "RuntimeError: boom" in doc["exception"] and "Traceback" in doc["exception"]


def test_json_log_format_a_start_failure_is_one_json_record() -> None:
    with socket.socket() as taken:  # the HTTP port is in use: the server cannot start
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "gateway", "serve", "--demo", "--log-format", "json",
                            "--http-port", str(port), "--grpc-port", "-1"],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    lines = [json.loads(line) for line in r.stderr.splitlines()]
    failed = [x for x in lines if x["message"] == "server failed"]
    assert len(failed) == 1 and failed[0]["level"] == "ERROR" and "Traceback" in failed[0]["exception"]


def test_access_log_native_grpc_refusals_and_resets(repo: Path, access: Collect) -> None:
    """The native front logs what it answers in C (an unknown method) and a stream the client
    resets before its answer (CANCELLED), besides the calls the servicer answers."""
    from gateway.front.grpc.native import MISSING

    if MISSING is not None:
        pytest.skip(MISSING)
    from test_grpc_native_wire import Client, infer_message

    with ServerThread(repository=repo, access_log=True, grpc_front="native") as srv:
        c = Client(srv.grpc_port)
        try:
            s1 = c.call(b"\0\0\0\0\0", path="/inference.GRPCInferenceService/Nope")
            sid = c.h2.get_next_available_stream_id()  # half a message, then a reset
            c.h2.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":authority", "x"),
                                    (":path", "/inference.GRPCInferenceService/ModelInfer"),
                                    ("content-type", "application/grpc")])
            c.h2.send_data(sid, infer_message()[:50])
            c.flush()
            assert c.answer(s1)[0]["grpc-status"] == "12"
            c.h2.reset_stream(sid)
            c.flush()
            access.wait_for(2)
        finally:
            c.close()
        lines = access.lines()
    assert [(x["method"], x["status"]) for x in lines] == [("Nope", "UNIMPLEMENTED"), ("ModelInfer", "CANCELLED")]
    assert all(x["protocol"] == "grpc" and x["client"].startswith("127.0.0.1:") for x in lines)
