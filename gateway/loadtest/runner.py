"""One generator process: drive an open- or closed-loop run and return its raw outcome.

Open loop: the send loop compares the clock with the precomputed arrival array, submits every due
request (at most ``_BURST`` before yielding so responses keep being read), and sleeps until the next
arrival. Event-loop timers are coarse (uvloop: 1 ms), so a request may leave up to a timer tick after
its intended time; that delay is inside the measured latency, as it must be. The clock and the sleep
are injectable (``Clock``) so the scheduling logic is testable without real time.

Every run is bounded: the schedule ends at ``duration`` (or after ``max_requests``), then in-flight
requests get at most ``timeout`` more before they are failed as timeouts and the connections closed.
"""

from __future__ import annotations

import asyncio
import gc
import resource
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.loadtest.recorder import Recorder
from gateway.loadtest.schedule import RateProfile, arrival_times
from gateway.loadtest.targets import RequestSet, Target

__all__ = ["RunSpec", "Clock", "WorkerOutcome", "due_until", "drive_schedule", "run_worker"]

_BURST = 512
_MIN_SLEEP = 0.001


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs; picklable, shared by all generator processes."""

    target: Target
    mode: str = "open"  # "open" or "closed"
    profile: RateProfile | None = None  # open loop: the offered rate over time
    poisson: bool = False
    concurrency: int = 16  # closed loop: requests in flight (all processes together)
    duration: float = 10.0  # closed loop run time; open loop: profile.duration
    max_requests: int | None = None
    procs: int = 1
    timeout: float = 10.0
    late_ms: float = 5.0
    connections: int = 8  # open loop: connections opened up front, per process
    max_connections: int = 1024  # open loop: pool bound per process (gRPC: calls in flight)
    grpc_channels: int = 2
    grpc_client: str = "native"  # "native" (libnghttp2, gateway.loadtest.grpc_native) or "grpcio" (grpc.aio)
    interval: float = 1.0  # histogram interval, seconds
    warmup: float = 0.0  # seconds excluded from the statistics
    seed: int = 0
    scrape: bool = False
    metrics_url: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def run_seconds(self) -> float:
        if self.mode == "open":
            assert self.profile is not None
            return self.profile.duration
        return self.duration


@dataclass
class Clock:
    """Time source and sleep for the send loop; tests pass fakes."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


@dataclass
class WorkerOutcome:
    """Raw result of one process; ``t`` is relative to the run start."""

    proc: int
    t: np.ndarray
    lat: np.ndarray
    status: np.ndarray
    late: int
    opened: int
    max_open: int
    connect_errors: int
    cpu_s: float
    wall_s: float


def due_until(times: np.ndarray, i: int, now: float, burst: int = _BURST) -> int:
    """Index one past the last request in ``times[i:i+burst]`` whose intended time is <= now."""
    return i + int(np.searchsorted(times[i:i + burst], now, side="right"))


async def drive_schedule(times: np.ndarray, submit: Callable[[int], None], clock: Clock) -> None:
    """Submit request i at absolute time ``times[i]``; never earlier, as soon as possible after."""
    n, i = len(times), 0
    while i < n:
        j = due_until(times, i, clock.now())
        for k in range(i, j):
            submit(k)
        i = j
        if i < n:
            # Sleep until the next arrival, but never for less than a timer tick: event-loop timers
            # have 1 ms resolution and a shorter sleep spins. sleep(0) when behind keeps reading.
            delay = times[i] - clock.now()
            await clock.sleep(0.0 if delay <= 0 else max(delay, _MIN_SLEEP))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _ticker(engine, rec: Recorder, on_tick: Callable[[dict], None] | None, start: float,
                  interval: float, clock: Clock, proc: int) -> None:
    next_tick = start + interval
    while True:
        await clock.sleep(0.1)
        engine.sweep()
        now = clock.now()
        if on_tick is not None and now >= next_tick:
            next_tick += interval
            recent = rec.take_recent()
            on_tick({"proc": proc, "t": now - start, "sent": rec.sent, "done": rec.done, "errors": rec.errors,
                     "late": engine.late, "in_flight": engine.in_flight, "conns": engine.max_open,
                     "p99_ms": float(np.percentile(recent, 99)) * 1e3 if recent else float("nan")})
        elif on_tick is None:
            rec.recent.clear()


