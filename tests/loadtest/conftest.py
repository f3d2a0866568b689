"""Fixtures for the loadtest suite: stub servers with known behaviour, started as subprocesses.

The stubs run in their own processes (a server sharing the tester's interpreter would share its GIL
and distort exactly what these tests measure). Every stub listens on a free 127.0.0.1 port and is
killed at teardown; startup waits are bounded.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
REPO = HERE.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


@pytest.fixture
def start_server() -> Iterator[Callable[..., int]]:
    """``start_server(script, *args) -> port``: run ``tests/loadtest/<script>`` on a free port."""
    procs: list[subprocess.Popen] = []

    def start(script: str, *args: str) -> int:
        port = free_port()
        proc = subprocess.Popen([sys.executable, str(HERE / script), str(port), *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        wait_port(port, proc)
        return port

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture
def http_stub(start_server) -> Callable[..., int]:
    return lambda *args: start_server("kserve_stub.py", *args)


@pytest.fixture
def grpc_stub(start_server) -> Callable[..., int]:
    return lambda *args: start_server("grpc_stub.py", *args)
