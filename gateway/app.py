"""Composition root: builds registry, router, data plane, metrics and both fronts, and runs them.

Nothing else constructs these; everything is passed down through constructors.
``serve`` is the process entry point: uvloop (or asyncio), signal handling and graceful
shutdown (SIGTERM: not-ready for ``drain_s`` while still serving, then stop accepting, finish
in-flight requests, exit 0; SIGINT skips the drain).

``--workers N`` runs N such processes on the same ports. They share nothing but a private
directory of statistics snapshots (``gateway.observe.workers``), so that every scrape shows the sum over
all of them; repository load/unload is refused there, since it would reach one worker only.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.compose import build_pipeline
from gateway.front.http.access import AccessLoggedProtocol
from gateway.front.http.server import HttpFront, HttpProtocol
from gateway.logs import configure_logging
from gateway.observe.metrics import make_metrics_registry
from gateway.observe.workers import REPOSITORY_LOCKED, TRAFFIC_LOCKED, WorkerStats
from gateway.pipeline.admit import InflightCap
from gateway.pipeline.door import Door
from gateway.pipeline.traffic import TrafficSettings
from gateway.settings import ServerSettings
from gateway.shm import SharedMemoryRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """Which of ``workers`` processes this is, and where the workers share their statistics."""

    index: int
    stats_dir: str


class App:
    def __init__(self, settings: ServerSettings, worker: WorkerSlot | None = None) -> None:
        self.settings = settings
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if settings.demo and not settings.model_repository:
            from gateway.demo import build_demo_repository

            self._tmp = tempfile.TemporaryDirectory(prefix="gateway-demo-")
            self.repository = build_demo_repository(Path(self._tmp.name))
        else:
            self.repository = Path(settings.model_repository)
        self.shm = SharedMemoryRegistry(settings.allow_client_shm, settings.max_shm_regions)
        self.worker_stats: WorkerStats | None = None
        locked = REPOSITORY_LOCKED.format(n=settings.workers) if settings.workers > 1 else ""
        traffic_locked = TRAFFIC_LOCKED.format(n=settings.workers) if settings.workers > 1 else ""
        if settings.repository_control == "none":
            locked = "model load/unload is off on this server (repository_control = \"none\")"
        pipeline = build_pipeline(
            self.repository, strict_readiness=settings.strict_readiness,  # backends: compose's (onnxruntime, triton)
            server_name=settings.server_name, shm=self.shm, repository_locked=locked, traffic_locked=traffic_locked,
            traffic=TrafficSettings(settings.traffic_tick_s, settings.shadow_max_outstanding,
                                    settings.outcome_attribution_ids, settings.outcome_attribution_ttl_s,
                                    settings.shadow_max_loop_busy),
            inflight=(InflightCap(settings.max_inflight_requests, settings.max_inflight_bytes)
                      if settings.max_inflight_requests or settings.max_inflight_bytes else None),
            door=Door(settings.shed_loop_lag_ms / 1000))
        self.registry = pipeline.registry
        self.router = pipeline.router
        self.traffic = pipeline.traffic
        self.dataplane = pipeline.dataplane
        if worker is not None:
            self.worker_stats = WorkerStats(worker.stats_dir, worker.index, settings.worker_stats_interval_s,
                                            self.dataplane.export)
            self.dataplane.peers = self.worker_stats.peers
        self.metrics = make_metrics_registry(self.dataplane)
        # a subclass that logs each request: without it the protocol has no check to make
        self.http = HttpFront(self.dataplane, settings, self.metrics,
                              AccessLoggedProtocol if settings.access_log else HttpProtocol)
        self.grpc: Any = None

    @property
    def http_port(self) -> int:
        return self.http.port

    @property
    def grpc_port(self) -> int:
        return self.grpc.port if self.grpc is not None else -1

    async def start(self) -> None:
        await self.registry.load_all()
        self.traffic.start()
        self.dataplane.door.start()
        await self.http.start()
        if self.settings.grpc_port >= 0 and self.settings.grpc_front == "native":
            from gateway.front.grpc.native import start_native_grpc_front

            self.grpc = await start_native_grpc_front(self.dataplane, self.settings)
        elif self.settings.grpc_port >= 0:
            from gateway.front.grpc.server import start_grpc_front

            self.grpc = await start_grpc_front(self.dataplane, self.settings)
        if self.worker_stats is not None:
            self.worker_stats.start()

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.shutdown_grace_s if grace is None else grace
        if self.grpc is not None:
            await asyncio.gather(self.http.stop(grace), self.grpc.stop(grace))
        else:
            await self.http.stop(grace)
        if self.worker_stats is not None:
            self.worker_stats.stop()  # the final numbers, for peers still answering scrapes
        self.traffic.stop()
        self.dataplane.door.stop()
        await self.registry.close()
        self.shm.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def settle_collector() -> None:
    """Once everything is loaded (models, sessions, modules), which lives for the whole process:
    move it out of the collector's sight, and collect the young generation less often. The
    request path allocates many short-lived containers; a gen-0 pass every 700 of them showed in
    profiles."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


