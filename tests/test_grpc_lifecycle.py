"""Deadlines, cancellation, repository control under load, message limits and graceful stop.

Each test gets its own gateway over its own repository (these tests change server state).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from models import OPSET, write_model
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.demo import add_sub_model, mlp_model
from gateway.front.grpc.server import server_options
from gateway.settings import ServerSettings
from gateway.testing import ServerThread

SLOW = "max_batch_size = 8\nmax_queue_delay_us = 2000000\n"  # a batch waits 2 s to fill up


def inp(x: np.ndarray, name: str = "INPUT0") -> list[grpcclient.InferInput]:
    i = grpcclient.InferInput(name, list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return [i]


def doubler_model() -> object:
    """INPUT0 FP32 [batch, n] -> OUTPUT0 [batch, 2n]: an answer twice the size of the request."""
    graph = helper.make_graph(
        [helper.make_node("Concat", ["INPUT0", "INPUT0"], ["OUTPUT0"], axis=1)], "doubler",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", "n2"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


@pytest.fixture
def slow_server(tmp_path: Path, loop_name: str, grpc_front: str) -> Iterator[ServerThread]:
    write_model(tmp_path, "slow", 1, mlp_model(seed=3), SLOW)
    with ServerThread(repository=tmp_path, loop=loop_name, grpc_front=grpc_front) as srv:
        yield srv


def stats(c: grpcclient.InferenceServerClient, model: str) -> object:
    return c.get_inference_statistics(model).model_stats[0]


def test_deadline_and_cancel_leave_work_uncomputed(slow_server: ServerThread) -> None:
    c = grpcclient.InferenceServerClient(slow_server.grpc_url)
    x = np.ones((1, 64), np.float32)
    t0 = time.monotonic()
    with pytest.raises(InferenceServerException) as info:
        c.infer("slow", inp(x), client_timeout=0.001)
    assert str(info.value.status()) == "StatusCode.DEADLINE_EXCEEDED"
    # Triton's `timeout` parameter (µs) is a deadline too, enforced in the queue by the server.
    with pytest.raises(InferenceServerException) as info:
        c.infer("slow", inp(x), timeout=1000, client_timeout=10)
    assert str(info.value.status()) == "StatusCode.DEADLINE_EXCEEDED"
    # A call the client cancels while it waits in the batch queue.
    answers: list = []
    call = c.async_infer("slow", inp(x), callback=lambda result, error: answers.append((result, error)))
    time.sleep(0.2)
    call.cancel()
    # Wait out the queue delay: anything still queued would have run by now.
    time.sleep(max(0.0, 2.6 - (time.monotonic() - t0)))
    s = stats(c, "slow")
    assert s.execution_count == 0 and s.inference_count == 0
    assert s.inference_stats.success.count == 0
    assert len(answers) == 1 and answers[0][0] is None


def test_graceful_stop_finishes_in_flight_calls(tmp_path: Path, loop_name: str, grpc_front: str) -> None:
    write_model(tmp_path, "slowish", 1, mlp_model(seed=4), "max_batch_size = 8\nmax_queue_delay_us = 300000\n")
    srv = ServerThread(repository=tmp_path, loop=loop_name, grpc_front=grpc_front)
    srv.__enter__()
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    done = threading.Event()
    answers: list = []
    c.async_infer("slowish", inp(np.ones((2, 64), np.float32)),
                  callback=lambda result, error: (answers.append((result, error)), done.set()))
    time.sleep(0.1)  # the call is queued, waiting for its batch
    srv.__exit__(None, None, None)  # stop(grace=5): stop accepting, finish in-flight
    assert done.wait(10)
    result, error = answers[0]
    assert error is None and result.as_numpy("OUTPUT0").shape == (2, 10)
    with pytest.raises(InferenceServerException):
        c.is_server_live()


def test_load_unload_while_another_model_is_under_load(tmp_path: Path, loop_name: str, grpc_front: str) -> None:
    write_model(tmp_path, "busy", 1, mlp_model(seed=5))
    write_model(tmp_path, "other", 1, add_sub_model())
    with ServerThread(repository=tmp_path, loop=loop_name, grpc_front=grpc_front) as srv:
        stop = threading.Event()
        failures: list[BaseException] = []
        counts = [0] * 4

        def hammer(k: int) -> None:
            c = grpcclient.InferenceServerClient(srv.grpc_url)
            x = np.full((1, 64), k, np.float32)
            while not stop.is_set():
                try:
                    c.infer("busy", inp(x))
                    counts[k] += 1
                except BaseException as exc:  # noqa: BLE001 - any failure is the finding
                    failures.append(exc)

        threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        try:
            c = grpcclient.InferenceServerClient(srv.grpc_url)
            for _ in range(3):
                c.unload_model("other")
                assert not c.is_model_ready("other")
                states = {m.name: m.state for m in c.get_model_repository_index().models}
                assert states["other"] == "UNAVAILABLE" and states["busy"] == "READY"
                with pytest.raises(InferenceServerException) as info:
                    c.infer("other", inp(np.zeros((1, 16), np.float32)))
                assert str(info.value.status()) in ("StatusCode.UNAVAILABLE", "StatusCode.NOT_FOUND")
                c.load_model("other")
                assert c.is_model_ready("other")
            with pytest.raises(InferenceServerException) as info:
                c.load_model("not_in_repo")
            assert str(info.value.status()) == "StatusCode.NOT_FOUND"
            c.unload_model("other")
            with grpc.insecure_channel(srv.grpc_url) as ch:
                index = service_pb2_grpc.GRPCInferenceServiceStub(ch).RepositoryIndex(
                    service_pb2.RepositoryIndexRequest(ready=True), timeout=10)
            assert [m.name for m in index.models] == ["busy"]
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not failures, failures[:3]
        assert all(n > 0 for n in counts)


def test_message_size_limits(tmp_path: Path, grpc_front: str) -> None:
    write_model(tmp_path, "doubler", 1, doubler_model())
    limit = 1 << 20
    with ServerThread(repository=tmp_path, loop="uvloop", grpc_max_message_bytes=limit,
                      grpc_front=grpc_front) as srv:
        c = grpcclient.InferenceServerClient(srv.grpc_url)
        ok = c.infer("doubler", inp(np.ones((1, 1000), np.float32)))
        assert ok.as_numpy("OUTPUT0").shape == (1, 2000)
        with pytest.raises(InferenceServerException) as info:  # request over the limit
            c.infer("doubler", inp(np.ones((1, limit // 4 + 1), np.float32)))
        assert str(info.value.status()) == "StatusCode.RESOURCE_EXHAUSTED"
        assert "larger than max" in info.value.message()
        with pytest.raises(InferenceServerException) as info:  # answer over the limit
            c.infer("doubler", inp(np.ones((1, int(limit * 0.3)), np.float32)))
        assert str(info.value.status()) == "StatusCode.RESOURCE_EXHAUSTED"
        assert c.is_server_live()


def test_server_options_follow_settings() -> None:
    s = ServerSettings(demo=True, grpc_max_message_bytes=1234, grpc_keepalive_time_s=7.5,
                       grpc_keepalive_timeout_s=2.0)
    opts = dict(server_options(s))
    assert opts["grpc.max_receive_message_length"] == opts["grpc.max_send_message_length"] == 1234
    assert opts["grpc.keepalive_time_ms"] == 7500 and opts["grpc.keepalive_timeout_ms"] == 2000
