"""Request flow under load, end to end over real sockets: priority levels, admission by expected
wait, and the server-wide in-flight caps.

The model here is the bottleneck on purpose (``slow_model``: ~2 ms a row, one row per batch, run
in the thread pool), so a queue really builds in the batcher, where these rules act. Latencies are
compared as ratios within one run, and thresholds are calibrated from the server's own estimate,
so a slower or noisier machine shifts both sides alike.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from models import identity_model, mlp_model, slow_model, write_model
from test_http_errors import get, post
from tritonclient.utils import InferenceServerException

from gateway.testing import ServerThread

SLOW = 'max_batch_size = 1\nexecution = "thread"\nintra_op_threads = 1\ncoalesce = false\n'  # the loads repeat inputs
PRIO = SLOW + "priority_levels = 2\ndefault_priority_level = 2\npriority_aging_us = 10000000\n"
HOLD = "max_batch_size = 64\nmax_queue_delay_us = 400000\ncoalesce = false\n"  # requests wait 0.4 s for a fuller batch


def body(width: int = 512, priority: int | None = None, timeout_us: int | None = None) -> bytes:
    params = {k: v for k, v in (("priority", priority), ("timeout", timeout_us)) if v is not None}
    doc: dict = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, width], "data": [0.5] * width}]}
    if params:
        doc["parameters"] = params
    return json.dumps(doc).encode()


def pipelined(port: int, path: str, bodies: list[bytes], statuses: list[int]) -> threading.Thread:
    """One connection sends every request at once (HTTP pipelining), then reads the answers into
    ``statuses``; the thread is started and returned."""
    def run() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(b"".join(b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                               b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(b), b) for b in bodies))
            f = s.makefile("rb")
            for _ in bodies:
                statuses.append(int(f.readline().split()[1]))
                length = 0
                while (line := f.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                f.read(length)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def wait_for(cond: object, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.002)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("admission")
    write_model(root, "prio", 1, slow_model(), PRIO)
    write_model(root, "fifo", 1, slow_model(), SLOW)
    write_model(root, "tiny", 1, identity_model("FP32", width=1), HOLD)
    write_model(root, "waity", 1, mlp_model(seed=3), HOLD)
    return root


@pytest.fixture(scope="module")
def srv(repo: Path) -> Iterator[ServerThread]:
    with ServerThread(repository=repo, grpc_port=-1) as s:
        yield s


# ---- priorities -----------------------------------------------------------------------------

def saturate(port: int, model: str, seconds: float = 3.0, low_threads: int = 8) -> tuple[list, list, list]:
    """Closed-loop low-priority clients keep the model's queue full; one client sends a
    high-priority request every 20 ms. Returns (low latencies, high latencies, all statuses)."""
    low_body, high_body = body(priority=2), body(priority=1)
    lows: list[float] = []
    highs: list[float] = []
    statuses: list[int] = []
    stop = time.monotonic() + seconds

    def client(payload: bytes, out: list[float], pause: float, start: float) -> None:
        time.sleep(start)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            conn.request("POST", f"/v2/models/{model}/infer", body=payload,
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            out.append(time.perf_counter() - t0)
            statuses.append(r.status)
            if pause:
                time.sleep(pause)
        conn.close()

    threads = [threading.Thread(target=client, args=(low_body, lows, 0.0, 0.0)) for _ in range(low_threads)]
    threads.append(threading.Thread(target=client, args=(high_body, highs, 0.02, 0.3)))  # once the queue is full
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lows, highs, statuses


def test_high_priority_overtakes_a_saturating_low_priority_load(srv: ServerThread) -> None:
    lows, highs, statuses = saturate(srv.http_port, "prio")
    assert set(statuses) == {200}
    low_p99, high_p99 = np.percentile(lows, 99), np.percentile(highs, 99)
    assert len(highs) >= 50
    assert high_p99 < 0.5 * low_p99, (high_p99, low_p99)
    assert len(lows) >= 200  # the low level is served all along: no starvation


def test_without_priorities_the_same_load_waits_alike(srv: ServerThread) -> None:
    """The control: the load above is one where order matters (the parameter is ignored here)."""
    lows, highs, statuses = saturate(srv.http_port, "fifo", seconds=2.0)
    assert set(statuses) == {200}
    assert np.percentile(highs, 99) > 0.6 * np.percentile(lows, 99)


# ---- admission by expected wait ---------------------------------------------------------------

def test_requests_that_cannot_make_their_deadline_get_429_at_once(srv: ServerThread) -> None:
    port = srv.http_port
    mv = srv.app.registry.get("fifo")
    for _ in range(5):  # batches measured: the estimate is known
        assert post(port, "/v2/models/fifo/infer", body())[0] == 200
    fails_before = dict(mv.stats.fail_by_code)
    stats_before = json.loads(get(port, "/v2/models/fifo/stats")[1])["model_stats"][0]
    statuses: list[int] = []
    flood = [pipelined(port, "/v2/models/fifo/infer", [body()] * 30, statuses) for _ in range(4)]
    wait_for(lambda: mv.batcher.queue.rows >= 60)
    start, _ = mv.batcher.expected(1, 1, time.perf_counter())
    assert start > 0.05, start  # ~60 rows of ~2 ms ahead
    deadline_s = 0.3 * start  # this request cannot start in time
    t0 = time.perf_counter()
    status, hdrs, payload = post(port, "/v2/models/fifo/infer", body(timeout_us=int(deadline_s * 1e6)))
    answered = time.perf_counter() - t0
    assert status == 429, payload
    assert answered < 0.5 * deadline_s, (answered, deadline_s)  # refused at once, not at the deadline
    assert int(hdrs["retry-after"]) >= 1
    assert "would wait about" in json.loads(payload)["error"]
    status, _, payload = post(port, "/v2/models/fifo/infer", body(timeout_us=30_000_000))  # this one can
    assert status == 200, payload
    for t in flood:
        t.join(30)
    assert statuses == [200] * 120  # requests without a deadline are all served
    assert mv.stats.fail_by_code.get("RESOURCE_EXHAUSTED", 0) == fails_before.get("RESOURCE_EXHAUSTED", 0) + 1
    stats_after = json.loads(get(port, "/v2/models/fifo/stats")[1])["model_stats"][0]
    assert stats_after["inference_stats"]["fail"]["count"] == stats_before["inference_stats"]["fail"]["count"] + 1


# ---- server-wide caps -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def capped(repo: Path) -> Iterator[ServerThread]:
    with ServerThread(repository=repo, max_inflight_requests=4, max_inflight_bytes=1000) as s:
        yield s


def held(s: ServerThread) -> tuple[int, int]:
    cap = s.dataplane.inflight
    return cap.requests, cap.bytes


def test_past_max_inflight_requests_429_at_once_and_health_still_answers(capped: ServerThread) -> None:
    port = capped.http_port
    statuses: list[int] = []
    flood = pipelined(port, "/v2/models/tiny/infer", [body(width=1)] * 4, statuses)  # wait 0.4 s in the queue
    wait_for(lambda: held(capped) == (4, 16))
    t0 = time.perf_counter()
    status, hdrs, payload = post(port, "/v2/models/waity/infer", body(width=64))
    assert status == 429 and time.perf_counter() - t0 < 0.2, payload  # another model: the cap is server-wide
    assert hdrs["retry-after"] == "1" and "max_inflight_requests" in json.loads(payload)["error"]
    g = grpcclient.InferenceServerClient(capped.grpc_url)
    x = grpcclient.InferInput("INPUT0", [1, 1], "FP32")
    x.set_data_from_numpy(np.ones((1, 1), np.float32))
    with pytest.raises(InferenceServerException) as info:
        g.infer("tiny", [x])
    assert "RESOURCE_EXHAUSTED" in str(info.value.status())
    for path in ("/v2/health/ready", "/v2/health/live", "/metrics"):
        assert get(port, path)[0] == 200, path
    assert g.is_server_ready()
    assert held(capped) == (4, 16)
    flood.join(10)
    assert statuses == [200] * 4
    wait_for(lambda: held(capped) == (0, 0))  # released with the answers: no leak
    assert post(port, "/v2/models/tiny/infer", body(width=1))[0] == 200
    # a request whose client gives up while it is queued releases its claim too
    with pytest.raises(InferenceServerException):
        g.infer("tiny", [x], client_timeout=0.1)
    wait_for(lambda: held(capped) == (0, 0), timeout=2.0)
    g.close()


def test_past_max_inflight_bytes_429_at_once(capped: ServerThread) -> None:
    port = capped.http_port
    statuses: list[int] = []
    flood = pipelined(port, "/v2/models/waity/infer", [body(width=64)] * 3, statuses)  # 3 x 256 bytes
    wait_for(lambda: held(capped) == (3, 768))
    status, hdrs, payload = post(port, "/v2/models/waity/infer", body(width=64))  # 1024 > 1000
    assert status == 429 and "max_inflight_bytes" in json.loads(payload)["error"], payload
    assert hdrs["retry-after"] == "1"
    assert post(port, "/v2/models/tiny/infer", body(width=1))[0] == 200  # 4 more bytes fit
    flood.join(10)
    assert statuses == [200] * 3
    wait_for(lambda: held(capped) == (0, 0))
