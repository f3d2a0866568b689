"""Queue bound (429), deadlines (504), not ready (503), repository load/unload over HTTP."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from models import mlp_model, write_model
from test_http_errors import get, post

from gateway.testing import ServerThread

ROW = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]})


@pytest.fixture(scope="module")
def slow_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("slow")
    # waits up to 0.6 s for a fuller batch and holds at most 2 rows
    write_model(repo, "waity", 1, mlp_model(seed=3),
                "max_batch_size = 64\nmax_queue_delay_us = 600000\nmax_queue_size = 2\n")
    write_model(repo, "mlp", 1, mlp_model(seed=1))
    return repo


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def slow_server(slow_repo: Path, request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    with ServerThread(repository=slow_repo, loop=request.param, grpc_port=-1) as srv:
        yield srv


def test_queue_full_gets_429_with_retry_after(slow_server: ServerThread) -> None:
    port = slow_server.http_port
    two = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2, 64], "data": [0.5] * 128}]})
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, port, "/v2/models/waity/infer", two)  # fills the queue for 0.6 s
        time.sleep(0.2)
        status, hdrs, body = post(port, "/v2/models/waity/infer", ROW)
        assert status == 429, body
        assert hdrs["retry-after"] == "1"
        assert "queue is full" in json.loads(body)["error"]
        assert first.result()[0] == 200  # the queued request is still answered
    status, _, _ = post(port, "/v2/models/mlp/infer", ROW)
    assert status == 200


def test_deadline_while_queued_gets_504_and_is_not_computed(slow_server: ServerThread) -> None:
    port = slow_server.http_port
    before = json.loads(get(port, "/v2/models/waity/stats")[1])["model_stats"][0]
    body = json.dumps({"inputs": json.loads(ROW)["inputs"], "parameters": {"timeout": 1000}})
    t0 = time.perf_counter()
    status, _, payload = post(port, "/v2/models/waity/infer", body)
    elapsed = time.perf_counter() - t0
    assert status == 504, payload
    assert "deadline" in json.loads(payload)["error"]
    assert elapsed < 0.5  # answered at the deadline, not after the 0.6 s batching delay
    after = json.loads(get(port, "/v2/models/waity/stats")[1])["model_stats"][0]
    assert after["execution_count"] == before["execution_count"]
    assert after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"] + 1


def test_repository_index_unload_load(slow_server: ServerThread) -> None:
    port = slow_server.http_port
    status, _, body = post(port, "/v2/repository/index", "{}")
    assert status == 200
    index = {(m["name"], m["version"]): m["state"] for m in json.loads(body)}
    assert index[("mlp", "1")] == "READY"
    status, _, _ = post(port, "/v2/repository/models/mlp/unload", "")
    assert status == 200
    status, _, body = post(port, "/v2/models/mlp/infer", ROW)
    assert status == 404, body  # known to the repository, not loaded: Triton's wording
    assert b"has no available versions" in body
    assert get(port, "/v2/models/mlp/ready")[0] in (404, 503)
    assert get(port, "/v2/health/ready")[0] == 200  # remaining models are ready
    status, _, body = post(port, "/v2/repository/models/mlp/load", "{}")
    assert status == 200, body
    assert post(port, "/v2/models/mlp/infer", ROW)[0] == 200
    status, _, body = post(port, "/v2/repository/models/nope/load", "")
    assert status == 404


def test_metrics_endpoint(slow_server: ServerThread) -> None:
    port = slow_server.http_port
    for _ in range(3):
        assert post(port, "/v2/models/mlp/infer", ROW)[0] == 200
    status, text = get(port, "/metrics")
    assert status == 200
    t = text.decode()
    for name in ("gateway_requests_total", "gateway_request_stage_seconds_bucket", "gateway_batch_rows_bucket",
                 "gateway_batch_release_total", "gateway_queue_rows"):
        assert name in t, name
    line = next(x for x in t.splitlines()
                if x.startswith('gateway_requests_total{model="mlp",outcome="success",version="1"}'))
    assert float(line.split()[-1]) >= 3
    assert 'stage="queue"' in t and 'stage="compute"' in t and 'reason="delay"' in t
