"""Shedding at the door (``pipeline.door``) and accepting in bursts (``front.http.accept``).

The door's logic runs on a fake clock; the loop tests block a real loop for a pass, as a burst of
work does, and check what the door and the listener do within and after that pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.client
import json
import socket
import time
from pathlib import Path

import pytest
from models import write_model

from gateway.demo import mlp_model
from gateway.front.http.accept import Listener, bind
from gateway.pipeline.door import Door
from gateway.testing import ServerThread


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_late_tick_shuts_the_door_until_a_tick_on_time() -> None:
    clock = Clock()
    door = Door(0.05, tick_s=0.005, clock=clock)
    door.observe(100.0, 100.0)
    assert not door.refuse() and not door.refuse()  # on time
    clock.t = 100.2
    door.observe(100.2, 100.005)  # fired 195 ms late, with two requests since the last tick
    assert door.shut and door.lag_s == pytest.approx(0.195)
    assert door.refuse() and door.refuse()
    assert door.refused == 2
    clock.t = 100.206
    door.observe(100.206, 100.205)  # 1 ms late: open again
    assert not door.shut and not door.refuse()
    assert door.refused == 2


def test_lag_with_one_request_in_it_is_that_requests_own_cost_and_sheds_nothing() -> None:
    clock = Clock()
    door = Door(0.05, tick_s=0.005, clock=clock)
    door.observe(100.0, 100.0)
    clock.t = 100.3  # one huge request held the pass for 300 ms
    assert not door.refuse()
    door.observe(100.3, 100.005)
    assert not door.shut  # one request since the last tick: nobody waited behind it
    clock.t = 100.6
    assert not door.refuse()  # the next lone one, in a pass of its own: served too
    assert door.refused == 0


def test_a_pass_that_outlives_the_target_shuts_the_door_within_the_pass() -> None:
    """No tick has fired yet (the loop is still in the same pass), but it is overdue by more than
    the target: the requests read now have waited at least that long."""
    clock = Clock()
    door = Door(0.05, tick_s=0.005, clock=clock)
    door.observe(100.0, 100.0)  # next tick due at 100.005
    clock.t = 100.054
    assert not door.refuse() and not door.refuse()  # overdue by 49 ms: still inside the target
    clock.t = 100.056
    assert door.refuse()
    clock.t = 100.0561
    assert door.shut and door.refuse()  # stays shut for the rest of the pass
    assert door.refused == 2


def test_max_lag_is_per_scrape() -> None:
    door = Door(0.05, clock=Clock())
    door.observe(1.0, 0.9)
    door.observe(1.01, 1.009)
    assert door.take_max_lag() == pytest.approx(0.1)
    assert door.take_max_lag() == pytest.approx(0.001)  # since then: the last tick's lag


def test_a_door_with_target_zero_never_refuses() -> None:
    async def main() -> int:
        door = Door(0.0)
        door.start()
        time.sleep(0.05)  # a pass far past any target
        refused = sum(door.refuse() for _ in range(10))
        door.stop()
        return refused

    assert asyncio.run(main()) == 0


def test_on_a_real_loop_the_door_shuts_in_a_long_pass_and_reopens_after_it() -> None:
    async def main() -> tuple[bool, bool, bool]:
        door = Door(0.02, tick_s=0.005)
        door.start()
        await asyncio.sleep(0.03)
        before = door.refuse()
        time.sleep(0.06)  # one pass of 60 ms: the loop does not reach its timers
        door.refuse()  # the first request of the pass since the tick: served
        within = door.refuse()
        await asyncio.sleep(0.05)  # ticks fire on time again
        after = door.refuse()
        door.stop()
        return before, within, after

    before, within, after = asyncio.run(main())
    assert (before, within, after) == (False, True, False)


def test_the_error_is_429_with_retry_after() -> None:
    err = Door(0.05).error()
    assert err.code.name == "RESOURCE_EXHAUSTED" and err.retry_after_s == 1
    assert "shed_loop_lag_ms" in err.message


# ---- accepting -------------------------------------------------------------------------------------
class Counting(asyncio.Protocol):
    made: list[float] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Counting.made.append(time.perf_counter())


@pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])
def test_connections_pending_after_a_busy_pass_are_all_taken_in_the_next(loop_name: str) -> None:
    """uvloop's own server takes one connection per pass; the listener takes a burst."""
    import uvloop

    Counting.made = []

    async def main() -> list[int]:
        socks = bind("127.0.0.1", 0, 1024, False)
        listener = Listener(socks, Counting, burst=512)
        listener.start()
        port = socks[0].getsockname()[1]
        clients = []
        for _ in range(300):
            c = socket.socket()
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(("127.0.0.1", port))
            clients.append(c)
        per_pass = []
        for _ in range(6):
            n = len(Counting.made)
            time.sleep(0.01)  # a busy pass
            await asyncio.sleep(0)
            await asyncio.sleep(0)  # the attach takes one more pass
            per_pass.append(len(Counting.made) - n)
        listener.close()
        for c in clients:
            c.close()
        return per_pass

    runner = uvloop.run if loop_name == "uvloop" else asyncio.run
    per_pass = runner(main())
    assert sum(per_pass) == 300
    assert max(per_pass) >= 250, per_pass


