"""Graceful stop as orchestrators need it: on SIGTERM the server turns not-ready but keeps serving
for ``drain_s`` (load balancers take it out), then stops and exits 0; SIGINT skips the drain.

Real processes (``python -m gateway serve --demo``), real signals, real sockets, tritonclient.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from test_cli import free_port, wait_ready


def start(drain_s: float) -> tuple[subprocess.Popen, int, int]:
    http_port, grpc_port = free_port(), free_port()
    env = {**os.environ, "GATEWAY_LOG_LEVEL": "INFO", "GATEWAY_DRAIN_S": str(drain_s)}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--demo", "--http-port", str(http_port),
                             "--grpc-port", str(grpc_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wait_ready(http_port, proc)
    return proc, http_port, grpc_port


def status(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code


def infer_http(port: int) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")  # a new connection each time
    try:
        x = np.ones((1, 64), np.float32)
        inp = httpclient.InferInput("INPUT0", [1, 64], "FP32")
        inp.set_data_from_numpy(x)
        assert client.infer("mlp", [inp]).as_numpy("OUTPUT0").shape == (1, 10)
    finally:
        client.close()


def test_sigterm_turns_not_ready_keeps_serving_then_exits_zero() -> None:
    drain = 3.0
    proc, http_port, grpc_port = start(drain)
    try:
        base = f"http://127.0.0.1:{http_port}"
        assert status(base + "/v2/health/ready") == 200
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert grpc.is_server_ready()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # Within the drain window: not ready, but live and answering, on new connections too.
        deadline = t0 + 1.5
        while status(base + "/v2/health/ready") != 503:
            assert time.monotonic() < deadline, "readiness did not turn 503 after SIGTERM"
            time.sleep(0.05)
        served = errors = 0
        while time.monotonic() - t0 < drain - 0.8:
            try:
                assert status(base + "/v2/health/live") == 200
                infer_http(http_port)
                served += 1
            except Exception:  # noqa: BLE001 - counted: there must be none
                errors += 1
        assert not grpc.is_server_ready()
        inp = grpcclient.InferInput("INPUT0", [1, 64], "FP32")
        inp.set_data_from_numpy(np.ones((1, 64), np.float32))
        assert grpc.infer("mlp", [inp]).as_numpy("OUTPUT0").shape == (1, 10)
        grpc.close()
        assert served > 0 and errors == 0, (served, errors)
        assert proc.wait(30) == 0
        elapsed = time.monotonic() - t0
        assert elapsed >= drain - 0.2, f"stopped after {elapsed:.2f} s, before drain_s={drain}"
        out = proc.stdout.read() if proc.stdout else ""
        assert "drain_s" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigint_skips_the_drain() -> None:
    proc, http_port, _ = start(30.0)
    try:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        assert time.monotonic() - t0 < 15, "SIGINT waited for the drain"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_second_sigterm_ends_the_drain_early() -> None:
    proc, http_port, _ = start(30.0)
    try:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        while status(f"http://127.0.0.1:{http_port}/v2/health/ready") != 503:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert time.monotonic() - t0 < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