def _make_engine(spec: RunSpec, reqs: RequestSet, rec: Recorder, choice: np.ndarray, times: Sequence[float],
                 clock: Clock, start: float, proc: int):
    tg = spec.target
    late_s = spec.late_ms / 1e3
    share = spec.concurrency // spec.procs + (1 if proc < spec.concurrency % spec.procs else 0)
    if tg.is_grpc and spec.grpc_client == "native":
        from gateway.loadtest.grpc_native import NativeGrpcClosedLoop, NativeGrpcOpenLoop

        if spec.mode == "open":
            return NativeGrpcOpenLoop(tg.host, tg.port, reqs.payloads, reqs.grpc_metadata, choice, times, rec,
                                      clock.now, start=start, channels=spec.grpc_channels,
                                      max_in_flight=spec.max_connections, timeout=spec.timeout, late_s=late_s)
        return NativeGrpcClosedLoop(tg.host, tg.port, reqs.payloads, reqs.grpc_metadata, choice, rec, clock.now,
                                    channels=spec.grpc_channels, concurrency=share, end=start + spec.duration,
                                    max_requests=_share(spec.max_requests, spec.procs, proc), timeout=spec.timeout)
    if tg.is_grpc:
        from gateway.loadtest.grpc_client import GrpcClosedLoop, GrpcOpenLoop

        if spec.mode == "open":
            return GrpcOpenLoop(tg.host, tg.port, reqs.payloads, reqs.grpc_metadata, choice, times, rec, clock.now,
                                start=start, channels=spec.grpc_channels, max_in_flight=spec.max_connections,
                                timeout=spec.timeout, late_s=late_s)
        return GrpcClosedLoop(tg.host, tg.port, reqs.payloads, reqs.grpc_metadata, choice, rec, clock.now,
                              channels=spec.grpc_channels, concurrency=share, end=start + spec.duration,
                              max_requests=_share(spec.max_requests, spec.procs, proc), timeout=spec.timeout)
    from gateway.loadtest.http_client import HttpClosedLoop, HttpOpenLoop

    if spec.mode == "open":
        return HttpOpenLoop(tg.host, tg.port, reqs.payloads, choice, times, rec, clock.now, start=start,
                            max_conns=spec.max_connections, timeout=spec.timeout, late_s=late_s)
    return HttpClosedLoop(tg.host, tg.port, reqs.payloads, choice, rec, clock.now, concurrency=share,
                          end=start + spec.duration, max_requests=_share(spec.max_requests, spec.procs, proc),
                          timeout=spec.timeout)


def _share(n: int | None, procs: int, proc: int) -> int | None:
    return None if n is None else n // procs + (1 if proc < n % procs else 0)


async def run_worker(spec: RunSpec, reqs: RequestSet, proc: int, *,
                     wait_start: Callable[[], Awaitable[float]] | None = None,
                     on_tick: Callable[[dict], None] | None = None, clock: Clock | None = None) -> WorkerOutcome:
    """Prepare connections, wait for the common start time, run, drain, and return raw arrays.

    ``wait_start`` returns the absolute start time on ``clock`` (multi-process barrier); by default
    the run starts 50 ms after the connections are ready.
    """
    clock = clock or Clock()
    rel: np.ndarray | None = None
    if spec.mode == "open":
        assert spec.profile is not None
        rel = arrival_times(spec.profile, poisson=spec.poisson, proc=proc, procs=spec.procs,
                            max_requests=spec.max_requests, seed=spec.seed)
        choice = reqs.choices(len(rel), seed=spec.seed * 7919 + proc)
    else:
        choice = reqs.choices(65536, seed=spec.seed * 7919 + proc)
    rec = Recorder(rel)
    engine: Any = _make_engine(spec, reqs, rec, choice, rec.t, clock, 0.0, proc)
    times = np.zeros(0)
    try:
        await engine.prepare(min(spec.connections, max(1, len(rel))) if rel is not None else 0)
        start = await wait_start() if wait_start else clock.now() + 0.05
        engine.start = start
        if rel is not None:
            times = rel + start
            rec.shift(start)
            engine.intended = rec.t
        else:
            engine.end = start + spec.duration
        # A full garbage collection walks every object the process holds (~15 ms here) and shows up
        # as a latency spike that is ours, not the server's. The run allocates no reference cycles
        # worth collecting, so collection waits until the run is over.
        gc.collect()
        gc.freeze()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        cpu0, wall0 = _cpu(), clock.now()
        while clock.now() < start:
            await clock.sleep(start - clock.now())
        ticker = asyncio.get_running_loop().create_task(
            _ticker(engine, rec, on_tick, start, spec.interval, clock, proc))
        try:
            if rel is not None:
                await drive_schedule(times, engine.submit, clock)
                end = float(times[-1]) if len(times) else start
            else:
                engine.begin()
                end = start + spec.duration
            # Drain: wait for answers, at most `timeout` past the end (the ticker fails stragglers).
            budget = _share(spec.max_requests, spec.procs, proc) if rel is None else None
            while clock.now() < end:  # closed loop: stop early once the request budget is spent
                if budget is not None and rec.sent >= budget and rec.done >= rec.sent:
                    break
                await clock.sleep(min(0.05, end - clock.now()))
            deadline = max(end, clock.now()) + spec.timeout + 0.5
            while clock.now() < deadline:
                if rec.done >= (len(times) if rel is not None else rec.sent):
                    break
                await clock.sleep(0.002)
        finally:
            ticker.cancel()
            if gc_was_enabled:
                gc.enable()
            gc.unfreeze()
        cpu, wall = _cpu() - cpu0, clock.now() - wall0
    finally:
        if hasattr(engine, "aclose"):
            await engine.aclose()
        else:
            engine.close()
    t, lat, status = rec.arrays()
    return WorkerOutcome(proc, t - start, lat, status, engine.late, engine.opened, engine.max_open,
                         engine.connect_errors, cpu, wall)
