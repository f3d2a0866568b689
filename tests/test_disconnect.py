"""Work whose caller is gone is dropped before it reaches the backend, and counted as CANCELLED.

HTTP: a client that closes its side (EOF) is gone (nginx's 499): its queued requests are cancelled
at once, whatever is parked is dropped, nothing more is written. gRPC: a call the client cancels,
or a stream whose channel it closes, drops its queued work. Storms run over real sockets against
real onnxruntime models that are slow enough for requests to queue behind a running batch (a
thread-executed chain of matmuls) or held by a long queue delay; the assertions are about counts
(every request is computed or cancelled, exactly once) and leaks, never about tight timings.

The pipeline's ticket types (a batcher ``Pending``, a ``SplitGroup``, a shadow pair) are also
checked one by one against the scripted backend of tests/test_batcher.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from models import OPSET, write_model
from onnx import TensorProto, helper, numpy_helper
from test_batcher import Collector, make, passes, req
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.demo import mlp_model
from gateway.logs import ACCESS_LOGGER
from gateway.pipeline.shadow import ShadowTarget
from gateway.pipeline.shadow_compare import ShadowComparison
from gateway.testing import ServerThread

WIDTH = 512
# coalesce = false: the storms send identical requests, which would otherwise share one computation
SLOW = 'max_batch_size = 4\nmax_queue_delay_us = 0\nmax_queue_size = 4096\nexecution = "thread"\ncoalesce = false\n'
HELD = "max_batch_size = 256\nmax_queue_delay_us = 30000000\nmax_queue_size = 4096\ncoalesce = false\n"  # waits 30 s


def slow_model(layers: int = 300) -> Any:
    """INPUT0 FP32 [batch, 16] -> OUTPUT0 [batch, 4] through ``layers`` 512x512 matmuls (one shared,
    orthogonal weight: values stay finite): ~10-20 ms a batch on one core, so requests queue."""
    rng = np.random.default_rng(7)
    w = np.linalg.qr(rng.standard_normal((WIDTH, WIDTH)))[0].astype(np.float32)
    inits = [numpy_helper.from_array(rng.standard_normal((16, WIDTH)).astype(np.float32), "W_in"),
             numpy_helper.from_array(w, "W"),
             numpy_helper.from_array(rng.standard_normal((WIDTH, 4)).astype(np.float32), "W_out")]
    nodes = [helper.make_node("MatMul", ["INPUT0", "W_in"], ["h0"])]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "W"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("MatMul", [f"h{layers}", "W_out"], ["OUTPUT0"]))
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["b", 16])],
                              [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["b", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def infer_bytes(model: str, width: int) -> bytes:
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, width], "datatype": "FP32",
                                   "data": [0.25] * width}]}).encode()
    return (f"POST /v2/models/{model}/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def stats(srv: ServerThread, model: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{srv.http_url}/v2/models/{model}/stats", timeout=30) as r:
        s = json.load(r)["model_stats"][0]
    return s


def cancelled(srv: ServerThread, model: str) -> int:
    async def read() -> int:
        return srv.app.registry.get(model).stats.fail_by_code.get("CANCELLED", 0)  # type: ignore[union-attr]
    return srv.call(read())  # type: ignore[no-any-return]


def state(srv: ServerThread) -> dict[str, int]:
    """What the server holds now, read on its loop."""
    async def read() -> dict[str, int]:
        app = srv.app
        assert app is not None
        versions = list(app.registry.versions())
        return {
            "connections": len(app.http.connections),
            "owed": sum(len(c._tickets) + len(c._parked) for c in app.http.connections),
            "queued_rows": sum(mv.batcher.queue.rows for mv in versions),
            "queued_items": sum(len(mv.batcher.queue) for mv in versions),  # cancelled ones still in a deque too
            "in_flight": sum(mv.batcher.in_flight + mv.batcher.executing for mv in versions),
            "tasks": len(asyncio.all_tasks()),
        }
    return srv.call(read())  # type: ignore[no-any-return]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_until(what: str, pred: Callable[[], bool], timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def quiet(srv: ServerThread, baseline: dict[str, int]) -> bool:
    s = state(srv)
    return (s["connections"] == 0 and s["owed"] == 0 and s["queued_rows"] == 0 and s["queued_items"] == 0
            and s["in_flight"] == 0 and s["tasks"] <= baseline["tasks"])


def storm(port: int, payload: bytes, connections: int, threads: int = 4, wave: int = 25) -> None:
    """``connections`` clients that each send ``payload`` and close at once, from a few threads; each
    thread opens ``wave`` sockets, then sends and closes them one after the other (so that the sends
    come quickly, and no more than threads * wave client sockets are open at once)."""
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            while n > 0:
                k = min(wave, n)
                socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(k)]
                for s in socks:
                    s.sendall(payload)
                    s.close()
                n -= k
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    per = [connections // threads + (i < connections % threads) for i in range(threads)]
    ts = [threading.Thread(target=run, args=(n,)) for n in per]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors, errors


def serves(srv: ServerThread, model: str, width: int) -> None:
    body = infer_bytes(model, width).split(b"\r\n\r\n", 1)[1]
    r = urllib.request.Request(f"http://{srv.http_url}/v2/models/{model}/infer", data=body,
                               headers={"content-type": "application/json"})
    with urllib.request.urlopen(r, timeout=60) as resp:
        doc = json.load(resp)
    assert resp.status == 200 and doc["outputs"][0]["shape"] == [1, 4 if model == "slow" else 10]


@pytest.fixture
def slow_server(tmp_path: Path, loop_name: str) -> Iterator[ServerThread]:
    write_model(tmp_path, "slow", 1, slow_model(), SLOW)
    write_model(tmp_path, "held", 1, mlp_model(seed=3), HELD)
    with ServerThread(repository=tmp_path, loop=loop_name, max_connections=2048) as srv:
        serves(srv, "slow", 16)  # warm: the backend's thread pool exists before the baseline
        yield srv


def baseline_of(srv: ServerThread) -> dict[str, int]:
    wait_until("the warm-up connection to close", lambda: state(srv)["connections"] == 0)
    return {**state(srv), "fds": open_fds()}


def check_no_leaks(srv: ServerThread, base: dict[str, int]) -> None:
    wait_until("the server to drop every connection, ticket and queued item", lambda: quiet(srv, base))
    wait_until("file descriptors back to the baseline", lambda: open_fds() <= base["fds"] + 8)


# ---- HTTP ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("connections", "pipelined"), [(1000, 1), (100, 10)], ids=["1000x1", "100x10"])
def test_http_clients_that_close_at_once_are_not_computed(slow_server: ServerThread, connections: int,
                                                          pipelined: int) -> None:
    """Requests queue behind the running batch (a slow model on a thread); their clients' EOFs drop
    them: most are never computed, each one is counted exactly once (computed or CANCELLED), and
    afterwards the server holds nothing and still serves."""
    srv = slow_server
    base = baseline_of(srv)
    before = stats(srv, "slow")
    sent = connections * pipelined
    storm(srv.http_port, infer_bytes("slow", 16) * pipelined, connections)
    check_no_leaks(srv, base)
    after = stats(srv, "slow")
    computed = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    dropped = cancelled(srv, "slow")
    failed = after["inference_stats"]["fail"]["count"] - before["inference_stats"]["fail"]["count"]
    assert computed + dropped == sent, (computed, dropped, sent)  # nothing lost, nothing counted twice
    assert failed == dropped  # no failure but cancellation
    assert computed <= sent // 2, f"{computed} of {sent} computed for clients that had left"
    assert after["inference_count"] - before["inference_count"] == computed  # batch-1 requests: rows = requests
    serves(srv, "slow", 16)


def test_paused_pipelining_connection_whose_client_left_is_dropped(tmp_path: Path, loop_name: str) -> None:
    """Past max_pipelined_requests a connection is not read, so its client's EOF is not delivered: the
    sweep finds it gone (poll, POLLRDHUP) and cancels its queued requests, long before their batch."""
    write_model(tmp_path, "held", 1, mlp_model(seed=3), HELD)
    with ServerThread(repository=tmp_path, loop=loop_name, max_pipelined_requests=4) as srv:
        base = baseline_of(srv)
        storm(srv.http_port, infer_bytes("held", 64) * 10, 5, threads=1, wave=5)
        wait_until("the sweep to cancel the 50 queued requests", lambda: cancelled(srv, "held") == 50, 30)
        check_no_leaks(srv, base)
        s = stats(srv, "held")
        assert s["execution_count"] == 0 and s["inference_count"] == 0
        assert s["inference_stats"]["fail"]["count"] == 50


def test_eof_cancels_queued_and_drops_parked_answers(slow_server: ServerThread) -> None:
    """One connection: a request to the held model (queued for 30 s), then one to the slow model
    (computed, its answer parked behind the first): at EOF the first is cancelled, the parked answer
    is dropped, nothing is written after the close."""
    srv = slow_server
    base = baseline_of(srv)
    s = socket.create_connection(("127.0.0.1", srv.http_port), timeout=30)
    s.sendall(infer_bytes("held", 64) + infer_bytes("slow", 16))

    def parked() -> bool:
        async def read() -> bool:
            assert srv.app is not None
            return any(c._parked for c in srv.app.http.connections)
        return bool(srv.call(read()))

    wait_until("the second answer to be parked", parked)
    s.shutdown(socket.SHUT_WR)  # a half-close is a close: the client is gone
    assert s.recv(65536) == b""  # nothing written: neither an answer nor a 499
    s.close()
    check_no_leaks(srv, base)
    assert cancelled(srv, "held") == 1 and stats(srv, "held")["execution_count"] == 0


def test_access_log_says_499_for_requests_whose_client_left(tmp_path: Path) -> None:
    write_model(tmp_path, "held", 1, mlp_model(seed=3), HELD)
    lines: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(record.getMessage()))

    logger = logging.getLogger(ACCESS_LOGGER)
    handler, level = Collect(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with ServerThread(repository=tmp_path, access_log=True) as srv:
            base = baseline_of(srv)
            s = socket.create_connection(("127.0.0.1", srv.http_port), timeout=30)
            s.sendall(infer_bytes("held", 64) * 3)
            wait_until("three queued requests", lambda: state(srv)["queued_rows"] == 3)
            s.close()
            check_no_leaks(srv, base)
            assert cancelled(srv, "held") == 3
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    gone = [x for x in lines if x["path"] == "/v2/models/held/infer"]
    assert [x["status"] for x in gone] == [499, 499, 499]
    assert all(x["response_bytes"] is None for x in gone)


def test_cancelled_requests_show_in_metrics(slow_server: ServerThread) -> None:
    srv = slow_server
    base = baseline_of(srv)
    storm(srv.http_port, infer_bytes("held", 64), 20, threads=1, wave=20)
    check_no_leaks(srv, base)
    with urllib.request.urlopen(f"http://{srv.http_url}/metrics", timeout=30) as r:
        text = r.read().decode()
    assert 'gateway_requests_total{model="held",outcome="cancelled",version="1"} 20.0' in text
    assert 'nv_inference_request_failure{model="held",reason="CANCELED",version="1"} 20.0' in text


# ---- gRPC ------------------------------------------------------------------------------------------
def grpc_inputs(width: int) -> list[grpcclient.InferInput]:
    i = grpcclient.InferInput("INPUT0", [1, width], "FP32")
    i.set_data_from_numpy(np.full((1, width), 0.25, np.float32))
    return [i]


def test_grpc_cancelled_calls_drop_their_queued_work(slow_server: ServerThread) -> None:
    """grpc.aio cancels the handler's task when the client cancels; ``DataPlane.infer`` then cancels
    the queued ticket."""
    srv = slow_server
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    answers: queue.Queue = queue.Queue()
    calls = [c.async_infer("held", grpc_inputs(64), callback=lambda r, e: answers.put((r, e))) for _ in range(50)]
    wait_until("50 queued calls", lambda: state(srv)["queued_rows"] == 50)
    for call in calls:
        call.cancel()
    wait_until("the queue to drop the 50 calls", lambda: cancelled(srv, "held") == 50)
    wait_until("nothing queued", lambda: state(srv)["queued_items"] == 0)
    s = c.get_inference_statistics("held").model_stats[0]
    assert s.execution_count == 0 and s.inference_stats.fail.count == 50
    r = c.infer("slow", grpc_inputs(16))
    assert r.as_numpy("OUTPUT0").shape == (1, 4)
    c.close()


def stream_request(model: str, width: int, rid: str) -> service_pb2.ModelInferRequest:
    r = service_pb2.ModelInferRequest(model_name=model, id=rid)
    r.inputs.add(name="INPUT0", datatype="FP32", shape=[1, width])
    r.raw_input_contents.append(np.full((1, width), 0.25, np.float32).tobytes())
    return r


@pytest.mark.parametrize("half_closed", [False, True], ids=["open", "half-closed"])
def test_grpc_stream_whose_channel_closes_drops_its_queued_work(slow_server: ServerThread, half_closed: bool) -> None:
    """A stream's requests are queued (held model); the client closes its channel without reading
    the answers (with the stream still open, or after it half-closed): the queued work is dropped."""
    srv = slow_server
    release = threading.Event()

    def requests() -> Iterator[service_pb2.ModelInferRequest]:
        for i in range(20):
            yield stream_request("held", 64, str(i))
        if not half_closed:
            release.wait(60)

    channel = grpc.insecure_channel(srv.grpc_url)
    responses = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests(), timeout=60)
    wait_until("20 queued stream requests", lambda: state(srv)["queued_rows"] == 20)
    channel.close()
    release.set()
    with pytest.raises(grpc.RpcError):
        next(responses)
    wait_until("the queue to drop the stream's 20 requests", lambda: cancelled(srv, "held") == 20)
    wait_until("nothing queued", lambda: state(srv)["queued_items"] == 0)
    assert stats(srv, "held")["execution_count"] == 0
    with grpcclient.InferenceServerClient(srv.grpc_url) as c:
        assert c.infer("slow", grpc_inputs(16)).as_numpy("OUTPUT0").shape == (1, 4)


# ---- the ticket types, one by one (scripted backend, no sockets) ----------------------------------
def test_cancelled_pending_leaves_the_row_count_at_once_and_is_counted_once() -> None:
    async def main() -> None:
        admit, backend, clock = make(delay_us=10_000_000)
        c = Collector()
        t1 = admit.submit(req(1.0), c.cb(1.0))
        admit.submit(req(2.0), c.cb(2.0))
        t1.cancel()
        t1.cancel()  # twice: still one cancellation
        assert admit.queue.rows == 1  # its room is free for live requests before any flush
        clock.now += 11
        await passes()
        assert backend.batches == [1] and set(c.results) == {2.0}
        assert admit.stats.fail_by_code == {"CANCELLED": 1}
        assert admit.stats.fail_ns == 11_000_000_000  # queued 11 s (the fake clock) until dropped
        t1.cancel()  # after it left the queue: nothing more
        assert admit.stats.fail_by_code == {"CANCELLED": 1}

    asyncio.run(main())


def test_cancelled_split_request_is_one_cancellation() -> None:
    async def main() -> None:
        admit, backend, clock = make(delay_us=10_000_000, max_batch=4)
        c = Collector()
        group = admit.submit(req(1.0, rows=10), c.cb(1.0))  # three chunks: 4, 4, 2
        assert admit.queue.rows == 10
        group.cancel()
        assert admit.queue.rows == 0
        clock.now += 11
        await passes()
        assert backend.batches == [] and c.results == {}
        assert admit.stats.fail_by_code == {"CANCELLED": 1}

    asyncio.run(main())


def test_a_done_callback_that_cancels_queued_work_is_honoured() -> None:
    """An inline batch's callbacks run inside the flush; a ticket they cancel is not dispatched next."""
    async def main() -> None:
        admit, backend, _ = make(delay_us=0, max_batch=1)
        c = Collector()
        later: list[Any] = []
        first = c.cb(1.0)

        def done(resp: Any, err: Any) -> None:
            first(resp, err)
            later[0].cancel()

        admit.submit(req(1.0), done)
        later.append(admit.submit(req(2.0), c.cb(2.0)))
        await passes()
        assert backend.batches == [1] and set(c.results) == {1.0}
        assert admit.stats.fail_by_code == {"CANCELLED": 1}

    asyncio.run(main())


