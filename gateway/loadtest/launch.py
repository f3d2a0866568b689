"""Run a ``RunSpec`` on one or several generator processes and merge what they measured.

Why processes: one Python event loop saturates one core; ``--procs N`` runs N loops that share the
schedule (see ``schedule.arrival_times``) and start together. Each child prepares its connections,
reports ready, then waits for a start time the parent picks once all are ready, so connection setup
never eats into the run. Children send progress ticks and, at the end, a compact summary (encoded HDR
histograms, counters) through queues; the parent merges them. HTTP children fork (cheap, nothing of
grpc in the parent's state matters to them); gRPC children are spawned, because grpc's core does not
survive a fork after the parent used a channel (the metadata call).

A single process runs in-process (no fork), which tests use. Every wait on children is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import queue
import resource
import time
from collections.abc import Callable
from typing import Any

from gateway.loadtest.merge import merge, summarize_worker
from gateway.loadtest.runner import RunSpec, run_worker
from gateway.loadtest.targets import RequestSet

__all__ = ["run_load", "Ticker"]

Ticker = Callable[[dict[str, Any]], None]


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _new_loop(grpcio: bool) -> asyncio.AbstractEventLoop:
    """uvloop, but the stdlib loop for the grpc.aio client (its poller integration targets it)."""
    if grpcio:
        return asyncio.new_event_loop()
    import uvloop

    return uvloop.new_event_loop()


def _window_end(spec: RunSpec, workers: list[dict[str, Any]]) -> float:
    if spec.mode == "open" and spec.profile is not None and spec.max_requests is not None \
            and spec.max_requests < spec.profile.expected_requests:
        return max((w["last_t"] for w in workers), default=0.0) + 1e-6
    return spec.run_seconds


def _summaries(spec: RunSpec, outcomes: list) -> list[dict[str, Any]]:
    prelim = [{"last_t": float(o.t.max()) if len(o.t) else 0.0} for o in outcomes]
    end = _window_end(spec, prelim)
    return [summarize_worker(o, interval=spec.interval, warmup=spec.warmup, window_end=end) for o in outcomes]


def _child(spec: RunSpec, reqs: RequestSet, proc: int, ready_q: Any, go: Any, start_at: Any,
           result_q: Any, tick_q: Any) -> None:
    _raise_nofile()

    async def wait_start() -> float:
        ready_q.put(proc)
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(None, go.wait, 60.0)
        if not ok:
            raise TimeoutError("no start signal")
        return float(start_at.value)

    def on_tick(snap: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            tick_q.put_nowait(snap)

    loop = _new_loop(spec.target.is_grpc and spec.grpc_client == "grpcio")
    try:
        outcome = loop.run_until_complete(run_worker(spec, reqs, proc, wait_start=wait_start, on_tick=on_tick))
        result_q.put(("ok", proc, _summaries_one(spec, outcome)))
    except BaseException as exc:  # report, never hang the parent
        ready_q.put(proc)
        result_q.put(("error", proc, f"{type(exc).__name__}: {exc}"))
    finally:
        loop.close()


def _summaries_one(spec: RunSpec, outcome: Any) -> dict[str, Any]:
    # Each child knows only its own last arrival; a max_requests-cut window uses the schedule share's end.
    return _summaries(spec, [outcome])[0]


def run_load(spec: RunSpec, reqs: RequestSet, on_tick: Ticker | None = None) -> dict[str, Any]:
    """Run and return the merged summary (see ``merge.merge``). Raises if a generator failed."""
    _raise_nofile()
    if spec.procs <= 1:
        loop = _new_loop(spec.target.is_grpc and spec.grpc_client == "grpcio")
        try:
            outcome = loop.run_until_complete(run_worker(spec, reqs, 0, on_tick=on_tick))
        finally:
            loop.close()
        workers = _summaries(spec, [outcome])
    else:
        workers = _run_procs(spec, reqs, on_tick)
    return merge(workers, interval=spec.interval, warmup=spec.warmup,
                 window_end=_window_end(spec, workers), mode=spec.mode)


def _run_procs(spec: RunSpec, reqs: RequestSet, on_tick: Ticker | None) -> list[dict[str, Any]]:
    ctx: Any = mp.get_context("spawn" if spec.target.is_grpc else "fork")
    ready_q, result_q, tick_q = ctx.Queue(), ctx.Queue(), ctx.Queue(maxsize=10_000)
    go, start_at = ctx.Event(), ctx.Value("d", 0.0)
    procs = [ctx.Process(target=_child, args=(spec, reqs, k, ready_q, go, start_at, result_q, tick_q),
                         daemon=True, name=f"loadtest-{k}") for k in range(spec.procs)]
    for p in procs:
        p.start()
    results: dict[int, dict[str, Any]] = {}
    errors: list[str] = []
    try:
        for _ in procs:
            ready_q.get(timeout=90.0)
        start_at.value = time.monotonic() + 0.05  # CLOCK_MONOTONIC is system-wide on Linux
        go.set()
        deadline = time.monotonic() + spec.run_seconds + spec.timeout + 60.0
        while len(results) + len(errors) < len(procs) and time.monotonic() < deadline:
            _drain_ticks(tick_q, on_tick)
            try:
                kind, proc, payload = result_q.get(timeout=0.2)
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and result_q.empty():
                    break
                continue
            if kind == "ok":
                results[proc] = payload
            else:
                errors.append(f"generator {proc}: {payload}")
    finally:
        for p in procs:
            p.join(timeout=5.0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2.0)
    if errors or len(results) < len(procs):
        raise RuntimeError("; ".join(errors) or "a generator process did not report")
    return [results[k] for k in sorted(results)]


def _drain_ticks(tick_q: Any, on_tick: Ticker | None) -> None:
    for _ in range(1000):
        try:
            snap = tick_q.get_nowait()
        except queue.Empty:
            return
        if on_tick is not None:
            on_tick(snap)


def default_procs() -> int:
    """Generator processes to use by default: half the cores (the server may share the machine)."""
    import os

    return max(1, math.floor((os.cpu_count() or 2) / 2))
