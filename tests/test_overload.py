"""Twice the capacity, open loop: goodput holds, the excess is refused at once, /metrics answers.

The demo mlp runs inline, so the event loop thread is the bottleneck: the backlog builds in the
sockets, where only shedding at the door (loop lag) can act. The server is a real process; the load
is ``gateway loadtest`` in another process on the same two cores, so the capacity it measures is
the capacity of this pair. Bounds are looser than the benchmark's numbers (bench/README.md) by the
noise of a shared CI machine, and each is one that the server without shedding fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from test_cli import free_port, wait_ready
from test_grpc_limits import rss_mib

pytest.importorskip("hdrh")  # the loadtest extra

BATCH = 64
SLO_S = 1.0  # a request answered later than this after its intended send time is not goodput


def loadtest(port: int, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "gateway", "loadtest", "run", "--url", f"127.0.0.1:{port}",
                          "-m", "mlp", "--model-version", "2", "--batch", str(BATCH), "--procs", "1",
                          "--timeout", str(SLO_S), "--json", "-q", *args],
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)["summary"]  # type: ignore[no-any-return]


def access_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("{") and '"duration_ms"' in line:
            out.append(json.loads(line))
    return out


class Watch(threading.Thread):
    """Scrapes /metrics on a new connection every 100 ms (as a Prometheus does after a failure) and
    notes the server's memory, while the load runs."""

    def __init__(self, port: int, pid: int) -> None:
        super().__init__(daemon=True)
        self.port, self.pid = port, pid
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.rss: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                    r.read()
                    assert r.status == 200
                self.latencies.append(time.perf_counter() - t0)
            except Exception as exc:  # noted, asserted on below
                self.failures.append(repr(exc))
            self.rss.append(rss_mib(self.pid))
            self.stop.wait(0.1)


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    subprocess.run([sys.executable, "-m", "gateway", "demo", "export", str(tmp_path / "repo")], check=True,
                   capture_output=True)
    with open(tmp_path / "repo" / "mlp" / "config.toml", "a") as f:
        f.write("coalesce = false\n")  # the generator repeats a few payloads: no shared computations
    port = free_port()
    # the access log says how long each answer took on the server (JSON lines, to a file: a pipe
    # nobody reads would stall the server)
    env = {**os.environ, "GATEWAY_LOG_LEVEL": "INFO", "GATEWAY_DRAIN_S": "0", "GATEWAY_ACCESS_LOG": "true",
           "GATEWAY_LOG_FORMAT": "json"}
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--model-repository", str(tmp_path / "repo"),
                             "--http-port", str(port), "--grpc-port", "-1"],
                            stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        wait_ready(port, proc)
        yield proc, port, tmp_path / "server.log"
    finally:
        log.close()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_at_twice_capacity_goodput_holds_and_the_excess_is_refused_at_once(server) -> None:  # type: ignore[no-untyped-def]
    proc, port, log = server
    capacity = loadtest(port, "--closed", "--concurrency", "64", "-d", "4", "--warmup", "1")["ok_rps"]
    assert capacity > 100, capacity
    base_rss = rss_mib(proc.pid)
    watch = Watch(port, proc.pid)
    watch.start()
    over = loadtest(port, "--rate", str(round(2 * capacity)), "-d", "6", "--warmup", "1")
    watch.stop.set()
    watch.join(10)
    planned = over["requests"]["planned"]
    refused = over["errors"].get("http_429", 0)
    other = {k: v for k, v in over["errors"].items() if k != "http_429"}
    goodput = over["ok_rps"] / capacity
    print(f"capacity {capacity:.0f} req/s; at 2x: goodput {goodput:.2f} C, 429 {refused / planned:.0%}, "
          f"other errors {other}, p99 {over['latency_ms']['p99']:.0f} ms; /metrics max "
          f"{max(watch.latencies, default=0) * 1000:.0f} ms; RSS {base_rss:.0f} -> {max(watch.rss):.0f} MiB")

    # the excess is refused, not queued until it times out: the rest is served within the SLO
    assert refused > 0.2 * planned, over["errors"]
    assert sum(other.values()) < 0.02 * planned, other
    # goodput: 0.6-0.8 C here (the access log costs every request, refusals too; bench/overload.sh,
    # without it, measures more); without shedding it is ~0.35 C, most requests timing out. The
    # bound leaves room for the noise of two shared cores, where C itself moves by 15 % run to run.
    assert goodput >= 0.5, goodput
    assert over["latency_ms"]["p99"] < 500, over["latency_ms"]
    # on the server, a refusal is answered where its request is read: within 1 ms (the access log's
    # duration, from the request's last byte to its answer)
    refusals = [line["duration_ms"] for line in access_lines(log) if line.get("status") == 429]
    assert len(refusals) >= 0.9 * refused, (len(refusals), refused)
    refusals.sort()
    assert refusals[int(0.99 * (len(refusals) - 1))] < 1.0, refusals[-10:]
    # /metrics answered throughout, on a new connection each time
    assert not watch.failures, watch.failures[:3]
    assert len(watch.latencies) >= 20 and max(watch.latencies) < 1.0, sorted(watch.latencies)[-5:]
    assert max(watch.rss) < base_rss + 300, (base_rss, max(watch.rss))

    # recovery: right after the overload, a load at half capacity is served in full
    after = loadtest(port, "--rate", str(round(0.5 * capacity)), "-d", "2")
    assert after["errors"] == {} or sum(after["errors"].values()) < 0.01 * after["requests"]["planned"], after["errors"]
    assert after["latency_ms"]["p99"] < 200, after["latency_ms"]