async def _main(settings: ServerSettings, worker: WorkerSlot | None = None) -> int:
    # Signal handlers first: the HTTP front answers ready as soon as it listens, and a SIGTERM
    # that came before the handlers would kill the process with requests in flight.
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[int] = asyncio.Queue()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    app = App(settings, worker)
    await app.start()
    settle_collector()
    models = ", ".join(f"{m.name}:{m.version}" for m in app.registry.versions()) or "none"
    print(f"gateway ready: HTTP on {settings.host}:{app.http_port}"
          + (f", gRPC on {settings.host}:{app.grpc_port}" if app.grpc else "")
          + f"; models {models}", flush=True)
    if settings.demo:
        print(f"try: curl -s -X POST http://{settings.host}:{app.http_port}/v2/models/add_sub/infer "
              "-H 'Content-Type: application/json' -d '{\"inputs\":["
              "{\"name\":\"INPUT0\",\"datatype\":\"FP32\",\"shape\":[1,16],\"data\":[" + ",".join(["1"] * 16) + "]},"
              "{\"name\":\"INPUT1\",\"datatype\":\"FP32\",\"shape\":[1,16],\"data\":[" + ",".join(["2"] * 16) + "]}]}'",
              flush=True)
    first = await signals.get()
    await drain(app, first, signals)
    log.info("shutting down: finishing in-flight requests (up to %.0f s)", settings.shutdown_grace_s)
    await app.stop()
    return 0


async def drain(app: App, first: int, signals: asyncio.Queue[int]) -> None:
    """SIGTERM: report not-ready but keep serving for ``drain_s``, so that load balancers (and a
    Kubernetes endpoint controller) stop sending before the listeners close. SIGINT (Ctrl-C), or a
    second signal during the drain, cuts it short."""
    app.dataplane.draining = True
    if first != signal.SIGTERM or app.settings.drain_s <= 0:
        return
    log.info("SIGTERM: not ready; serving for %.1f s more (drain_s) before stopping", app.settings.drain_s)
    try:
        await asyncio.wait_for(signals.get(), app.settings.drain_s)
        log.info("second signal: ending the drain early")
    except asyncio.TimeoutError:
        pass


def serve(settings: ServerSettings, warnings: Sequence[str] = ()) -> int:
    """Run the server; ``warnings`` (from loading the settings) are logged once, after logging is set up."""
    _configure_logging(settings)
    for w in warnings:
        log.warning("%s", w)
    if settings.workers > 1:
        return _serve_workers(settings)
    return _serve_one(settings)


def _serve_one(settings: ServerSettings, worker: WorkerSlot | None = None) -> int:
    """One server process (a worker too: its settings keep ``workers`` so it binds with SO_REUSEPORT)."""
    _configure_logging(settings)  # again in a spawned worker, which starts with bare logging
    loop = new_event_loop(settings.loop)
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_main(settings, worker))
    except Exception:  # one log record (one JSON line with --log-format json), not a bare traceback
        log.exception("server failed")
        return 1
    finally:
        loop.close()


def _configure_logging(settings: ServerSettings) -> None:
    configure_logging(settings.log_level, settings.log_format, settings.access_log)


def _serve_workers(settings: ServerSettings) -> int:
    """Run ``workers`` server processes on the same ports (SO_REUSEPORT; the kernel spreads
    connections). They serve independently and share only statistics snapshots, in a private
    directory removed when all have exited. SIGTERM/SIGINT are forwarded; each worker drains its
    own in-flight requests."""
    import multiprocessing

    stats_dir = tempfile.mkdtemp(prefix="gateway-workers-")
    try:
        return _run_workers(settings, multiprocessing.get_context("spawn"), stats_dir)
    finally:
        shutil.rmtree(stats_dir, ignore_errors=True)


def _run_workers(settings: ServerSettings, ctx: Any, stats_dir: str) -> int:
    procs = [ctx.Process(target=_serve_one, args=(settings, WorkerSlot(i, stats_dir)), name=f"gateway-worker-{i}")
             for i in range(settings.workers)]
    for p in procs:
        p.start()

    forwarded: set[int] = set()

    def forward(signum: int, _frame: object) -> None:
        forwarded.add(signum)
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signum)  # SIGTERM drains, SIGINT does not: the worker decides

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.join()
    # A worker still starting when the stop came has no handler yet and dies of the signal we
    # forwarded: that is a clean stop too, not a failure.
    return 0 if all(p.exitcode == 0 or (p.exitcode is not None and -p.exitcode in forwarded)
                    for p in procs) else 1
