"""Closed-loop throughput of ``gateway loadtest`` agrees with perf_analyzer's against our gateway.

The comparison has to measure the server, not the clients. perf_analyzer spends ~150 us of CPU per
request (its sync HTTP mode: a thread per request in flight), so on a 2-core machine shared with the
gateway, batch-1 requests make perf_analyzer itself the bottleneck (~6k req/s while the gateway
answers ~11k req/s to a lighter client). With 64-row requests the gateway's compute dominates, and
both tools see the gateway's throughput. perf_analyzer counts rows ("infer/sec" = requests x batch),
so its figure is divided by the batch.

Needs a perf_analyzer binary: set PERF_ANALYZER (``../shared/bench/get_perf_analyzer.sh DIR`` provisions
one and prints its path; .ci/run does). Skipped otherwise. Both tools drive ``gateway serve`` (model
"mlp", INPUT0 FP32 [-1,64]) at the same concurrency with requests of 64 rows, one after the other on
a warm server: over HTTP with binary tensors, and over gRPC (ours with the native client, on
libnghttp2; perf_analyzer with grpc-core).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gateway.loadtest.cli import main

PA = os.environ.get("PERF_ANALYZER", "")
REPO = Path(__file__).resolve().parents[2]
CONCURRENCY = {"http-binary": 2, "grpc": 4}
"""Calls in flight. gRPC: 4, so that the server never waits for the next call: at 2, a closed loop
is bound by each call's round trip, and grpc-core's adds more to it than our client's (perf_analyzer
measured 10-15 % below us at 2; at 4 both see the server's throughput)."""
BATCH = 64

pytestmark = pytest.mark.skipif(not PA or not os.access(PA, os.X_OK), reason="set PERF_ANALYZER to a perf_analyzer")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gateway_ports(tmp_path: Path):
    import onnx

    from gateway.demo import mlp_model

    (tmp_path / "mlp" / "1").mkdir(parents=True)
    onnx.save(mlp_model(seed=1, sizes=(64, 1024, 1024, 10)), str(tmp_path / "mlp" / "1" / "model.onnx"))
    # perf_analyzer sends the same tensor in every request: with coalescing on, its concurrent
    # requests share computations (measured: 881 vs 583 req/s for gateway loadtest's varied data)
    # and the tools would no longer measure the same server work.
    (tmp_path / "mlp" / "config.toml").write_text("coalesce = false\n")
    http, grpc = _free_port(), _free_port()
    # No shedding at the door: one batch of 4 x 64 rows of this model holds the loop past
    # shed_loop_lag_ms on a slow machine, and the door then refuses the calls that arrived
    # meanwhile (measured in CI). The closed loop bounds the load; the door is not what is tested.
    env = {**os.environ, "GATEWAY_SHED_LOOP_LAG_MS": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--model-repository", str(tmp_path),
                             "--http-port", str(http),
                             "--grpc-port", str(grpc), "--log-level", "WARNING"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {proc.stderr.read() if proc.stderr else ''}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("gateway not ready in 60 s")
            time.sleep(0.2)
        yield http, grpc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _perf_analyzer(port: int, protocol: str = "http", concurrency: int = 2) -> float | None:
    out = subprocess.run([PA, "-m", "mlp", "-u", f"127.0.0.1:{port}", "-i", protocol, "-b", str(BATCH),
                          "--concurrency-range", str(concurrency), "--measurement-interval", "4000",
                          "--stability-percentage", "50", "--max-trials", "8"],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0 and "stable measurement" in out.stdout + out.stderr:
        return None  # the host was too noisy for perf_analyzer's own stability rule: a miss
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    m = re.search(r"Throughput: ([0-9.]+) infer/sec", out.stdout)
    assert m, out.stdout[-2000:]
    return float(m.group(1)) / BATCH  # rows/s -> requests/s


def _ours(port: int, capsys, seconds: float = 6.0, protocol: str = "http-binary") -> float:
    concurrency = CONCURRENCY[protocol]
    assert main(["--url", f"127.0.0.1:{port}", "-m", "mlp", "-p", protocol, "--batch", str(BATCH), "--closed",
                 "--concurrency", str(concurrency), "-d", str(seconds), "--warmup", "1", "--procs", "1",
                 "--json", "-q"]) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["summary"]
    assert s["requests"]["errors"] == 0, s["errors"]
    return s["achieved_rps"]


@pytest.mark.parametrize("protocol", ["http-binary", "grpc"])
def test_closed_loop_throughput_matches_perf_analyzer(gateway_ports, capsys, protocol):
    """HTTP with the binary extension, and gRPC with the native client (libnghttp2)."""
    port = gateway_ports[1] if protocol == "grpc" else gateway_ports[0]
    pa_protocol = "grpc" if protocol == "grpc" else "http"
    _ours(port, capsys, seconds=2.0, protocol=protocol)  # warm the server (first batches, caches)
    # On a shared machine the server's own speed drifts over a minute (one CI run saw ours 17 % above
    # perf_analyzer, earlier runs 5-7 % below; on a slower host ours moved 124 -> 154 req/s between
    # two 5 s runs a minute apart): measure ours before and after perf_analyzer, and require
    # perf_analyzer's figure within 10 % of the range they span, so that a drift during the test is
    # not counted as a disagreement between the tools (a miscount, 2x or 1/64, still fails).
    # A host hiccup during one measurement can still break a single comparison, so a miss is
    # measured again, whole, up to three times before the test fails; every attempt is printed.
    for attempt in (1, 2, 3):
        before = _ours(port, capsys, seconds=5.0, protocol=protocol)
        pa = _perf_analyzer(port, pa_protocol, CONCURRENCY[protocol])
        after = _ours(port, capsys, seconds=5.0, protocol=protocol)
        low, high = 0.90 * min(before, after), 1.10 * max(before, after)
        with capsys.disabled():  # the next _ours() reads captured output: print past the capture
            print(f"{protocol} attempt {attempt}: perf_analyzer {pa if pa is None else round(pa)} req/s, gateway "
                  f"loadtest {before:.0f} before and {after:.0f} after (accepted {low:.0f}-{high:.0f}; "
                  f"concurrency {CONCURRENCY[protocol]}, batch {BATCH})")
        if pa is not None and low <= pa <= high:
            break
    assert pa is not None, "perf_analyzer found no stable measurement in three attempts"
    assert low <= pa <= high, (pa, before, after)
