"""HTTP hardening (issue 8): every request gets one answer and no connection outlives its use.

Over real sockets (raw ones where tritonclient cannot send the bad input): the decode failures
that used to leave a request unanswered and its socket in CLOSE-WAIT for good, an error we did
not foresee, slow clients (slowloris on the head and on the body), the connection cap and its
health reserve, errors of the wrong class, and protocol details (HEAD, 100 Continue, 431).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from models import build_test_repository, mlp_model, write_model
from test_http_errors import GOOD, get, post, still_serving

import gateway.front.http.server as http_front
from gateway.testing import ServerThread

LOOPS = ["asyncio", "uvloop"]  # as tests/conftest.py (importing it is ambiguous with tests/loadtest/conftest.py)
BIG = 2**63


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def request(method: str, path: str, body: bytes | str = b"", headers: str = "") -> bytes:
    body = body.encode() if isinstance(body, str) else body
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}{length}\r\n".encode() + body


def read_response(f, head: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One response from a socket file; ``head``: the answer to HEAD, which has no body."""
    line = f.readline()
    if not line:
        raise EOFError("connection closed")
    status = int(line.split()[1])
    hdrs: dict[str, str] = {}
    while (h := f.readline()) not in (b"\r\n", b""):
        k, v = h.decode("latin-1").split(":", 1)
        hdrs[k.strip().lower()] = v.strip()
    body = b"" if head or status == 100 else f.read(int(hdrs.get("content-length", 0)))
    return status, hdrs, body


def binary_body(inputs: list[dict], data: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps({"inputs": inputs}).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head))}


def json_body(inputs: list[dict]) -> tuple[bytes, dict[str, str]]:
    return json.dumps({"inputs": inputs}).encode(), {}


def _deep_bytes() -> tuple[bytes, dict[str, str]]:
    data = "[" * 1000 + '"a"' + "]" * 1000  # past the recursion limit, within orjson's 1024 levels
    return (f'{{"inputs":[{{"name":"INPUT0","datatype":"BYTES","shape":[1],"data":{data}}}]}}'.encode(), {})


def _t(name: str, datatype: str, shape: list[int], **extra: object) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, **extra}


# The inputs that raised something other than GatewayError while decoding (defect 1 of issue 8),
# on the JSON and the binary path where both exist: path -> (body, headers).
TRIGGERS: dict[str, tuple[str, tuple[bytes, dict[str, str]]]] = {
    "BYTES shape 2**63, binary": ("identity_bytes", binary_body(
        [_t("INPUT0", "BYTES", [BIG], parameters={"binary_data_size": 5})], b"\x01\0\0\0a")),
    "BYTES shape 2**63, JSON": ("identity_bytes", json_body([_t("INPUT0", "BYTES", [BIG], data=["a"])])),
    "empty shape of huge dims, binary": ("add_sub", binary_body(
        [_t("INPUT0", "FP32", [0, 2**62, 2**62], parameters={"binary_data_size": 0})], b"")),
    "empty shape of huge dims, JSON": ("add_sub", json_body([_t("INPUT0", "FP32", [0, 2**62, 2**62], data=[])])),
    "empty BYTES shape of huge dims, JSON": ("identity_bytes", json_body(
        [_t("INPUT0", "BYTES", [0, 2**62, 2**62], data=[])])),
    "65 dims, binary": ("add_sub", binary_body(
        [_t("INPUT0", "FP32", [1] * 65, parameters={"binary_data_size": 4})], b"\0\0\0\0")),
    "65 dims, JSON numbers": ("add_sub", json_body([_t("INPUT0", "FP32", [1] * 65, data=[1.0])])),
    "65 dims, JSON BYTES": ("identity_bytes", json_body([_t("INPUT0", "BYTES", [1] * 65, data=["a"])])),
    "BYTES nested 1000 deep, JSON": ("identity_bytes", _deep_bytes()),
}


