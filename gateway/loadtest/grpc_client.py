"""gRPC (KServe v2 ``ModelInfer``) load client over grpc.aio, sending pre-serialized requests.

The method is registered with no serializer and no deserializer, so each call sends the bytes
``targets.encode_grpc`` made once and gets the response back as bytes it never parses: protobuf
work per request is zero on the client. Routing key and priority travel as gRPC metadata (and, with
``--priority-param``, as a request parameter inside the precomputed message).

HTTP/2 multiplexes many calls over one connection, so the open loop has no connection pool: it
starts a call per due request on ``channels`` channels in turn, up to ``max_in_flight`` outstanding
(then requests wait, their latency still counted from the intended time). grpc.aio runs on the
stdlib asyncio loop (its poller integration targets it), not uvloop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence

import grpc
import numpy as np

from gateway.loadtest.recorder import GRPC_BASE, ST_TIMEOUT, Recorder

__all__ = ["GrpcOpenLoop", "GrpcClosedLoop"]

_METHOD = "/inference.GRPCInferenceService/ModelInfer"
_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


class _Channels:
    def __init__(self, host: str, port: int, n: int) -> None:
        # Distinct channel args keep grpc from sharing one subchannel (one TCP connection) among them.
        self.channels = [grpc.aio.insecure_channel(f"{host}:{port}", options=[*_OPTIONS, ("gw.lt.ch", i)])
                         for i in range(max(1, n))]
        self.calls = [ch.unary_unary(_METHOD, request_serializer=None, response_deserializer=None)
                      for ch in self.channels]
        self.opened = len(self.channels)

    async def ready(self, timeout: float) -> None:
        await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in self.channels)), timeout)

    async def close(self) -> None:
        await asyncio.gather(*(ch.close(grace=None) for ch in self.channels))


def _code(exc: grpc.aio.AioRpcError) -> int:
    return GRPC_BASE + exc.code().value[0]


class GrpcOpenLoop:
    def __init__(self, host: str, port: int, payloads: Sequence[bytes],
                 metadata: Sequence[tuple[tuple[str, str], ...]], choice: np.ndarray, intended: Sequence[float],
                 rec: Recorder, clock: Callable[[], float], *, start: float, channels: int,
                 max_in_flight: int, timeout: float, late_s: float) -> None:
        self.ch = _Channels(host, port, channels)
        self.payloads, self.metadata, self.choice, self.intended = payloads, metadata, choice, intended
        self.rec, self.clock, self.start = rec, clock, start
        self.max_in_flight, self.timeout, self.late_s = max_in_flight, timeout, late_s
        self.pending: deque[int] = deque()
        self.active = 0
        self.late = self.connect_errors = self.max_open = 0
        self.rr = 0
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task] = set()

    @property
    def opened(self) -> int:
        return self.ch.opened

    @property
    def in_flight(self) -> int:
        return self.active + len(self.pending)

    async def prepare(self, n: int) -> None:
        await self.ch.ready(10.0)

    def submit(self, i: int) -> None:
        if self.active < self.max_in_flight:
            self._start(i)
        else:
            self.pending.append(i)

    def _start(self, i: int) -> None:
        t = self.intended[i]
        now = self.clock()
        if now - t > self.late_s:
            self.late += 1
        self.active += 1
        self.max_open = max(self.max_open, self.active)
        self.rec.sent += 1
        self.rr = (self.rr + 1) % len(self.ch.calls)
        task = self.loop.create_task(self._call(self.ch.calls[self.rr], i, t, max(0.001, t + self.timeout - now)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _call(self, call: grpc.aio.UnaryUnaryMultiCallable, i: int, t: float, deadline: float) -> None:
        v = self.choice[i]
        try:
            await call(self.payloads[v], metadata=self.metadata[v] or None, timeout=deadline)
            status = GRPC_BASE
        except grpc.aio.AioRpcError as exc:
            status = _code(exc)
        self.rec.record(i, self.clock() - t, status)
        self.active -= 1
        if self.pending:
            self._start(self.pending.popleft())

    def sweep(self) -> None:
        limit = self.clock() - self.timeout
        while self.pending and self.intended[self.pending[0]] < limit:
            i = self.pending.popleft()
            self.rec.record(i, self.clock() - self.intended[i], ST_TIMEOUT)

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    async def aclose(self) -> None:
        self.close()
        await self.ch.close()


class GrpcClosedLoop:
    def __init__(self, host: str, port: int, payloads: Sequence[bytes],
                 metadata: Sequence[tuple[tuple[str, str], ...]], choice: np.ndarray, rec: Recorder,
                 clock: Callable[[], float], *, channels: int, concurrency: int, end: float,
                 max_requests: int | None, timeout: float) -> None:
        self.ch = _Channels(host, port, channels)
        self.payloads, self.metadata, self.choice = payloads, metadata, choice.tolist()
        self.rec, self.clock, self.end, self.timeout = rec, clock, end, timeout
        self.concurrency = concurrency
        self.budget = max_requests if max_requests is not None else 1 << 62
        self.late = self.connect_errors = 0
        self.workers: list[asyncio.Task] = []

    @property
    def opened(self) -> int:
        return self.ch.opened

    max_open = opened

    @property
    def in_flight(self) -> int:
        return self.concurrency

    async def prepare(self, n: int) -> None:
        await self.ch.ready(10.0)

    def begin(self) -> None:
        loop = asyncio.get_running_loop()
        self.workers = [loop.create_task(self._worker(k)) for k in range(self.concurrency)]

    async def _worker(self, k: int) -> None:
        call = self.ch.calls[k % len(self.ch.calls)]
        n = len(self.choice)
        while True:
            t0 = self.clock()
            if t0 >= self.end or len(self.rec.t) >= self.budget:
                return
            i = self.rec.new(t0)
            self.rec.sent += 1
            v = self.choice[i % n]
            try:
                await call(self.payloads[v], metadata=self.metadata[v] or None, timeout=self.timeout)
                status = GRPC_BASE
            except grpc.aio.AioRpcError as exc:
                status = _code(exc)
                if status == GRPC_BASE + grpc.StatusCode.UNAVAILABLE.value[0]:
                    self.connect_errors += 1
            self.rec.record(i, self.clock() - t0, status)

    def sweep(self) -> None:  # deadlines are enforced by grpc itself
        pass

    def close(self) -> None:
        for w in self.workers:
            w.cancel()

    async def aclose(self) -> None:
        self.close()
        await self.ch.close()