def test_running_out_of_fds_pauses_accepting_instead_of_spinning() -> None:
    class Exhausted(socket.socket):
        calls = 0

        def accept(self):  # type: ignore[no-untyped-def,override]
            Exhausted.calls += 1
            if Exhausted.calls == 1:
                raise OSError(errno.EMFILE, "Too many open files")
            return super().accept()

    async def main() -> tuple[int, int]:
        lsock = Exhausted(socket.AF_INET, socket.SOCK_STREAM)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(16)
        listener = Listener([lsock], Counting, pause_s=0.2)
        listener.start()
        c = socket.create_connection(lsock.getsockname())
        await asyncio.sleep(0.1)
        during = Exhausted.calls  # one failed accept, then no more tries while paused
        await asyncio.sleep(0.3)
        listener.close()
        c.close()
        return during, listener.accepted

    Counting.made = []
    during, accepted = asyncio.run(main())
    assert during == 1
    assert accepted == 1  # taken once the pause ended


def test_bind_gives_every_address_the_same_port() -> None:
    socks = bind("localhost", 0, 16, False)
    try:
        ports = {s.getsockname()[1] for s in socks}
        assert len(ports) == 1 and ports != {0}
    finally:
        for s in socks:
            s.close()


# ---- through the server ----------------------------------------------------------------------------
# The controller's timing is tested above and under real overload in test_overload.py; here the door
# is held shut (its timer stopped) so that what the fronts do with a refusal is deterministic.
async def _shut(srv: ServerThread, shut: bool) -> int:
    door = srv.app.dataplane.door  # type: ignore[union-attr]
    door.stop()
    if shut:
        door.shut = True
    else:
        door.start()
    return door.refused  # type: ignore[no-any-return]


def test_a_shut_door_refuses_infer_before_decoding_and_serves_health(tmp_path: Path) -> None:
    """429 + Retry-After, counted against the model and in /metrics; the body is never decoded (it
    is not even valid JSON here); health and /metrics are served."""
    write_model(tmp_path, "m", 1, mlp_model(seed=1), "coalesce = false\n")
    with ServerThread(repository=tmp_path, shed_loop_lag_ms=20) as srv:
        host, port = srv.http_url.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        srv.call(_shut(srv, True))
        conn.request("POST", "/v2/models/m/infer", b"{not json")
        r = conn.getresponse()
        answer = json.loads(r.read())
        assert r.status == 429 and r.getheader("retry-after") == "1", (r.status, answer)
        assert "shed_loop_lag_ms" in answer["error"]
        conn.request("GET", "/v2/health/ready")
        r = conn.getresponse()
        assert r.status == 200
        r.read()
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        metrics = r.read().decode()
        assert r.status == 200 and "gateway_door_refused_total 1.0" in metrics
        assert srv.call(_shut(srv, False)) == 1
        body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32",
                                       "data": [0.5] * 64}]}).encode()
        conn.request("POST", "/v2/models/m/infer", body)
        r = conn.getresponse()
        assert r.status == 200, r.read()
        r.read()
        conn.request("GET", "/v2/models/m/stats")
        stats = json.loads(conn.getresponse().read())["model_stats"][0]["inference_stats"]
        assert stats["fail"]["count"] == 1 and stats["success"]["count"] == 1
        conn.close()


def test_a_shut_door_refuses_grpc_infer_and_stream_requests_and_still_answers_health(tmp_path: Path) -> None:
    import grpc
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    write_model(tmp_path, "m", 1, mlp_model(seed=1), "coalesce = false\n")
    with ServerThread(repository=tmp_path, shed_loop_lag_ms=20) as srv:
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        inp = grpcclient.InferInput("INPUT0", [1, 64], "FP32")
        inp.set_data_from_numpy(np.full((1, 64), 0.5, np.float32))
        srv.call(_shut(srv, True))
        with pytest.raises(InferenceServerException) as e:
            client.infer("m", [inp])
        assert e.value.status() == str(grpc.StatusCode.RESOURCE_EXHAUSTED) and "shed_loop_lag_ms" in e.value.message()
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("m")
        answers: list[tuple[object, object]] = []
        client.start_stream(callback=lambda result, error: answers.append((result, error)))
        client.async_stream_infer("m", [inp], request_id="s1")
        client.stop_stream()  # waits for the stream to end
        assert len(answers) == 1 and answers[0][1] is not None and "shed_loop_lag_ms" in str(answers[0][1])
        assert srv.call(_shut(srv, False)) == 2
        assert client.infer("m", [inp]).as_numpy("OUTPUT0").shape == (1, 10)
        client.close()
