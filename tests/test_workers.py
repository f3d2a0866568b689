"""`gateway serve --workers 2`: every scrape shows the sum over both workers; load/unload is refused.

The kernel spreads new connections over the two processes (SO_REUSEPORT). Before the workers
shared their statistics, a scrape showed whichever worker answered it, so scrapes alternated
between partial counts. Here requests go over many new connections (both workers serve some:
their snapshot files say how many each), then every scrape, over HTTP and gRPC, must show
exactly the total once the snapshot interval has passed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from test_cli import free_port
from tritonclient.utils import InferenceServerException

N_HTTP, N_GRPC, N_BAD = 40, 8, 4
INTERVAL_S = 0.2


def body(width: int = 16) -> bytes:
    return json.dumps({"inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, width], "data": [1] * width},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, width], "data": [2] * width}]}).encode()


def post(port: int, path: str, data: bytes) -> tuple[int, bytes]:
    """One request on a new connection (urllib closes it after each)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return r.read()


def worker_success(stats_dir: Path) -> dict[int, int]:
    """add_sub:1 successes per worker, from the snapshot files the workers share."""
    out = {}
    for f in stats_dir.glob("worker-*.json"):
        doc = json.loads(f.read_text())
        out[doc["worker"]] = sum(t["success_count"] for n, v, t in doc["versions"] if (n, v) == ("add_sub", "1"))
    return out


def sample(fams: dict[str, Any], name: str, **labels: str) -> float:
    return next(s.value for f in fams.values() for s in f.samples if s.name == name and s.labels == labels)


@pytest.fixture
def two_workers(tmp_path: Path) -> Any:
    http_port, grpc_port = free_port(), free_port()
    # TMPDIR: the parent creates its private statistics directory there, where the test can look
    env = {**os.environ, "GATEWAY_LOG_LEVEL": "WARNING", "TMPDIR": str(tmp_path),
           "GATEWAY_WORKER_STATS_INTERVAL_S": str(INTERVAL_S)}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--demo", "--workers", "2",
                             "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        end = time.time() + 120
        while sum("gateway ready" in x for x in lines) < 2:  # both workers listen
            assert proc.poll() is None and time.time() < end, "".join(lines)
            time.sleep(0.1)
        yield proc, http_port, grpc_port, tmp_path, lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_every_scrape_sums_all_workers_and_repository_changes_are_refused(two_workers: Any) -> None:
    proc, http_port, grpc_port, tmp, lines = two_workers
    (stats_dir,) = tmp.glob("gateway-workers-*")
    for _ in range(N_HTTP):
        status, out = post(http_port, "/v2/models/add_sub/infer", body())
        assert status == 200, out
    x = np.ones((1, 16), np.float32)
    for _ in range(N_GRPC):  # a client per request: a new connection each time
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        ins = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for i in ins:
            i.set_data_from_numpy(x)
        assert c.infer("add_sub", ins).as_numpy("OUTPUT0").shape == (1, 16)
        c.close()
    for _ in range(N_BAD):
        assert post(http_port, "/v2/models/add_sub/infer", body(width=15))[0] == 400
    total = N_HTTP + N_GRPC

    end = time.time() + 10  # the staleness bound is one interval; allow for a slow machine
    while sum(worker_success(stats_dir).values()) != total and time.time() < end:
        time.sleep(INTERVAL_S)
    split = worker_success(stats_dir)
    assert sorted(split) == [0, 1] and sum(split.values()) == total, split
    assert min(split.values()) > 0, split  # the kernel spread the connections over both workers

    for _ in range(8):  # each scrape on a new connection, answered by either worker
        fams = {f.name: f for f in text_string_to_metric_families(get(http_port, "/metrics").decode())}
        lv = {"model": "add_sub", "version": "1"}
        assert sample(fams, "nv_inference_request_success_total", **lv) == total
        assert sample(fams, "gateway_requests_total", outcome="success", **lv) == total
        assert sample(fams, "gateway_requests_total", outcome="invalid_argument", **lv) == N_BAD
        assert sample(fams, "nv_inference_request_failure_total", reason="OTHER", **lv) == N_BAD
        assert sample(fams, "nv_inference_count_total", **lv) == total
        # histograms are summed bucket by bucket
        assert sample(fams, "gateway_request_stage_seconds_bucket", stage="total", le="+Inf", **lv) == total
        assert sample(fams, "gateway_request_stage_seconds_count", stage="total", **lv) == total
        assert sample(fams, "gateway_workers_reporting") == 2
        assert sample(fams, "nv_inference_pending_request_count", **lv) == 0
    for _ in range(6):
        st = json.loads(get(http_port, "/v2/models/add_sub/stats"))["model_stats"][0]
        assert st["inference_stats"]["success"]["count"] == total and st["inference_count"] == total
        assert st["inference_stats"]["fail"]["count"] == N_BAD
    for _ in range(4):
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        gs = c.get_inference_statistics("add_sub").model_stats[0]
        assert gs.inference_stats.success.count == total and gs.inference_stats.fail.count == N_BAD
        c.close()

    # load/unload would reach one worker only: refused, with the reason, over both protocols
    for action in ("unload", "load"):
        status, out = post(http_port, f"/v2/repository/models/mlp/{action}", b"{}")
        assert status == 503 and "worker processes" in json.loads(out)["error"], out
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    with pytest.raises(InferenceServerException) as e:
        c.unload_model("mlp")
    assert "UNAVAILABLE" in str(e.value.status()) and "worker processes" in e.value.message()
    c.close()
    mlp = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 64], "data": [0] * 64}]})
    for _ in range(10):  # nothing was unloaded anywhere
        assert post(http_port, "/v2/models/mlp/infer", mlp.encode())[0] == 200

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, "".join(lines)
    assert not stats_dir.exists()  # the snapshots are removed at shutdown


def test_peers_read_the_newest_snapshot_whatever_order_the_writes_finish(tmp_path: Path) -> None:
    """The final write at shutdown may race a periodic one still in its thread: the older loses."""
    from gateway.observe.workers import WorkerStats

    n = [0]
    w = WorkerStats(tmp_path, 0, 1.0, lambda: {"versions": [], "unresolved": [], "n": n[0]})
    older = w._doc()
    n[0] = 1
    newer = w._doc()
    w._write(newer)
    w._write(older)  # finishes last, was taken first
    (tmp_path / "worker-2.json").write_bytes(b"{not json")  # a damaged file is skipped
    peer = WorkerStats(tmp_path, 1, 1.0, lambda: {})
    assert [d["n"] for d in peer.peers()] == [1]
