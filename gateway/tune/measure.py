"""Measure one serving configuration of one model file: its knee (throughput at a p99 SLO).

The model is served by a real ``gateway serve`` subprocess from a throw-away Triton-layout repository
(``<tmp>/<model>/1/model.onnx`` + ``config.toml``), so what is measured is what would be deployed:
the same front, batcher and backend, in a process of its own. The knee is found with the load
tester's own search (``loadtest.sweep.find_knee``: ramp geometrically, then bisect) over open-loop
runs built from the same parts ``gateway loadtest sweep`` uses.

Caveat: the load generator runs on the same machine (``procs`` processes, one by default), so it
shares the cores with the server. Where it, not the server, falls behind, the failing step's sends
are late (``LATE_LIMIT``): the point is then marked ``generator_bound``, its knee is "at least
this much", and two such points are not told apart (``tune.rounds.overlaps``). The generator runs
in the calling process: call it from a process of its own (``gateway tune`` is one), not from one
whose other threads keep the GIL busy.

Budget: a step is started only when it (plus its cooldown and drain) fits before the deadline;
past it the search stops and the best passing rate so far is the answer. Failures (server does
not start, model does not load, generator error, no rate met the SLO) come back as
``Point.error``, never as an exception; the server is always stopped and the directory removed.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.loadtest import schedule
from gateway.loadtest.launch import run_load
from gateway.loadtest.runner import RunSpec
from gateway.loadtest.sweep import Slo, Step, find_knee
from gateway.loadtest.targets import (
    Target,
    Variation,
    build_request_set,
    fetch_model_info,
    http_get,
    parse_target,
    random_inputs,
)

__all__ = ["Point", "measure_point", "measurer", "config_toml"]

READY_TIMEOUT_S = 60.0
"""Longest wait for the server to answer ready (onnxruntime import + load + warm-up)."""
STOP_GRACE_S = 5.0
"""SIGTERM, then SIGKILL after this long."""
LOG_TAIL_LINES = 12


@dataclass
class Point:
    """One configuration's result. ``throughput_rps`` is the answered rate at the knee (the highest
    offered rate that met the SLO), ``p99_ms`` the p99 there; both 0 when ``error`` says why not."""

    config: dict[str, Any]
    throughput_rps: float
    p99_ms: float
    error: str | None
    seconds: float
    offered_rps: float = 0.0
    """The offered rate at the knee (``throughput_rps`` is what was answered of it)."""
    bounded: bool = False
    """True when the budget ran out before a step failed: ``throughput_rps`` is a lower bound."""
    generator_bound: bool = False
    """True when the step that failed had more than ``LATE_LIMIT`` of its sends late: the load
    generator, not the server, fell behind, so ``throughput_rps`` is a lower bound too (what this
    generator could drive), and two such points are not told apart."""

    @property
    def lower_bound(self) -> bool:
        return self.bounded or self.generator_bound


class _OutOfBudget(Exception):
    """Raised from the measure callback to end find_knee at the deadline."""


class _ServerDied(Exception):
    """The server process exited while being measured."""


def config_toml(config: dict[str, Any]) -> str:
    """The flat ``config.toml`` table for ``config`` (ints, floats, bools and strings only)."""
    lines = []
    for key, value in config.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        elif isinstance(value, str):
            text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        else:
            raise ValueError(f"config key {key!r}: {value!r} is not a TOML scalar")
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


DISTINCT_REQUESTS = 1024
"""Distinct request bodies the generator cycles through: at the rates measured here one body comes
round again only after its earlier copy was answered, so coalescing does not share the work."""
LATE_LIMIT = 0.05
"""A failing step with more than this share of late sends failed on the generator (as the sweep warns)."""
DOWN_TRIES = 2
"""When the first step fails, start again this many times, each at ``DOWN_FACTOR`` of the last."""
DOWN_FACTOR = 0.5
HINT_START = 0.8
"""With ``hint_rps``, the ramp's first rate as a share of the hint."""
HINT_FACTOR = 1.1
"""With ``hint_rps``, the ramp's factor (without: 1.25 from half the probe's rate)."""
PROBE_CONCURRENCY = 32
"""Requests in flight during the closed-loop capacity probe that starts each point."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(log: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> str | None:
    """None once ready; else why not. The server loads its models before it opens HTTP, so an answer
    other than 200 that persists means the model failed to load (strict readiness)."""
    end = time.monotonic() + timeout
    not_ready_since: float | None = None
    while time.monotonic() < end:
        if proc.poll() is not None:
            return f"server exited with code {proc.returncode} before it was ready:\n{_tail(log)}"
        try:
            status, _ = http_get("127.0.0.1", port, "/v2/health/ready", timeout=2.0)
        except OSError:
            time.sleep(0.1)
            continue
        if status == 200:
            return None
        now = time.monotonic()
        not_ready_since = not_ready_since or now
        if now - not_ready_since > 1.0:
            return f"server is up but not ready (the model did not load):\n{_tail(log)}"
        time.sleep(0.1)
    return f"server not ready within {timeout:g}s:\n{_tail(log)}"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _spec(target: Target, rate: float, step_s: float, timeout: float, procs: int = 1) -> RunSpec:
    # Connections as `gateway loadtest` sizes them per process (loadtest/cli.py _spec).
    conns = max(2, min(256, math.ceil(rate / procs * 0.002) + 2))
    return RunSpec(target=target, mode="open", profile=schedule.constant(rate, step_s), procs=procs, timeout=timeout,
                   late_ms=5.0, connections=conns, max_connections=1000, grpc_channels=2, interval=1.0,
                   warmup=0.0, seed=0)


def measure_point(model_path: Path, model_name: str, config: dict[str, Any], *, slo_p99_ms: float,
                  budget_s: float, step_s: float = 2.0, start_rps: float = 500.0, protocol: str = "http-binary",
                  max_rps: float = 100_000.0, cooldown_s: float = 0.5, batch: int = 1, retries: int = 1,
                  hint_rps: float | None = None, hint_is_lower_bound: bool = False, procs: int = 1,
                  on_step: Callable[[Step], None] | None = None) -> Point:
    """Serve ``model_path`` with ``config`` and find its knee within ``budget_s`` (wall time, server
    start and stop included). ``retries``: a failing step is measured again up to this often (a
    shared host stalls now and then; the CLI's ``--retries``). ``hint_rps``: where an earlier
    measurement put the knee; the ramp then starts just below it and climbs in small steps, so a
    short budget still reaches a failing rate (in the usual steps when the hint was a lower bound). ``procs``: load generator processes (the load tester's ``--procs``).
    ``on_step(Step)`` is told each load step."""
    t0 = time.monotonic()
    deadline = t0 + budget_s
    cfg = dict(config)

    def point(thr: float = 0.0, p99: float = 0.0, error: str | None = None, offered: float = 0.0) -> Point:
        return Point(cfg, thr, p99, error, time.monotonic() - t0, offered)

    root = Path(tempfile.mkdtemp(prefix="gateway-tune-"))
    proc: subprocess.Popen[bytes] | None = None
    log = root / "server.log"
    try:
        repo = root / "repo"
        (repo / model_name / "1").mkdir(parents=True)
        src = Path(model_path).resolve()
        if not src.is_file():
            return point(error=f"model file {model_path} not found")
        (repo / model_name / "1" / "model.onnx").symlink_to(src)
        try:
            (repo / model_name / "config.toml").write_text(config_toml(cfg))
        except ValueError as exc:
            return point(error=str(exc))
        port = _free_port()
        env = {**os.environ, "GATEWAY_SHED_LOOP_LAG_MS": "0", "GATEWAY_LOG_LEVEL": "WARNING", "GATEWAY_DRAIN_S": "0"}
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--model-repository", str(repo),
                                     "--http-port", str(port), "--grpc-port", "-1"],
                                    stdout=out, stderr=subprocess.STDOUT, env=env)
        why = _wait_ready(proc, port, log, min(READY_TIMEOUT_S, max(1.0, deadline - time.monotonic())))
        if why is not None:
            return point(error=why)
        return _knee(proc, log, parse_target(f"127.0.0.1:{port}", protocol, model_name), point, deadline,
                     slo_p99_ms=slo_p99_ms, step_s=step_s, start_rps=start_rps, max_rps=max_rps,
                     cooldown_s=cooldown_s, batch=batch, retries=retries, hint_rps=hint_rps,
                     hint_is_lower_bound=hint_is_lower_bound, procs=procs, on_step=on_step)
    except Exception as exc:  # a Point, never an exception: the search goes on with the next config
        return point(error=f"{type(exc).__name__}: {exc}")
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def _knee(proc: subprocess.Popen[bytes], log: Path, target: Target, point: Callable[..., Point], deadline: float, *,
          slo_p99_ms: float, step_s: float, start_rps: float, max_rps: float, cooldown_s: float, batch: int,
          retries: int, hint_rps: float | None, hint_is_lower_bound: bool, procs: int,
          on_step: Callable[[Step], None] | None) -> Point:
    info = fetch_model_info(target)
    rng = np.random.default_rng(0)
    # distinct bodies: with a few, identical requests in flight share one computation (the coalesce
    # stage), and a compute-bound model would measure faster than it serves distinct traffic
    samples = [random_inputs(info, batch, {}, rng) for _ in range(DISTINCT_REQUESTS)]
    reqs = build_request_set(target, info, samples, Variation(), seed=0)
    slo = Slo(slo_p99_ms)
    # A request slower than the bound already fails the step; waiting 10 s for it only burns budget.
    timeout = min(10.0, max(1.0, 20 * slo_p99_ms / 1000))
    passed: list[Step] = []
    first = [True]
    # An unjudged warm-up that doubles as a capacity probe: a short closed loop (the first requests
    # after ready pay one-time costs, onnxruntime's first run of each batch shape, the server's first
    # connections, that are no property of the config). The ramp then starts at half what the closed
    # loop got and climbs by 1.25x, so the knee is found in a handful of steps whatever the model's
    # speed, instead of climbing from a fixed rate that a small budget never gets past.
    warm = min(1.0, max(0.5, step_s / 2))
    if time.monotonic() + warm + 1.0 <= deadline:
        probe = run_load(RunSpec(target=target, mode="closed", concurrency=PROBE_CONCURRENCY, duration=warm,
                                 procs=procs, timeout=timeout, interval=1.0), reqs)
        got = float(probe.get("achieved_rps") or 0.0)
        if got > 0:
            start_rps = 0.5 * got
    factor = 1.25
    if hint_rps is not None and hint_rps > 0:
        # a confirmation: start a little below the known knee and climb by 10 %, so that the steps
        # are spent where the knee is and a failing rate is reached (the knee is then not a lower
        # bound); from a lower bound, climb as usual
        start_rps = HINT_START * hint_rps
        factor = factor if hint_is_lower_bound else HINT_FACTOR

    def measure(rate: float) -> dict[str, Any]:
        pause = 0.0 if first[0] else cooldown_s
        if time.monotonic() + pause + step_s + 0.5 > deadline:
            raise _OutOfBudget
        if proc.poll() is not None:
            raise _ServerDied
        time.sleep(pause)
        first[0] = False
        summary = run_load(_spec(target, rate, step_s, timeout, procs), reqs)
        if proc.poll() is not None:
            raise _ServerDied
        return summary

    steps: list[Step] = []

    def seen(step: Step) -> None:
        steps.append(step)
        if step.passed and (not passed or step.rate > passed[0].rate):
            passed[:] = [step]
        if on_step is not None:
            on_step(step)

    def found(best: Step) -> Point:
        """The point at ``best``: a lower bound when no rate above it failed (the budget ended the
        ramp first), generator-bound when a rate above it failed on late sends."""
        s = best.summary
        p = point(float(s["achieved_rps"]), float(s["latency_ms"]["p99"]), None, best.rate)
        above = [st for st in steps if not st.passed and st.rate > best.rate]
        p.bounded = not above
        p.generator_bound = any(float(st.summary.get("late_fraction") or 0.0) > LATE_LIMIT for st in above)
        return p

    try:
        # the start is an estimate (half the probe, or a share of an earlier knee, itself the best of
        # noisy points): when its first step fails, start again lower rather than give up
        rate = start_rps
        for _ in range(1 + DOWN_TRIES):
            res = find_knee(measure, slo, start_rps=rate, max_rps=max(max_rps, rate), factor=factor,
                            refine=2, retries=retries, on_step=seen)
            if res.knee_rps > 0:
                break
            rate *= DOWN_FACTOR
        best = next((s for s in res.steps if s.passed and s.rate == res.knee_rps), None)
        if best is None:
            why = steps[0].reasons if steps else []
            return point(error=f"no rate met the SLO (down to {rate / DOWN_FACTOR:g} req/s; first step "
                               f"{start_rps:g} req/s: {'; '.join(why)})")
    except _ServerDied:
        return point(error=f"server exited with code {proc.returncode} during the load:\n{_tail(log)}")
    except _OutOfBudget:
        if not passed:
            return point(error="out of budget before any rate met the SLO")
        return found(passed[0])
    return found(best)  # a ramp that reached max_rps without failing is a lower bound as well


def measurer(model_path: Path, model_name: str, **options: Any) -> Callable[[dict[str, Any], float], Point]:
    """``measure(config, budget_s)`` for ``search``: ``measure_point`` with the rest fixed
    (``slo_p99_ms`` is required among ``options``)."""

    def measure(config: dict[str, Any], budget_s: float) -> Point:
        return measure_point(model_path, model_name, config, budget_s=budget_s, **options)

    return measure
