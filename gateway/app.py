"""Composition root: builds registry, router, data plane, metrics and both fronts, and runs them.

Nothing else constructs these; everything is passed down through constructors.
``serve`` is the process entry point: uvloop (or asyncio), signal handling and graceful
shutdown (SIGTERM/SIGINT: stop accepting, finish in-flight requests, exit 0).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.dataplane import DataPlane
from gateway.front.http import HttpFront
from gateway.logs import configure_logging
from gateway.metrics import make_metrics_registry
from gateway.registry import ModelRegistry
from gateway.route import Router
from gateway.settings import ServerSettings

log = logging.getLogger(__name__)


class App:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if settings.demo and not settings.model_repository:
            from gateway.demo import build_demo_repository

            self._tmp = tempfile.TemporaryDirectory(prefix="gateway-demo-")
            self.repository = build_demo_repository(Path(self._tmp.name))
        else:
            self.repository = Path(settings.model_repository)
        self.registry = ModelRegistry(self.repository)
        self.router = Router(self.registry)
        self.dataplane = DataPlane(self.registry, self.router, server_name=settings.server_name)
        self.metrics = make_metrics_registry(self.registry)
        self.http = HttpFront(self.dataplane, settings, self.metrics)
        self.grpc: Any = None

    @property
    def http_port(self) -> int:
        return self.http.port

    @property
    def grpc_port(self) -> int:
        return self.grpc.port if self.grpc is not None else -1

    async def start(self) -> None:
        await self.registry.load_all()
        await self.http.start()
        if self.settings.grpc_port >= 0:
            from gateway.front.grpc_server import start_grpc_front

            self.grpc = await start_grpc_front(self.dataplane, self.settings)

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.shutdown_grace_s if grace is None else grace
        if self.grpc is not None:
            await asyncio.gather(self.http.stop(grace), self.grpc.stop(grace))
        else:
            await self.http.stop(grace)
        await self.registry.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


async def _main(settings: ServerSettings) -> int:
    app = App(settings)
    await app.start()
    # Everything loaded so far (models, sessions, modules) lives for the whole process: move it
    # out of the collector's sight, and collect the young generation less often. The request path
    # allocates many short-lived containers; a gen-0 pass every 700 of them showed in profiles.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
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
    await stop.wait()
    log.info("shutting down: draining in-flight requests (up to %.0f s)", settings.shutdown_grace_s)
    await app.stop()
    return 0


def serve(settings: ServerSettings, warnings: Sequence[str] = ()) -> int:
    """Run the server; ``warnings`` (from loading the settings) are logged once, after logging is set up."""
    _configure_logging(settings)
    for w in warnings:
        log.warning("%s", w)
    if settings.workers > 1:
        return _serve_workers(settings)
    return _serve_one(settings)


def _serve_one(settings: ServerSettings) -> int:
    """One server process (a worker too: its settings keep ``workers`` so it binds with SO_REUSEPORT)."""
    _configure_logging(settings)  # again in a spawned worker, which starts with bare logging
    loop = new_event_loop(settings.loop)
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_main(settings))
    except Exception:  # one log record (one JSON line with --log-format json), not a bare traceback
        log.exception("server failed")
        return 1
    finally:
        loop.close()


def _configure_logging(settings: ServerSettings) -> None:
    configure_logging(settings.log_level, settings.log_format, settings.access_log)


def _serve_workers(settings: ServerSettings) -> int:
    """Run ``workers`` independent server processes on the same ports (SO_REUSEPORT; the kernel
    spreads connections). Replicas share nothing, so this is the one-host form of scaling out.
    SIGTERM/SIGINT are forwarded; each worker drains its own in-flight requests."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_serve_one, args=(settings,), name=f"gateway-worker-{i}")
             for i in range(settings.workers)]
    for p in procs:
        p.start()

    def forward(_signum: int, _frame: object) -> None:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.join()
    return 0 if all(p.exitcode == 0 for p in procs) else 1
