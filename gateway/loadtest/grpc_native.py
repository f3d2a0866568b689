"""gRPC (KServe v2 ``ModelInfer``) load client on libnghttp2 (``gateway._native.h2.GrpcClient``).

grpc.aio costs the client ~100 µs of CPU per call, so on a machine shared with the server it
measured the tool, not the server (1.3k calls/s against a front that takes 50k). This client sends
the same pre-serialized messages (``targets.encode_grpc``) over HTTP/2 connections driven from C:
a call is one C call to start (its framed message made once per request kind) and one Python
callback when its stream closes, with the grpc-status read from the trailers. Responses are never parsed. Calls are spread over
``channels`` connections per process, round robin. The deadline travels as ``grpc-timeout``,
and the server enforces it. Status codes are recorded as the grpc.aio client records them
(``GRPC_BASE + code``); a stream that ends without a status (reset, connection lost) is
UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gateway.loadtest.recorder import GRPC_BASE, ST_TIMEOUT, Recorder

try:
    from gateway._native.h2 import GrpcClient
except ImportError as exc:  # built without libnghttp2's headers
    GrpcClient = object  # type: ignore[misc,assignment]
    MISSING: str | None = f"the native gRPC load client needs libnghttp2 ({exc}): apt-get install libnghttp2-dev"
else:
    MISSING = None

__all__ = ["MISSING", "NativeGrpcClosedLoop", "NativeGrpcOpenLoop"]

_PATH = b"/inference.GRPCInferenceService/ModelInfer"
_UNAVAILABLE = 14


class _Conn(GrpcClient, asyncio.Protocol):  # type: ignore[misc,valid-type]
    def __init__(self, done: Callable[[Any, int], None]) -> None:
        self.done = done

    def connection_made(self, transport: Any) -> None:
        self.h2_start(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail_all()


def _headers(host: str, port: int, metadata: Sequence[tuple[tuple[str, str], ...]],
             timeout: float) -> list[list[tuple[bytes, bytes]]]:
    """The header list of each request variant (metadata differs per variant)."""
    base = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", _PATH),
            (b":authority", f"{host}:{port}".encode()), (b"content-type", b"application/grpc"),
            (b"te", b"trailers"), (b"grpc-timeout", f"{max(1, int(timeout * 1000))}m".encode())]
    return [base + [(k.lower().encode(), v.encode()) for k, v in md or ()] for md in metadata]


class _Pool:
    def __init__(self, host: str, port: int, n: int, done: Callable[[Any, int], None]) -> None:
        if MISSING is not None:
            raise RuntimeError(MISSING)
        self.host, self.port, self.n, self.done = host, port, max(1, n), done
        self.conns: list[_Conn] = []
        self.rr = 0

    async def open(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.n):
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(self.done), self.host, self.port), timeout)
            self.conns.append(proto)

    def next(self) -> _Conn:
        self.rr = (self.rr + 1) % len(self.conns)
        return self.conns[self.rr]

    def close(self) -> None:
        for c in self.conns:
            if c.transport is not None:
                c.transport.close()


class _Engine:
    """What both loops share: the connection pool, opened before the start and closed at the end."""

    pool: _Pool
    connect_errors: int

    @property
    def opened(self) -> int:
        return len(self.pool.conns)

    async def prepare(self, n: int) -> None:
        try:
            await self.pool.open(10.0)
        except OSError:
            self.connect_errors += 1
            raise

    def close(self) -> None:
        self.pool.close()

    async def aclose(self) -> None:
        self.close()


class NativeGrpcOpenLoop(_Engine):
    """Open loop: each due request starts a call at once (up to ``max_in_flight``; then it waits,
    its latency still counted from the intended time)."""

    def __init__(self, host: str, port: int, payloads: Sequence[bytes],
                 metadata: Sequence[tuple[tuple[str, str], ...]], choice: np.ndarray, intended: Sequence[float],
                 rec: Recorder, clock: Callable[[], float], *, start: float, channels: int,
                 max_in_flight: int, timeout: float, late_s: float) -> None:
        self.pool = _Pool(host, port, channels, self._done)
        self.headers = _headers(host, port, metadata, timeout)
        self.payloads, self.choice, self.intended = [GrpcClient.frame(m) for m in payloads], choice.tolist(), intended
        self.rec, self.clock, self.start = rec, clock, start
        self.max_in_flight, self.timeout, self.late_s = max_in_flight, timeout, late_s
        self.pending: deque[int] = deque()
        self.active = 0
        self.late = self.connect_errors = self.max_open = 0

    @property
    def in_flight(self) -> int:
        return self.active + len(self.pending)

    def submit(self, i: int) -> None:
        if self.active < self.max_in_flight:
            self._start(i)
        else:
            self.pending.append(i)

    def _start(self, i: int) -> None:
        if self.clock() - self.intended[i] > self.late_s:
            self.late += 1
        self.active += 1
        if self.active > self.max_open:
            self.max_open = self.active
        self.rec.sent += 1
        v = self.choice[i]
        if not self.pool.next().call(self.headers[v], self.payloads[v], i):
            self._done(i, _UNAVAILABLE)

    def _done(self, i: int, status: int) -> None:
        self.rec.record(i, self.clock() - self.intended[i], GRPC_BASE + status)
        self.active -= 1
        if self.pending:
            self._start(self.pending.popleft())

    def sweep(self) -> None:
        limit = self.clock() - self.timeout
        while self.pending and self.intended[self.pending[0]] < limit:
            i = self.pending.popleft()
            self.rec.record(i, self.clock() - self.intended[i], ST_TIMEOUT)


class NativeGrpcClosedLoop(_Engine):
    """Closed loop: ``concurrency`` calls in flight; each answer starts the next call."""

    def __init__(self, host: str, port: int, payloads: Sequence[bytes],
                 metadata: Sequence[tuple[tuple[str, str], ...]], choice: np.ndarray, rec: Recorder,
                 clock: Callable[[], float], *, channels: int, concurrency: int, end: float,
                 max_requests: int | None, timeout: float) -> None:
        self.pool = _Pool(host, port, channels, self._done)
        self.headers = _headers(host, port, metadata, timeout)
        self.payloads, self.choice = [GrpcClient.frame(m) for m in payloads], choice.tolist()
        self.rec, self.clock, self.end = rec, clock, end
        self.concurrency = concurrency
        self.budget = max_requests if max_requests is not None else 1 << 62
        self.late = self.connect_errors = 0
        self.t0: dict[int, float] = {}
        self.stopped = False

    @property
    def max_open(self) -> int:
        return len(self.pool.conns)

    @property
    def in_flight(self) -> int:
        return self.concurrency

    def begin(self) -> None:
        for _ in range(self.concurrency):
            self._next()

    def _next(self) -> None:
        t0 = self.clock()
        if self.stopped or t0 >= self.end or len(self.rec.t) >= self.budget:
            return
        i = self.rec.new(t0)
        self.t0[i] = t0
        self.rec.sent += 1
        v = self.choice[i % len(self.choice)]
        if not self.pool.next().call(self.headers[v], self.payloads[v], i):  # the connection is gone
            self.connect_errors += 1
            self.t0.pop(i)
            self.rec.record(i, 0.0, GRPC_BASE + _UNAVAILABLE)
            asyncio.get_running_loop().call_later(0.01, self._next)  # not a spin on a dead connection

    def _done(self, i: int, status: int) -> None:
        t0 = self.t0.pop(i, None)
        if t0 is None:
            return
        self.rec.record(i, self.clock() - t0, GRPC_BASE + status)
        self._next()

    def sweep(self) -> None:  # deadlines travel as grpc-timeout: the server enforces them
        pass

    def close(self) -> None:
        self.stopped = True
        super().close()