def post_raw(port: int, model: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    status, _, data = post(port, f"/v2/models/{model}/infer", body, headers)
    return status, data


@pytest.mark.parametrize("case", list(TRIGGERS))
def test_decode_trigger_gets_400(server: ServerThread, case: str) -> None:
    model, (body, headers) = TRIGGERS[case]
    status, data = post_raw(server.http_port, model, body, headers)
    assert status == 400, data
    assert json.loads(data)["error"]


def test_decode_triggers_leak_no_fd_and_the_server_goes_on(server: ServerThread) -> None:
    port = server.http_port
    still_serving(port)
    base = fd_count()
    for model, (body, headers) in TRIGGERS.values():
        assert post_raw(port, model, body, headers)[0] == 400
    # one connection: every trigger, then 100 good requests on it
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for model, (body, headers) in TRIGGERS.values():
        conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers)
        r = conn.getresponse()
        assert r.status == 400 and json.loads(r.read())["error"]
    for _ in range(100):
        conn.request("POST", "/v2/models/add_sub/infer", body=GOOD)
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["outputs"][0]["data"] == [3.0] * 16
    conn.close()
    for _ in range(100):  # and on new connections
        still_serving(port)
    deadline = time.monotonic() + 5
    while fd_count() > base and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fd_count() <= base  # no socket left behind in CLOSE-WAIT


@pytest.fixture(scope="module")
def hard_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = build_test_repository(tmp_path_factory.mktemp("hard"))
    write_model(repo, "tiny_queue", 1, mlp_model(seed=4), "max_batch_size = 64\nmax_queue_size = 2\n")
    # answers after a 0.3 s batching delay: an earlier pipelined request still owed an answer
    write_model(repo, "slowish", 1, mlp_model(seed=5), "max_batch_size = 8\nmax_queue_delay_us = 300000\n")
    return repo


MLP_ROW = json.dumps({"inputs": [_t("INPUT0", "FP32", [1, 64], data=[0.5] * 64)]})


