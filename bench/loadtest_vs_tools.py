"""Maximum request generation rate: `gateway loadtest` vs perf_analyzer vs wrk, on the same cores.

All three drive the bare netlimit server (/work/shared/bench/netlimit_server.py: the cheapest Python
KServe v2 HTTP server, so the generator is what limits) with batch-1 FP32[1,64] JSON infer requests.
Load generator and server share the machine's cores. For each tool it reports answered req/s, p99,
and the CPU the generator and the server used (from /proc and getrusage), so a tool that is slow
because it burns CPU is told apart from one that is slow because the server is.

  python bench/loadtest_vs_tools.py [--perf-analyzer PATH] [--seconds 5] [--concurrency 64]

`gateway loadtest` is measured closed loop (same concurrency as the others) and open loop: the
highest constant rate it sustains (answered >= 98% of intended, < 5% late sends, no errors).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("SHARED_BENCH", "/work/shared/bench"))
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Measured:
    """Wall time, server CPU and child-process CPU around one tool run."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid

    def __enter__(self) -> Measured:
        self.t, self.s, self.c = time.monotonic(), proc_cpu(self.pid), children_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.t
        self.server = (proc_cpu(self.pid) - self.s) / self.wall
        self.client = (children_cpu() - self.c) / self.wall


def run_wrk(port: int, conc: int, secs: float) -> dict:
    out = subprocess.run(["bash", str(SHARED / "wrk_infer.sh"), f"127.0.0.1:{port}", "mlp", "INPUT0", "64",
                          str(conc), str(int(secs)), "2"], capture_output=True, text=True, timeout=secs + 60)
    m = re.search(r"infer/s=([0-9.]+) p99_ms=([0-9.]+)", out.stdout)
    if not m:
        raise RuntimeError("wrk failed: " + out.stdout[-800:] + out.stderr[-800:])
    return {"rps": float(m.group(1)), "p99_ms": float(m.group(2))}


def run_pa(pa: str, port: int, extra: list[str], secs: float) -> dict:
    out = subprocess.run([pa, "-m", "mlp", "-u", f"127.0.0.1:{port}", "-i", "http", "--shape", "INPUT0:1,64",
                          "--measurement-interval", str(int(secs * 1000)), "--stability-percentage", "50",
                          "--max-trials", "3", *extra], capture_output=True, text=True, timeout=secs * 6 + 60)
    m = re.search(r"Throughput: ([0-9.]+) infer/sec", out.stdout)
    p = re.search(r"p99 latency: ([0-9]+) usec", out.stdout)
    if not m:
        raise RuntimeError("perf_analyzer failed: " + out.stdout[-800:] + out.stderr[-800:])
    late = re.search(r"([0-9.]+)% of the requests were delayed", out.stdout)
    return {"rps": float(m.group(1)), "p99_ms": float(p.group(1)) / 1e3 if p else float("nan"),
            "delayed_pct": float(late.group(1)) if late else 0.0}


def run_ours(port: int, args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "gateway.loadtest", "--url", f"127.0.0.1:{port}", "-m", "mlp",
                          "--json", "-q", *args], capture_output=True, text=True, timeout=300, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError("gateway loadtest failed: " + out.stderr[-800:])
    s = json.loads(out.stdout.strip().splitlines()[-1])["summary"]
    return {"rps": s["achieved_rps"], "p99_ms": s["latency_ms"]["p99"], "intended": s["intended_rps"],
            "late": s["late_fraction"], "errors": s["requests"]["errors"], "gen_cpu": s["generator"]["cpu_cores_used"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--perf-analyzer", default=os.environ.get("PERF_ANALYZER", ""))
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--procs", type=int, default=2, help="generator processes for the closed loop")
    ap.add_argument("--open-procs", type=int, default=1, help="generator processes for the open loop")
    ap.add_argument("--rates", default="20000,30000,40000,50000,60000,70000,80000",
                    help="open-loop rates tried in order until one is not sustained")
    a = ap.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, str(SHARED / "netlimit_server.py"), str(port)],
                              stdout=subprocess.PIPE, text=True)
    rows: list[tuple[str, str, dict, Measured]] = []
    try:
        assert server.stdout is not None and "listening" in server.stdout.readline()
        secs, conc = a.seconds, a.concurrency

        def record(tool: str, mode: str, fn) -> dict:
            with Measured(server.pid) as m:
                r = fn()
            rows.append((tool, mode, r, m))
            print(f"{tool:18} {mode:42} {r['rps']:>9,.0f} req/s  p99 {r['p99_ms']:7.2f} ms  "
                  f"client CPU {m.client:.2f}  server CPU {m.server:.2f}", file=sys.stderr, flush=True)
            return r

        if shutil.which("wrk"):
            record("wrk", f"2 threads, {conc} connections", lambda: run_wrk(port, conc, secs))
        if a.perf_analyzer:
            record("perf_analyzer", f"sync, concurrency {conc}",
                   lambda: run_pa(a.perf_analyzer, port, ["--concurrency-range", str(conc)], secs))
            record("perf_analyzer", "request rate 20000/s",
                   lambda: run_pa(a.perf_analyzer, port, ["--request-rate-range", "20000"], secs))
        for procs in sorted({1, a.procs}):
            record("gateway loadtest", f"closed loop, concurrency {conc}, {procs} proc",
                   lambda p=procs: run_ours(port, ["--closed", "--concurrency", str(conc), "-d", str(secs),
                                                   "--warmup", "1", "--procs", str(p)]))
        best = None
        for rate in [float(x) for x in a.rates.split(",")]:
            r = record("gateway loadtest", f"open loop {rate:,.0f}/s, {a.open_procs} proc",
                       lambda rate=rate: run_ours(port, ["--rate", str(rate), "-d", str(secs), "--warmup", "1",
                                                         "--procs", str(a.open_procs)]))
            ok = r["errors"] == 0 and r["rps"] >= 0.98 * r["intended"] and r["late"] < 0.05
            if not ok:
                break
            best = (rate, r)
            time.sleep(1.0)
        print("\n| tool | mode | answered req/s | p99 ms | generator CPU (cores) | server CPU (cores) |")
        print("|---|---|---:|---:|---:|---:|")
        for tool, mode, r, m in rows:
            print(f"| {tool} | {mode} | {r['rps']:,.0f} | {r['p99_ms']:.2f} | {m.client:.2f} | {m.server:.2f} |")
        if best:
            print(f"\nHighest sustained open-loop rate of gateway loadtest ({a.open_procs} proc): {best[0]:,.0f} req/s "
                  f"(answered {best[1]['rps']:,.0f}/s, p99 {best[1]['p99_ms']:.2f} ms, late {best[1]['late']:.2%})")
    finally:
        server.kill()
        server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
