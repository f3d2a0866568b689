"""Interpreter time per request on the HTTP infer path, in process, without sockets.

Drives the real front (``HttpFront``/``HttpProtocol``), data plane and demo repository (model
``mlp``, 64->256->256->10 FP32, inline onnxruntime) through fake transports that record writes:
each round, ``--conns`` connections each receive one batch-1 JSON request (one
``data_received``), then the loop runs until every answer is written, as it does under wrk at
that concurrency. Reports the CPU time per request, the part of it spent inside onnxruntime's
``run`` (timed around the session call), and the rest: the gateway's own work per request.

    python bench/request_path.py [--rounds 1000] [--repeat 5] [--conns 64] [--body json|binary] [--identical]
                                 [--profile]

``--profile`` prints the functions with the most own time (cProfile; its overhead inflates every
figure, so read it for shares, not for µs). One process, no load generator: this is the figure
the issue's "Python time per request" target is about; the socket work (~10 µs per request in
the kernel here) comes on top of it in a real run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.compose import build_pipeline
from gateway.demo import build_demo_repository
from gateway.front.http.server import HttpFront
from gateway.observe.metrics import make_metrics_registry
from gateway.settings import ServerSettings


class _Transport:
    """Records the answers. What is called per request (``write``, ``is_closing``) is a C callable
    (a list's ``append``, a length), as uvloop's compiled transport is, so that the figure holds
    no frame of this harness."""

    __slots__ = ("written", "write", "is_closing", "_closed")

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.write = self.written.append
        self._closed: list[bool] = []
        self.is_closing = self._closed.__len__

    @property
    def closed(self) -> bool:
        return bool(self._closed)

    def close(self) -> None:
        self._closed.append(True)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def request_bytes(kind: str, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    values = [rng.uniform(-1, 1) for _ in range(64)]
    if kind == "json":
        body = ('{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,64],"data":['
                + ",".join(f"{v:.6f}" for v in values) + "]}]}").encode()
        extra = b""
    else:  # tritonclient's default: the binary extension, both ways
        head = (b'{"inputs":[{"name":"INPUT0","shape":[1,64],"datatype":"FP32","parameters":{"binary_data_size":256}}],'
                b'"outputs":[{"name":"OUTPUT0","parameters":{"binary_data":true}}]}')
        body = head + np.asarray(values, dtype=np.float32).tobytes()
        extra = b"Inference-Header-Content-Length: %d\r\n" % len(head)
    return (b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body)


async def _run(args: argparse.Namespace, root: Path) -> None:
    pipeline = build_pipeline(root)
    await pipeline.registry.load_all()
    dp = pipeline.dataplane
    front = HttpFront(dp, ServerSettings(), make_metrics_registry(dp))
    mv = pipeline.registry.get("mlp", "", require_ready=True)
    backend = mv.backend
    ort_time = [0.0]
    inner = backend._run

    def timed(sess: Any, feeds: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(sess, feeds)
        finally:
            ort_time[0] += time.perf_counter() - t0

    backend._run = timed
    # distinct bodies, as real clients send (wrk's one body would be coalesced: --identical)
    bodies = [request_bytes(args.body, 7 if args.identical else i) for i in range(args.conns)]
    protos, transports = [], []
    for _ in range(args.conns):
        t = _Transport()
        p = front.protocol(front)
        p.connection_made(t)
        protos.append(p)
        transports.append(t)

    async def rounds(n: int) -> None:
        for _ in range(n):
            for p, data in zip(protos, bodies, strict=True):
                p.data_received(data)
            last = transports[-1].written
            while not last:
                await asyncio.sleep(0)
            for t in transports:
                t.written.clear()

    try:  # as the server does once it is ready
        from gateway.app import settle_collector
    except ImportError:  # a checkout from before it (BASE runs): what it did inline
        import gc

        def settle_collector() -> None:
            gc.collect()
            gc.freeze()
            gc.set_threshold(20_000, 20, 20)
    settle_collector()
    await rounds(200)  # warm up: caches, the batcher's cost model
    prof = cProfile.Profile() if args.profile else None
    n = args.rounds * args.conns
    best: tuple[float, float, float] | None = None
    for _ in range(args.repeat):  # the least of several: noise on a shared machine only adds
        ort_time[0] = 0.0
        c0, w0 = time.process_time(), time.perf_counter()
        if prof is not None:
            prof.enable()
        await rounds(args.rounds)
        if prof is not None:
            prof.disable()
        run = (time.process_time() - c0, time.perf_counter() - w0, ort_time[0])
        if best is None or run[0] - run[2] < best[0] - best[2]:
            best = run
    assert best is not None
    cpu, wall, ort = best
    bad = [t.closed for t in transports]
    assert not any(bad), "a connection was closed: an answer was an error"
    print(f"requests={n} conns={args.conns} body={args.body} identical={args.identical} repeat={args.repeat}")
    print(f"cpu_us_per_request={cpu / n * 1e6:.2f} wall_us_per_request={wall / n * 1e6:.2f} "
          f"onnxruntime_us_per_request={ort / n * 1e6:.2f} "
          f"gateway_us_per_request={(cpu - ort) / n * 1e6:.2f}")
    try:
        from gateway._native.lane import counts
        lane, general = counts()
        print(f"lane_requests={lane} general_requests={general}")
    except ImportError:  # a checkout from before the lane (BASE runs)
        pass
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    await pipeline.registry.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--body", choices=("json", "binary"), default="json")
    ap.add_argument("--repeat", type=int, default=5, help="measure this many times, report the least")
    ap.add_argument("--identical", action="store_true", help="one body for all, as wrk sends (coalesced)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        root = build_demo_repository(Path(tmp))
        loop.run_until_complete(_run(args, root))
    loop.close()


if __name__ == "__main__":
    main()