@pytest.fixture(scope="module", params=LOOPS)
def hard_server(hard_repo: Path, request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    with ServerThread(repository=hard_repo, loop=request.param, grpc_port=-1) as srv:
        yield srv


def owed(srv: ServerThread) -> list[str]:
    async def check() -> list[str]:
        return [f"tickets={len(c._tickets)} parked={len(c._parked)}" for c in srv.app.http.connections
                if c._tickets or c._parked]
    return srv.call(check())


# ---- an error nobody foresaw ----------------------------------------------------------------
@pytest.mark.parametrize("loop_name", LOOPS)
def test_unexpected_decode_error_is_500_logged_once_and_the_pipeline_goes_on(
        hard_repo: Path, loop_name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    real = http_front.decode_infer

    def decode(body: bytes, header_length: int, model: str, version: str, *rest):  # type: ignore[no-untyped-def]
        if b"boom" in body:
            raise RuntimeError("kaboom")
        return real(body, header_length, model, version, *rest)

    monkeypatch.setattr(http_front, "decode_infer", decode)
    caplog.set_level(logging.ERROR, logger="gateway.front.http.server")
    with ServerThread(repository=hard_repo, loop=loop_name, grpc_port=-1) as srv, \
            socket.create_connection(("127.0.0.1", srv.http_port), timeout=10) as s:
        boom = json.dumps({"id": "boom", "inputs": json.loads(GOOD)["inputs"]})
        s.sendall(request("POST", "/v2/models/add_sub/infer", boom) + request("POST", "/v2/models/add_sub/infer", GOOD)
                  + request("GET", "/v2/health/live"))
        f = s.makefile("rb")
        status, _, body = read_response(f)
        assert status == 500 and "kaboom" in json.loads(body)["error"]
        status, _, body = read_response(f)
        assert status == 200 and json.loads(body)["outputs"][0]["data"] == [3.0] * 16
        assert read_response(f)[0] == 200
        assert owed(srv) == []
    errors = [r for r in caplog.records if r.name == "gateway.front.http.server" and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info and errors[0].exc_info[0] is RuntimeError


@pytest.mark.parametrize("loop_name", LOOPS)
def test_failing_parser_callback_is_answered_500(hard_repo: Path, loop_name: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception inside a reader callback (before the request has a sequence number) still
    answers that request, after the earlier pipelined one, and closes."""
    real = http_front.HttpProtocol.on_request

    def on_request(self: http_front.HttpProtocol, method: bytes, url: bytes, *rest: Any) -> None:
        if b"boom" in url:
            raise KeyError("kaboom")
        real(self, method, url, *rest)

    monkeypatch.setattr(http_front.HttpProtocol, "on_request", on_request)
    with ServerThread(repository=hard_repo, loop=loop_name, grpc_port=-1) as srv, \
            socket.create_connection(("127.0.0.1", srv.http_port), timeout=10) as s:
        s.sendall(request("POST", "/v2/models/slowish/infer", MLP_ROW) + request("GET", "/v2/boom"))
        f = s.makefile("rb")
        assert read_response(f)[0] == 200
        status, hdrs, body = read_response(f)
        assert status == 500 and json.loads(body)["error"] and hdrs["connection"] == "close"
        assert f.read() == b""  # closed
        assert owed(srv) == []


@pytest.mark.parametrize("loop_name", LOOPS)
def test_connection_whose_answer_never_comes_is_closed(hard_repo: Path, loop_name: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The safety net: a request left unanswered (simulated: a sequence number skipped, as a bug
    would) parks every later answer; the keep-alive timeout still closes the connection."""
    with ServerThread(repository=hard_repo, loop=loop_name, grpc_port=-1, http_keepalive_timeout_s=1) as srv, \
            socket.create_connection(("127.0.0.1", srv.http_port), timeout=10) as s:
        s.sendall(request("GET", "/v2/health/live"))
        f = s.makefile("rb")
        assert read_response(f)[0] == 200

        async def lose_one() -> None:
            for c in srv.app.http.connections:
                c._seq += 1
        srv.call(lose_one())
        t0 = time.monotonic()
        s.sendall(request("GET", "/v2/health/live"))  # its answer waits for the lost one
        assert f.read() == b""  # ... until the sweep closes the connection
        assert time.monotonic() - t0 < 5
        assert any("never answered" in r.getMessage() for r in caplog.records)


# ---- slow clients ---------------------------------------------------------------------------------
class Slowloris(threading.Thread):
    """``n`` connections, half trickling a request head and half a body, one byte per ``interval``
    each, for at most ``duration`` s: records when the server closed each one."""

    def __init__(self, port: int, n: int, interval: float = 0.5, duration: float = 6.0) -> None:
        super().__init__(daemon=True)
        self.port, self.n, self.interval, self.duration = port, n, interval, duration
        self.closed_after: list[float] = []
        self.answers: list[bytes] = []
        self.open_at_end = 0

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        started: dict[socket.socket, float] = {}
        slow_body: set[socket.socket] = set()
        for i in range(self.n):
            s = socket.create_connection(("127.0.0.1", self.port))
            s.setblocking(False)
            if i % 2:  # slow body: a complete head, then the body byte by byte
                s.send(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
                slow_body.add(s)
            sel.register(s, selectors.EVENT_READ)
            started[s] = time.monotonic()
        end = time.monotonic() + self.duration
        head = b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
        sent = 0
        while started and time.monotonic() < end:
            for s in list(started):
                with contextlib.suppress(OSError):  # closed by the server: seen below
                    s.send(b"a" if s in slow_body else head[sent:sent + 1])
            sent += 1
            until = time.monotonic() + self.interval
            while (left := until - time.monotonic()) > 0:
                for key, _ in sel.select(left):
                    s = key.fileobj
                    try:
                        data = s.recv(65536)  # type: ignore[union-attr]
                    except OSError:
                        data = b""
                    if data:
                        self.answers.append(data)
                        continue
                    self.closed_after.append(time.monotonic() - started.pop(s))  # type: ignore[arg-type]
                    sel.unregister(s)
                    s.close()  # type: ignore[union-attr]
        self.open_at_end = len(started)
        for s in started:
            s.close()
        sel.close()


@pytest.mark.parametrize("loop_name", LOOPS)
def test_slowloris_is_cut_off_and_good_clients_keep_their_latency(hard_repo: Path, loop_name: str) -> None:
    with ServerThread(repository=hard_repo, loop=loop_name, grpc_port=-1, header_timeout_s=1,
                      body_timeout_s=1) as srv:
        port = srv.http_port
        attack = Slowloris(port, 300)
        attack.start()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        latencies = []
        while attack.is_alive() and len(latencies) < 20_000:
            t0 = time.perf_counter()
            conn.request("POST", "/v2/models/add_sub/infer", body=GOOD)
            r = conn.getresponse()
            assert r.status == 200, r.read()
            r.read()
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.002)
        attack.join()
        conn.close()
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99)]
        print(f"\nslowloris {loop_name}: {attack.n} connections, {attack.open_at_end} still open after "
              f"{attack.duration} s, closed after {min(attack.closed_after):.1f}-{max(attack.closed_after):.1f} s; "
              f"good client: {len(latencies)} requests, p50 {latencies[len(latencies) // 2] * 1e3:.1f} ms, "
              f"p99 {p99 * 1e3:.1f} ms")
        assert attack.open_at_end == 0
        assert len(attack.closed_after) == attack.n and max(attack.closed_after) < 4.0
        # (a reset from the server's close, as the attacker keeps sending, may drop a 408 unread)
        assert attack.answers and all(a.startswith(b"HTTP/1.1 408") for a in attack.answers)
        assert p99 < 0.1
        assert owed(srv) == []


@pytest.mark.parametrize("loop_name", LOOPS)
def test_silent_connection_is_closed_after_header_timeout(hard_repo: Path, loop_name: str) -> None:
    """Counted from accept for a connection's first request; nothing was asked, nothing is answered."""
    with ServerThread(repository=hard_repo, loop=loop_name, grpc_port=-1, header_timeout_s=1) as srv, \
            socket.create_connection(("127.0.0.1", srv.http_port), timeout=10) as s:
        t0 = time.monotonic()
        assert s.recv(100) == b""
        assert 1.0 <= time.monotonic() - t0 < 4.0
        # a keep-alive connection between requests is the keep-alive timeout's, not this one's
        with socket.create_connection(("127.0.0.1", srv.http_port), timeout=10) as k:
            k.sendall(request("GET", "/v2/health/live"))
            f = k.makefile("rb")
            assert read_response(f)[0] == 200
            time.sleep(3)
            k.sendall(request("GET", "/v2/health/live"))
            assert read_response(f)[0] == 200


# ---- connection cap ---------------------------------------------------------------------------------
@pytest.mark.parametrize("loop_name", LOOPS)
def test_connection_cap_refuses_clearly_keeps_health_and_recovers(hard_repo: Path, loop_name: str) -> None:
    with ServerThread(repository=hard_repo, loop=loop_name, grpc_port=-1, max_connections=4,
                      health_connections=2) as srv:
        port = srv.http_port

        def connect() -> tuple[socket.socket, Any]:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            return s, s.makefile("rb")

        def close(pair: tuple[socket.socket, Any]) -> None:
            pair[1].close()  # the socket's fd stays open while its file is
            pair[0].close()

        normal = [connect() for _ in range(4)]
        for s, f in normal:  # each one served (and so counted by the server) before the next
            s.sendall(request("GET", "/v2/health/live"))
            assert read_response(f)[0] == 200
        # the reserve: health and metrics answered, anything else refused with 503 and closed
        s, f = connect()
        s.sendall(request("GET", "/v2/health/ready") + request("GET", "/metrics"))
        assert read_response(f)[0] == 200
        status, _, body = read_response(f)
        assert status == 200 and b"# TYPE" in body
        s.sendall(request("POST", "/v2/models/add_sub/infer", GOOD))
        status, hdrs, body = read_response(f)
        assert status == 503 and "max_connections (4)" in json.loads(body)["error"]
        assert hdrs["connection"] == "close" and hdrs["retry-after"] == "1"
        assert f.read() == b""
        close((s, f))
        async def phases() -> list[int]:
            return sorted(c._phase for c in srv.app.http.reserve)

        def wait_for(cond: Any) -> None:
            deadline = time.monotonic() + 5
            while not cond() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert cond()

        # two reserve connections busy mid-request (a health probe's head not yet complete)
        reserve = [connect() for _ in range(2)]
        for s, _ in reserve:
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        wait_for(lambda: srv.call(phases()) == [1, 1])  # both reading a head
        # past the reserve: refused at once, before anything is read
        s, f = connect()
        status, hdrs, body = read_response(f)
        assert status == 503 and json.loads(body)["error"] and hdrs["connection"] == "close"
        assert f.read() == b""
        close((s, f))
        # a reserve connection that has gone quiet makes room for the next probe (idle floods
        # cannot hold the reserve)
        s, f = reserve[0]
        s.sendall(b"\r\n")
        assert read_response(f)[0] == 200
        wait_for(lambda: srv.call(phases()) == [0, 1])
        probe = connect()
        probe[0].sendall(request("GET", "/v2/health/ready"))
        assert read_response(probe[1])[0] == 200
        assert f.read() == b""  # the quiet one was closed for it
        close(reserve[0])
        reserve[0] = probe
        # closing two normal connections makes room again
        for pair in normal[:2]:
            close(pair)
        deadline = time.monotonic() + 5

        async def count() -> int:
            return len(srv.app.http.connections)
        while srv.call(count()) > 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert srv.call(count()) == 4
        for _ in range(2):
            still_serving(port)  # a fresh connection each, served in full
        for pair in normal[2:] + reserve:
            close(pair)


def test_default_cap_leaves_fds_for_the_rest() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    from gateway.settings import ServerSettings
    s = ServerSettings(demo=True)
    assert http_front.connection_cap(s) == soft - soft // 4 - s.health_connections
    assert http_front.connection_cap(s.replace(fd_reserve=100)) == soft - 100 - s.health_connections
    assert http_front.connection_cap(s.replace(max_connections=7)) == 7


# ---- errors of the wrong class ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a" * 300, "..", ".", "a%2Fb", "a%5Cb", "a%00b", "%C3%A9" * 128])
def test_bad_repository_names_get_400(hard_server: ServerThread, name: str) -> None:
    for action in ("load", "unload"):
        status, _, body = post(hard_server.http_port, f"/v2/repository/models/{name}/{action}", "")
        assert status == 400, body
        assert "plain directory name" in json.loads(body)["error"]
    still_serving(hard_server.http_port)


def test_more_rows_than_the_queue_holds_is_400_not_429(hard_server: ServerThread) -> None:
    port = hard_server.http_port
    three = json.dumps({"inputs": [_t("INPUT0", "FP32", [3, 64], data=[0.5] * 192)]})
    status, hdrs, body = post(port, "/v2/models/tiny_queue/infer", three)
    assert status == 400, body
    assert "retry-after" not in hdrs
    assert "queues at most 2" in json.loads(body)["error"]
    two = json.dumps({"inputs": [_t("INPUT0", "FP32", [2, 64], data=[0.5] * 128)]})
    assert post(port, "/v2/models/tiny_queue/infer", two)[0] == 200


# ---- protocol details --------------------------------------------------------------------------------
def test_head_gets_the_get_headers_and_no_body(hard_server: ServerThread) -> None:
    paths = ["/v2/models/add_sub", "/v2/health/ready", "/metrics", "/v2/models/nope", "/v2"]
    with socket.create_connection(("127.0.0.1", hard_server.http_port), timeout=10) as s:
        f = s.makefile("rb")
        for path in paths:
            s.sendall(request("HEAD", path) + request("GET", path))  # pipelined, one keep-alive connection
            h_status, h_hdrs, _ = read_response(f, head=True)
            g_status, g_hdrs, g_body = read_response(f)
            assert h_status == g_status, path
            assert h_hdrs["content-length"] == g_hdrs["content-length"] == str(len(g_body)), path
            if path != "/metrics":  # metrics change between two reads
                assert h_hdrs == g_hdrs
        s.sendall(request("GET", "/v2/health/live"))
        assert read_response(f)[0] == 200  # the stream is still in step


@pytest.mark.parametrize("coding", ["deflate", "gzip", "br"])
def test_head_whose_body_cannot_be_decoded_gets_no_body(hard_server: ServerThread, coding: str) -> None:
    """Found by the fuzz harness (fuzz/corpus/http_wire/fuzz-head-with-undecodable-body): the 400
    (or 415) for a body that would not decompress went out with its body even to a HEAD, and
    the client read that body as the next response."""
    with socket.create_connection(("127.0.0.1", hard_server.http_port), timeout=10) as s:
        f = s.makefile("rb")
        s.sendall(request("HEAD", "/v2/models/add_sub", b"x\x9c not deflate", f"Content-Encoding: {coding}\r\n")
                  + request("GET", "/v2/health/live"))
        status, hdrs, _ = read_response(f, head=True)
        assert status == (415 if coding == "br" else 400) and int(hdrs["content-length"]) > 0
        assert read_response(f)[0] == 200  # the stream is still in step


def test_100_continue_waits_for_earlier_answers(hard_server: ServerThread) -> None:
    body = GOOD.encode()
    with socket.create_connection(("127.0.0.1", hard_server.http_port), timeout=10) as s:
        s.sendall(request("POST", "/v2/models/slowish/infer", MLP_ROW)
                  + f"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode())
        f = s.makefile("rb")
        status, _, first = read_response(f)
        assert status == 200 and json.loads(first)["model_name"] == "slowish"  # not a 100 ahead of it
        assert read_response(f)[0] == 100  # now the waiting request is next in line
        s.sendall(body)
        status, _, out = read_response(f)
        assert status == 200 and json.loads(out)["outputs"][0]["data"] == [3.0] * 16


def test_100_continue_when_next_in_line_is_immediate(hard_server: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", hard_server.http_port), timeout=10) as s:
        s.sendall(f"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  f"Content-Length: {len(GOOD)}\r\n\r\n".encode())
        f = s.makefile("rb")
        assert read_response(f)[0] == 100
        s.sendall(GOOD.encode())
        assert read_response(f)[0] == 200


def test_too_large_body_gets_413_without_100_continue(hard_server: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", hard_server.http_port), timeout=10) as s:
        # Expect before Content-Length: the size is known only once the head is complete
        s.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  b"Content-Length: 100000000\r\n\r\n")
        status, hdrs, body = read_response(s.makefile("rb"))
        assert status == 413 and "max_body_bytes" in json.loads(body)["error"]
    still_serving(hard_server.http_port)


def test_head_sent_slowly_past_the_limit_gets_431_before_it_ends(hard_server: ServerThread) -> None:
    """httptools buffers a header until its end: the limit must hold before that."""
    with socket.create_connection(("127.0.0.1", hard_server.http_port), timeout=10) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
        data = b""
        for _ in range(40):  # up to 320 KiB, never ending the header
            try:
                s.sendall(b"a" * 8192)
            except OSError:
                break
            time.sleep(0.01)
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                data += s.recv(65536)
            s.setblocking(True)
            if data:
                break
        s.settimeout(5)
        while b"\r\n\r\n" not in data and (chunk := s.recv(65536)):
            data += chunk
        assert data.startswith(b"HTTP/1.1 431"), data[:100]


def _inp(**over: object) -> dict:
    return {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16, **over}


LENIENT = {
    "uneven nesting, numbers": {"inputs": [_inp(data=[[1.0] * 10, [1.0] * 6]), _inp(name="INPUT1")]},
    "numbers beside lists": {"inputs": [_inp(data=[1.0, [1.0] * 15]), _inp(name="INPUT1")]},
    "uneven nesting, BYTES": {"inputs": [_t("INPUT0", "BYTES", [2, 4], data=[["a"] * 5, ["b"] * 3])]},
    "duplicate output names": {"inputs": [_inp(), _inp(name="INPUT1")],
                               "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT0"}]},
}


@pytest.mark.parametrize("case", list(LENIENT))
def test_lenient_bodies_are_400(hard_server: ServerThread, case: str) -> None:
    model = "identity_bytes" if "BYTES" in case else "add_sub"
    status, _, body = post(hard_server.http_port, f"/v2/models/{model}/infer", json.dumps(LENIENT[case]))
    assert status == 400, body
    assert json.loads(body)["error"]


def test_input_with_data_and_binary_data_size_is_400(hard_server: ServerThread) -> None:
    """Which of the two would be the input? Neither is guessed (the binary part is there too)."""
    raw = b"\0" * 64
    body, headers = binary_body([_inp(parameters={"binary_data_size": 64}),
                                 {k: v for k, v in _inp(name="INPUT1", parameters={"binary_data_size": 64}).items()
                                  if k != "data"}], raw + raw)
    status, _, out = post(hard_server.http_port, "/v2/models/add_sub/infer", body, headers)
    assert status == 400, out
    assert "both 'data' and parameters.binary_data_size" in json.loads(out)["error"]


def test_even_nesting_is_still_accepted(hard_server: ServerThread) -> None:
    body = {"inputs": [_inp(data=[[1.0] * 8, [1.0] * 8]), _inp(name="INPUT1", data=[[[2.0] * 4] * 2] * 2)]}
    status, _, out = post(hard_server.http_port, "/v2/models/add_sub/infer", json.dumps(body))
    assert status == 200, out
    assert json.loads(out)["outputs"][0]["data"] == [3.0] * 16


def test_empty_version_segment_is_400(hard_server: ServerThread) -> None:
    port = hard_server.http_port
    status, _, body = post(port, "/v2/models/add_sub/versions//infer", GOOD)
    assert status == 400 and "empty version" in json.loads(body)["error"]
    for path in ("/v2/models/add_sub/versions//ready", "/v2/models/add_sub/versions//config"):
        status, body = get(port, path)
        assert status == 400 and "empty version" in json.loads(body)["error"], path
    assert post(port, "/v2/models/add_sub/versions/1/infer", GOOD)[0] == 200


@pytest.mark.parametrize(("name", "value"), [("header_timeout_s", 0), ("body_timeout_s", -1.0),
                                             ("max_connections", -1), ("fd_reserve", -5),
                                             ("health_connections", -1)])
def test_limit_settings_are_validated(name: str, value: float) -> None:
    from gateway.settings import ServerSettings

    with pytest.raises(ValueError, match=name):
        ServerSettings.load(env={}, overrides={"demo": True, name: value})