def test_cancelled_shadow_pair_drops_the_copy_and_frees_its_slot() -> None:
    async def main() -> None:
        primary, pb, clock = make(delay_us=10_000_000)
        shadow, sb, _ = make(delay_us=10_000_000)
        shadow.batcher.clock = shadow.clock = clock  # one clock for both versions
        target = ShadowTarget(primary, shadow, 1.0, ShadowComparison(), clock, max_outstanding=4)
        c = Collector()
        ticket = target.submit(req(1.0), c.cb(1.0))
        assert target.outstanding == 1 and shadow.queue.rows == 1
        ticket.cancel()
        assert target.outstanding == 0 and primary.queue.rows == 0 and shadow.queue.rows == 0
        clock.now += 11
        await passes()
        assert pb.batches == [] and sb.batches == [] and c.results == {}
        assert primary.stats.fail_by_code == {"CANCELLED": 1} and shadow.stats.fail_by_code == {"CANCELLED": 1}
        assert target.comparison.compared == 0
        # an answered pair is not undone by a late cancel: its comparison still happens
        ticket = target.submit(req(2.0), c.cb(2.0))
        clock.now += 11
        primary.batcher._flush()
        ticket.cancel()
        shadow.batcher._flush()
        assert set(c.results) == {2.0} and target.comparison.compared == 1 and target.outstanding == 0

    asyncio.run(main())
