"""The ``triton`` backend against real KServe v2 gRPC servers: our own gateway as the remote tier.

A gateway tier in front of a gateway tier: the remote servers are real gateways on 127.0.0.1 (their
gRPC front is the same protocol Triton speaks; tritonclient's tests of that front hold it to it),
the front gateway forwards each batch to them. What a real tritonserver adds (PyTriton) is not run
here yet.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from models import slow_model, write_model
from test_cli import free_port

from gateway.backends.triton.endpoint import Endpoint, pick
from gateway.demo import mlp_model
from gateway.model_config import ConfigError, RemoteConfig, parse_config
from gateway.testing import ServerThread

X = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)


def remote_repo(root: Path) -> Path:
    write_model(root, "mlp", 1, mlp_model(seed=7), "coalesce = false\nmax_batch_size = 16\n")
    write_model(root, "slow", 1, slow_model(width=512, depth=1000),
                'coalesce = false\nexecution = "thread"\nmax_batch_size = 4\n')
    return root


def front_repo(root: Path, endpoints: list[str], extra: str = "") -> Path:
    eps = ", ".join(f'"{e}"' for e in endpoints)
    for name, remote in (("far", "mlp"), ("far_slow", "slow")):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.toml").write_text(
            f'backend = "triton"\nendpoints = [{eps}]\nremote_model = "{remote}"\nremote_health_interval_s = 0.2\n'
            f"remote_breaker_open_s = 0.5\ncoalesce = false\n{extra}")
    return root


def reference(x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(mlp_model(seed=7).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"INPUT0": x})[0]  # type: ignore[no-any-return]


def stats(srv: ServerThread, model: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{srv.http_url}/v2/models/{model}/stats", timeout=30) as r:
        return json.load(r)["model_stats"][0]  # type: ignore[no-any-return]


def post(srv: ServerThread, model: str, x: np.ndarray, timeout: float = 30,
         parameters: dict[str, Any] | None = None) -> tuple[int, Any]:
    doc: dict[str, Any] = {"inputs": [{"name": "INPUT0", "shape": list(x.shape), "datatype": "FP32",
                                       "data": x.ravel().tolist()}]}
    if parameters:
        doc["parameters"] = parameters
    req = urllib.request.Request(f"http://{srv.http_url}/v2/models/{model}/infer", json.dumps(doc).encode(),
                                 {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[list[ServerThread], ServerThread, list[int]]]:
    ports = [free_port(), free_port()]
    remotes = [ServerThread(repository=remote_repo(tmp_path / f"r{i}"), grpc_port=p) for i, p in enumerate(ports)]
    for r in remotes:
        r.__enter__()
    front = ServerThread(repository=front_repo(tmp_path / "front", [f"127.0.0.1:{p}" for p in ports]))
    front.__enter__()
    try:
        yield remotes, front, ports
    finally:
        front.__exit__(None, None, None)
        for r in remotes:
            r.__exit__(None, None, None)


def test_results_equal_onnxruntime_over_json_binary_and_grpc(fleet: Any) -> None:
    _, front, _ = fleet
    want = reference(X)
    status, doc = post(front, "far", X)
    assert status == 200, doc
    assert np.allclose(np.asarray(doc["outputs"][0]["data"], np.float32).reshape(want.shape), want, atol=1e-5)
    h = httpclient.InferenceServerClient(front.http_url)
    inp = httpclient.InferInput("INPUT0", list(X.shape), "FP32")
    inp.set_data_from_numpy(X, binary_data=True)
    out = h.infer("far", [inp], outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)])
    assert np.allclose(out.as_numpy("OUTPUT0"), want, atol=1e-5)
    g = grpcclient.InferenceServerClient(front.grpc_url)
    ginp = grpcclient.InferInput("INPUT0", list(X.shape), "FP32")
    ginp.set_data_from_numpy(X)
    assert np.allclose(g.infer("far", [ginp]).as_numpy("OUTPUT0"), want, atol=1e-5)
    # the signature and the batch size were discovered from the remote
    meta = h.get_model_metadata("far")
    assert [i["name"] for i in meta["inputs"]] == ["INPUT0"] and meta["inputs"][0]["shape"] == [-1, 64]
    assert h.get_model_config("far")["max_batch_size"] == 16
    assert h.is_model_ready("far")
    h.close()
    g.close()


def test_concurrent_batches_are_spread_over_both_endpoints(fleet: Any) -> None:
    remotes, front, _ = fleet
    before = [stats(r, "slow")["inference_count"] for r in remotes]  # the front's warm-up ran there
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: post(front, "far_slow", np.full((1, 512), i / 100, np.float32)), range(48)))
    assert all(s == 200 for s, _ in results), [d for s, d in results if s != 200][:2]
    counts = [stats(r, "slow")["inference_count"] - b for r, b in zip(remotes, before, strict=True)]
    assert sum(counts) == 48 and min(counts) > 0, counts


def test_a_killed_endpoint_is_taken_out_and_used_again_when_back(fleet: Any, tmp_path: Path) -> None:
    remotes, front, ports = fleet
    remotes[0].__exit__(None, None, None)  # gone: its port refuses connections
    time.sleep(0.1)
    codes = []
    for _ in range(20):  # answered by the other one: a refused connect is retried, never a lost answer
        codes.append(post(front, "far", X))
    assert [c for c, _ in codes] == [200] * 20, codes
    assert stats(front, "far")["inference_stats"]["fail"]["count"] == 0
    before = stats(remotes[1], "mlp")["inference_count"]
    remotes[0] = ServerThread(repository=remote_repo(tmp_path / "r0b"), grpc_port=ports[0])
    remotes[0].__enter__()
    end = time.monotonic() + 3  # a few health intervals, and one reconnect backoff (at most 1 s)
    used = 0
    while not used and time.monotonic() < end:
        with ThreadPoolExecutor(8) as pool:
            assert all(s == 200 for s, _ in pool.map(
                lambda _: post(front, "far_slow", np.zeros((1, 512), np.float32)), range(16)))
        used = stats(remotes[0], "slow")["inference_count"]
    assert used > 0  # used again
    assert stats(remotes[1], "mlp")["inference_count"] >= before


def test_with_every_endpoint_gone_the_model_is_not_ready_and_requests_get_503_at_once(fleet: Any) -> None:
    remotes, front, _ = fleet
    for r in remotes:
        r.__exit__(None, None, None)
    time.sleep(0.6)
    t0 = time.perf_counter()
    status, doc = post(front, "far", X)
    assert status == 503 and "endpoint" in doc["error"], doc
    assert time.perf_counter() - t0 < 2
    h = httpclient.InferenceServerClient(front.http_url)
    assert not h.is_model_ready("far")
    h.close()


def test_a_short_client_deadline_cancels_the_remote_call(fleet: Any) -> None:
    """The call's gRPC deadline is the request's: the front answers DEADLINE_EXCEEDED when it passes,
    not when the remote would have finished, and the remote drops the work (its statistics)."""
    from tritonclient.utils import InferenceServerException

    remotes, front, _ = fleet
    g = grpcclient.InferenceServerClient(front.grpc_url)
    big = np.ones((4, 512), np.float32)
    inp = grpcclient.InferInput("INPUT0", list(big.shape), "FP32")
    inp.set_data_from_numpy(big)
    g.infer("far_slow", [inp])  # warm
    failed_before = sum(stats(r, "slow")["inference_stats"]["fail"]["count"] for r in remotes)
    with ThreadPoolExecutor(8) as pool:  # both remotes busy for ~100 ms of queued batches each
        busy = [pool.submit(post, front, "far_slow", big) for _ in range(8)]
        time.sleep(0.02)
        t0 = time.perf_counter()
        with pytest.raises(InferenceServerException) as e:
            g.infer("far_slow", [inp], client_timeout=0.03)
        took = time.perf_counter() - t0
        assert all(f.result()[0] == 200 for f in busy)
    assert "deadline" in str(e.value).lower()
    assert took < 0.5, took
    time.sleep(0.3)
    failed = sum(stats(r, "slow")["inference_stats"]["fail"]["count"] for r in remotes) - failed_before
    assert failed >= 1  # the remote gave the call up too (its deadline passed, or it was cancelled)
    g.close()


def test_a_slow_remote_pushes_back_as_429_at_the_front(tmp_path: Path) -> None:
    port = free_port()
    with ServerThread(repository=remote_repo(tmp_path / "r"), grpc_port=port):
        repo = front_repo(tmp_path / "front", [f"127.0.0.1:{port}"],
                          "remote_max_outstanding = 1\nmax_queue_size = 8\n")
        with ServerThread(repository=repo) as front, ThreadPoolExecutor(32) as pool:
            results = list(pool.map(lambda _: post(front, "far_slow", np.ones((4, 512), np.float32)), range(32)))
            codes = [s for s, _ in results]
            assert codes.count(429) > 0 and codes.count(200) > 0, codes
            assert set(codes) <= {200, 429}, codes
            assert all("retry" in d["error"].lower() or "queue" in d["error"] for s, d in results if s == 429)


def test_a_refused_endpoint_at_load_is_skipped_and_the_model_serves_from_the_other(tmp_path: Path) -> None:
    port, dead = free_port(), free_port()
    with ServerThread(repository=remote_repo(tmp_path / "r"), grpc_port=port):
        repo = front_repo(tmp_path / "front", [f"127.0.0.1:{dead}", f"127.0.0.1:{port}"])
        with ServerThread(repository=repo) as front:
            assert [post(front, "far", X)[0] for _ in range(5)] == [200] * 5


def test_no_reachable_endpoint_at_load_is_a_model_error_naming_them(tmp_path: Path) -> None:
    dead = free_port()
    repo = front_repo(tmp_path / "front", [f"127.0.0.1:{dead}"])
    with ServerThread(repository=repo, strict_readiness=False) as front:
        with urllib.request.urlopen(urllib.request.Request(f"http://{front.http_url}/v2/repository/index",
                                                           b"{}", method="POST"), timeout=30) as r:
            index = {m["name"]: m for m in json.load(r)}
        assert index["far"]["state"] == "UNAVAILABLE"
        assert f"127.0.0.1:{dead}" in index["far"]["reason"] and "ModelMetadata" in index["far"]["reason"]


# ---- configuration and the balancer, without servers --------------------------------------------------
def test_remote_settings_are_checked() -> None:
    ok = parse_config("m", {"backend": "triton", "endpoints": ["a:1", "b:2"], "remote_max_outstanding": 2})
    assert ok.remote == RemoteConfig(("a:1", "b:2"), max_outstanding=2) and ok.execution == "thread"
    for raw, field in (({"backend": "triton"}, "endpoints"),
                       ({"backend": "triton", "endpoints": ["nohost"]}, "endpoints"),
                       ({"backend": "triton", "endpoints": ["a:1", "a:1"]}, "endpoints"),
                       ({"backend": "triton", "endpoints": ["a:1"], "remote_timeout_s": 0}, "remote_timeout_s"),
                       ({"backend": "triton", "endpoints": ["a:1"], "device": "cuda"}, "device"),
                       ({"endpoints": ["a:1"]}, "endpoints"),
                       ({"backend": "tensorrt"}, "backend")):
        with pytest.raises(ConfigError, match=f"'{field}'"):
            parse_config("m", raw)


def test_the_balancer_takes_the_least_busy_healthy_endpoint_and_the_breaker_opens_and_probes() -> None:
    r = RemoteConfig(("a:1", "b:2"), max_outstanding=2, breaker_failures=2, breaker_open_s=1.0)
    a, b = Endpoint("a:1", r), Endpoint("b:2", r)
    a.healthy = b.healthy = True
    assert pick([a, b], 0.0) is a
    a.started(0.0)
    assert pick([a, b], 0.0) is b  # fewer in flight
    b.started(0.0)
    b.started(0.0)
    assert pick([a, b], 0.0) is a and not b.available(0.0)  # b is at its bound
    a.finished("UNAVAILABLE", 0.01, 0.0)
    a.started(0.0)
    a.finished("UNAVAILABLE", 0.01, 0.0)  # two in a row: open
    assert a.breaker(0.5) == "open" and pick([a], 0.5) is None
    assert a.breaker(1.1) == "half_open" and pick([a], 1.1) is a
    a.started(1.1)  # the probe
    assert pick([a], 1.1) is None  # one probe at a time
    a.finished("OK", 0.01, 1.2)
    assert a.breaker(1.2) == "closed" and a.failures == 0
    for _ in range(3):  # a client's bad request is no server failure
        a.started(1.3)
        a.finished("INVALID_ARGUMENT", 0.01, 1.3)
    assert a.breaker(1.3) == "closed" and a.errors == {"UNAVAILABLE": 2, "INVALID_ARGUMENT": 3}
    b.healthy = False
    assert pick([b], 0.0) is None


def test_per_endpoint_metrics(fleet: Any) -> None:
    _, front, ports = fleet
    for _ in range(3):
        assert post(front, "far", X)[0] == 200
    with urllib.request.urlopen(f"http://{front.http_url}/metrics", timeout=30) as r:
        text = r.read().decode()
    lab = f'endpoint="127.0.0.1:{ports[0]}",model="far",version="1"'
    assert f"gateway_remote_healthy{{{lab}}} 1.0" in text
    assert f"gateway_remote_breaker_state{{{lab}}} 0.0" in text
    assert f"gateway_remote_outstanding{{{lab}}} 0.0" in text
    ok = [line for line in text.splitlines() if line.startswith("gateway_remote_calls_total{")
          and 'model="far"' in line and 'code="OK"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in ok) == 3  # the warm-up ran on its own channel
    assert f'gateway_remote_call_seconds_count{{{lab}}}' in text


def test_a_client_that_leaves_cancels_its_remote_call(fleet: Any) -> None:
    """Every request of a batch in flight is gone (the client closed its connection): the remote
    call is cancelled rather than left to finish for nobody."""
    remotes, front, _ = fleet
    x = np.ones((4, 512), np.float32)
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [4, 512], "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    host, port = front.http_url.split(":")
    with ThreadPoolExecutor(8) as pool:  # the remotes are busy: the call below waits there
        busy = [pool.submit(post, front, "far_slow", x) for _ in range(8)]
        time.sleep(0.02)
        s = socket.create_connection((host, int(port)))
        s.sendall(b"POST /v2/models/far_slow/infer HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
                  + body)
        time.sleep(0.03)  # dispatched: its call is at a remote
        s.close()
        assert all(f.result()[0] == 200 for f in busy)
    time.sleep(0.2)
    with urllib.request.urlopen(f"http://{front.http_url}/metrics", timeout=30) as r:
        text = r.read().decode()
    cancelled = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("gateway_remote_calls_total{") and 'model="far_slow"' in line
                    and 'code="CANCELLED"' in line)
    assert cancelled == 1, [line for line in text.splitlines() if line.startswith("gateway_remote_calls_total{")]
    assert stats(front, "far_slow")["inference_stats"]["fail"]["count"] == 1


def test_pass_through_forwards_each_request_as_it_came(tmp_path: Path) -> None:
    """remote_batching = false: concurrent requests are never merged; each is one remote call
    (the remote's own batching may still merge them there)."""
    port = free_port()
    with ServerThread(repository=remote_repo(tmp_path / "r"), grpc_port=port):
        merged = front_repo(tmp_path / "merged", [f"127.0.0.1:{port}"], "remote_max_outstanding = 1\n")
        solo = front_repo(tmp_path / "solo", [f"127.0.0.1:{port}"], "remote_max_outstanding = 1\nremote_batching = false\n")
        calls = {}
        for name, repo in (("merged", merged), ("solo", solo)):
            with ServerThread(repository=repo) as front, ThreadPoolExecutor(12) as pool:
                answers = list(pool.map(lambda _, f=front: post(f, "far_slow", np.ones((1, 512), np.float32)),
                                        range(12)))
                assert all(s == 200 for s, _ in answers)
                calls[name] = stats(front, "far_slow")["execution_count"]
        assert calls["solo"] == 12
        assert calls["merged"] < calls["solo"], calls
