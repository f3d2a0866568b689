"""`gateway serve --demo` as a newcomer runs it: starts, answers, and exits 0 on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("server did not become ready")


@contextlib.contextmanager
def demo_process(*flags: str, **env: str) -> Iterator[tuple[subprocess.Popen, int, int]]:
    """`gateway serve --demo` on free ports as a real process, ready; stopped with SIGINT (no drain)
    and killed if it does not exit. Yields (process, HTTP port, gRPC port)."""
    http_port, grpc_port = free_port(), free_port()
    env = {**os.environ, "GATEWAY_LOG_LEVEL": "WARNING", "GATEWAY_DRAIN_S": "0", **env}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--demo", "--http-port", str(http_port),
                             "--grpc-port", str(grpc_port), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        wait_ready(http_port, proc)
        yield proc, http_port, grpc_port
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_demo_then_sigterm_drains_and_exits_zero() -> None:
    http_port, grpc_port = free_port(), free_port()
    env = {**os.environ, "GATEWAY_LOG_LEVEL": "WARNING", "GATEWAY_DRAIN_S": "0.2"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--demo", "--http-port", str(http_port),
                             "--grpc-port", str(grpc_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        wait_ready(http_port, proc)
        body = json.dumps({"inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [1] * 16},
            {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": [2] * 16}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{http_port}/v2/models/add_sub/infer", data=body,
                                     headers={"Content-Type": "application/json"})
        out = json.loads(urllib.request.urlopen(req, timeout=10).read())
        assert out["outputs"][0]["data"] == [3.0] * 16
        meta = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/mlp", timeout=10).read())
        assert meta["versions"] == ["1", "2"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        output = proc.stdout.read() if proc.stdout else ""
        assert "gateway ready" in output and "curl" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_rejects_missing_repository() -> None:
    r = subprocess.run([sys.executable, "-m", "gateway", "serve"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "model repository" in r.stderr


def test_workers_share_the_ports_and_stop_together() -> None:
    http_port, grpc_port = free_port(), free_port()
    env = {**os.environ, "GATEWAY_LOG_LEVEL": "WARNING", "GATEWAY_DRAIN_S": "0.2"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--demo", "--workers", "2",
                             "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        wait_ready(http_port, proc)
        end = time.time() + 90
        children: list[str] = []
        while time.time() < end and len(children) < 2:  # both workers up (each prints its banner)
            children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            time.sleep(0.2)
        assert len(children) >= 2
        for _ in range(20):  # new connections each time: the kernel spreads them over the workers
            body = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/mlp", timeout=10).read()
            assert json.loads(body)["name"] == "mlp"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        out = proc.stdout.read() if proc.stdout else ""
        assert rc == 0, out[-3000:]
        assert out.count("gateway ready") == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_output_read_only_in_part_is_not_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`gateway admin ... | head -5` under `set -o pipefail`: the reader leaving before the output
    is all written (EPIPE on a write or on the last flush) is a clean exit, not a traceback."""
    import io

    from gateway import cli

    fd = os.open(tmp_path / "stdout", os.O_WRONLY | os.O_CREAT)

    class Gone(io.TextIOBase):
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self) -> int:
            return fd

    monkeypatch.setattr(sys, "stdout", Gone())
    try:
        assert cli.main(["demo", "export", str(tmp_path / "demo")]) == 0  # it prints where it wrote
    finally:
        os.close(fd)
