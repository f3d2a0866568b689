"""ModelStreamInfer with tritonclient's streaming clients (sync callback and aio iterator).

Every request on the stream gets exactly one answer; a bad request gets an error message and
the stream goes on; answers are matched to requests by id, whatever their order.
"""

from __future__ import annotations

import queue
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.testing import ServerThread


def mlp_reference(repo: Path, x: np.ndarray, version: str = "2") -> np.ndarray:
    sess = ort.InferenceSession(str(repo / "mlp" / version / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"INPUT0": x})[0]


def inp(x: np.ndarray) -> list[grpcclient.InferInput]:
    i = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return [i]


def test_thousand_requests_on_one_stream(grpc_server: ServerThread, repo: Path) -> None:
    n, bad_at = 1000, 500
    xs = np.random.default_rng(7).standard_normal((n, 64)).astype(np.float32)
    expected = mlp_reference(repo, xs)
    answers: queue.Queue = queue.Queue()
    c = grpcclient.InferenceServerClient(grpc_server.grpc_url)
    c.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(n):
            if i == bad_at:  # wrong inner dimension: refused by the core, answered on the stream
                c.async_stream_infer("mlp", inp(np.zeros((1, 3), np.float32)), request_id="bad")
            c.async_stream_infer("mlp", inp(xs[i : i + 1]), request_id=str(i))
        got: dict[str, np.ndarray] = {}
        errors = []
        for _ in range(n + 1):
            result, error = answers.get(timeout=60)
            if error is not None:
                errors.append(error)
            else:
                rid = result.get_response().id
                assert rid not in got, f"answer {rid} came twice"
                got[rid] = result.as_numpy("OUTPUT0")
    finally:
        c.stop_stream()
    assert len(errors) == 1 and "INPUT0" in errors[0].message()
    assert sorted(got, key=int) == [str(i) for i in range(n)]
    for i in range(n):
        np.testing.assert_allclose(got[str(i)][0], expected[i], rtol=1e-5, atol=1e-5)
    assert answers.empty()


@pytest.mark.asyncio
async def test_aio_stream(grpc_server: ServerThread, repo: Path) -> None:
    xs = np.random.default_rng(8).standard_normal((50, 64)).astype(np.float32)
    expected = mlp_reference(repo, xs)

    async def requests():
        for i in range(50):
            yield {"model_name": "mlp", "inputs": inp(xs[i : i + 1]), "request_id": str(i)}
            if i == 25:
                yield {"model_name": "nope", "inputs": inp(xs[i : i + 1]), "request_id": "bad"}

    got, errors = {}, []
    async with aioclient.InferenceServerClient(grpc_server.grpc_url) as c:
        async for result, error in c.stream_infer(requests(), stream_timeout=60):
            if error is not None:
                errors.append(error)
            else:
                got[result.get_response().id] = result.as_numpy("OUTPUT0")
            if len(got) + len(errors) == 51:
                break
    assert len(errors) == 1 and "nope" in errors[0].message()
    assert sorted(got, key=int) == [str(i) for i in range(50)]
    for i in range(50):
        np.testing.assert_allclose(got[str(i)][0], expected[i], rtol=1e-5, atol=1e-5)


def test_stream_error_answer_names_the_request(grpc_server: ServerThread) -> None:
    """With the raw stubs an error answer carries the request's id, so it can be matched."""
    def reqs():
        r = service_pb2.ModelInferRequest(model_name="mlp", id="raw-bad")
        r.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 64])
        r.raw_input_contents.append(b"\x00" * 3)  # malformed: refused by decode
        yield r
        ok = service_pb2.ModelInferRequest(model_name="mlp", id="raw-ok")
        ok.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 64])
        ok.raw_input_contents.append(b"\x00" * 256)
        yield ok

    with grpc.insecure_channel(grpc_server.grpc_url) as ch:
        answers = list(service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelStreamInfer(reqs(), timeout=30))
    by_id = {a.infer_response.id: a for a in answers}
    assert set(by_id) == {"raw-bad", "raw-ok"}
    assert "'INPUT0'" in by_id["raw-bad"].error_message
    assert by_id["raw-ok"].error_message == "" and len(by_id["raw-ok"].infer_response.raw_output_contents) == 1


def test_stream_cancelled_mid_flight_computes_none_of_its_queued_work(tmp_path: Path, grpc_front: str) -> None:
    """Requests queued on a stream that the client cancels are dropped, never computed: the model
    holds batches for 2 s (max_queue_delay_us), the stream is cancelled after its 20 requests were
    queued, and after the delay has passed the model has run nothing; the server keeps serving."""
    from gateway.demo import mlp_model

    model_dir = tmp_path / "slow_mlp"
    (model_dir / "1").mkdir(parents=True)
    import onnx

    onnx.save(mlp_model(seed=3), str(model_dir / "1" / "model.onnx"))
    (model_dir / "config.toml").write_text('max_batch_size = 64\nmax_queue_delay_us = 2000000\nexecution = "inline"\n')
    with ServerThread(repository=tmp_path, grpc_front=grpc_front) as srv:
        c = grpcclient.InferenceServerClient(srv.grpc_url)
        answers: queue.Queue = queue.Queue()
        c.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i in range(20):  # distinct inputs: identical ones would share one queued computation
            c.async_stream_infer("slow_mlp", inp(np.full((1, 64), i, np.float32)), request_id=str(i))

        def queued() -> int:
            async def rows() -> int:
                return srv.app.registry.get("slow_mlp").batcher.queue.rows
            return srv.call(rows())

        deadline = time.monotonic() + 5
        while queued() < 20:
            assert time.monotonic() < deadline, "the stream's requests never reached the queue"
            time.sleep(0.01)
        c.stop_stream(cancel_requests=True)
        time.sleep(2.5)  # past the 2 s batch delay: anything still queued would have run by now
        stats = c.get_inference_statistics("slow_mlp").model_stats[0]
        assert stats.inference_count == 0 and stats.execution_count == 0, stats
        results = []
        while not answers.empty():  # tritonclient reports its own cancellation to the callback
            result, error = answers.get()
            results.append(result if error is None else error.status())
        assert all(r == "StatusCode.CANCELLED" for r in results), results
        assert queued() == 0
        r = c.infer("slow_mlp", inp(np.zeros((1, 64), np.float32)))  # runs after its own 2 s delay
        assert r.as_numpy("OUTPUT0").shape == (1, 10)
        c.close()
