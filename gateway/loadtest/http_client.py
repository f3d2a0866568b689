"""Raw HTTP/1.1 keep-alive load client: an asyncio Protocol per connection, httptools for responses.

Why not aiohttp/httpx: a load generator must spend far less CPU per request than the server it
measures. Here a send is one ``transport.write`` of precomputed bytes, and a response costs one
httptools feed whose only Python callback is ``on_message_complete`` (no header or body callbacks
are defined, so httptools skips them). One request in flight per connection (no pipelining), so a
response always belongs to the connection's current request.

Open loop (``HttpOpenLoop``): each due request takes an idle connection (LIFO, so few connections
stay hot); when none is idle it waits in ``pending`` and the pool grows, up to ``max_conns``, by one
connection per waiting request. Latency is measured from the request's *intended* time, so time
spent waiting for a connection or for a stalled server is counted (no coordinated omission), and
sends more than ``late_s`` behind schedule are counted as late. ``sweep`` fails requests older than
the timeout, whether in flight (the connection is aborted) or still waiting.

Closed loop (``HttpClosedLoop``): ``concurrency`` connections, each sends its next request the moment
the previous answer arrives, as perf_analyzer's concurrency mode does; latency from the actual send.
"""

from __future__ import annotations

import asyncio
from array import array
from collections import deque
from collections.abc import Callable, Sequence

import httptools
import numpy as np

from gateway.loadtest.recorder import ST_CONN_LOST, ST_CONNECT, ST_PROTOCOL, ST_TIMEOUT, Recorder

__all__ = ["HttpConnection", "HttpOpenLoop", "HttpClosedLoop"]

_MAX_PARALLEL_CONNECTS = 64


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection; reports each complete response to its owner."""

    __slots__ = ("owner", "transport", "parser", "idx", "t0")

    def __init__(self, owner: HttpOpenLoop | HttpClosedLoop) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idx = -1  # index of the request in flight, -1 when idle
        self.t0 = 0.0  # the time latency is measured from

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, idx: int, t0: float, payload: bytes) -> None:
        self.idx, self.t0 = idx, t0
        self.transport.write(payload)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.owner.on_failed(self, ST_PROTOCOL)
            self.abort()

    def on_message_complete(self) -> None:
        self.owner.on_response(self, self.parser.get_status_code(), self.parser.should_keep_alive())

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.on_lost(self)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class HttpOpenLoop:
    """Connection pool for open-loop sends; see the module docstring.

    The pool grows lazily: a request that finds no idle connection waits, and only if requests are
    still waiting ``grow_after_s`` later are connections added (one per waiting request). Growing on
    every momentary shortage would open hundreds of connections for the microsecond bursts that the
    1 ms timer tick creates, and a big pool costs the server (and us) more per request.
    """

    def __init__(self, host: str, port: int, payloads: Sequence[bytes], choice: np.ndarray,
                 intended: Sequence[float], rec: Recorder, clock: Callable[[], float], *, start: float,
                 max_conns: int, timeout: float, late_s: float, grow_after_s: float = 0.001) -> None:
        self.host, self.port = host, port
        self.payloads = payloads
        self.choice = array("i", np.asarray(choice, dtype=np.int32).tobytes())
        self.intended = intended  # absolute clock times, set by the runner once the start is known
        self.rec, self.clock, self.start = rec, clock, start
        self.max_conns, self.timeout, self.late_s = max_conns, timeout, late_s
        self.grow_after_s = grow_after_s
        self.idle: list[HttpConnection] = []
        self.conns: set[HttpConnection] = set()
        self.pending: deque[int] = deque()
        self.connecting = 0
        self.opened = self.max_open = self.connect_errors = 0
        self.late = 0
        self.loop = asyncio.get_running_loop()
        self._grow_timer: asyncio.TimerHandle | None = None
        self._connects: set[asyncio.Task[None]] = set()  # connects in progress, cancelled at the end

    async def prepare(self, n: int) -> None:
        """Open ``n`` connections before the clock starts (failures surface here, not as errors)."""
        for _ in range(n):
            _, conn = await self.loop.create_connection(lambda: HttpConnection(self), self.host, self.port)
            self._opened(conn)
            self.idle.append(conn)

    def _opened(self, conn: HttpConnection) -> None:
        self.conns.add(conn)
        self.opened += 1
        self.max_open = max(self.max_open, len(self.conns))

    @property
    def in_flight(self) -> int:
        return len(self.conns) - len(self.idle) + len(self.pending)

    def submit(self, i: int) -> None:
        if self.idle:
            self._send(self.idle.pop(), i)
        else:
            self.pending.append(i)
            if self._grow_timer is None:
                self._grow_timer = self.loop.call_later(self.grow_after_s, self._grow)

    def _send(self, conn: HttpConnection, i: int) -> None:
        t = self.intended[i]
        if self.clock() - t > self.late_s:
            self.late += 1
        self.rec.sent += 1
        conn.idx = i
        conn.t0 = t
        conn.transport.write(self.payloads[self.choice[i]])  # type: ignore[union-attr]

    def _grow(self) -> None:
        self._grow_timer = None
        if not self.pending:
            return
        while (self.connecting < len(self.pending) and self.connecting < _MAX_PARALLEL_CONNECTS
               and len(self.conns) + self.connecting < self.max_conns):
            self.connecting += 1
            task = self.loop.create_task(self._connect())
            self._connects.add(task)
            task.add_done_callback(self._connects.discard)
        self._grow_timer = self.loop.call_later(self.grow_after_s, self._grow)

    async def _connect(self) -> None:
        try:
            _, conn = await self.loop.create_connection(lambda: HttpConnection(self), self.host, self.port)
        except OSError:
            self.connecting -= 1
            self.connect_errors += 1
            if self.pending:  # a refused connect fails the oldest waiting request, never silently
                self._finish(self.pending.popleft(), ST_CONNECT)
            return
        self.connecting -= 1
        self._opened(conn)
        if self.pending:
            self._send(conn, self.pending.popleft())
        else:
            self.idle.append(conn)

    def _finish(self, i: int, status: int) -> None:
        self.rec.record(i, self.clock() - self.intended[i], status)

    def on_response(self, conn: HttpConnection, status: int, keep_alive: bool) -> None:
        i = conn.idx
        if i < 0:
            return
        conn.idx = -1
        rec = self.rec
        lat = self.clock() - conn.t0
        rec.lat[i] = lat
        rec.status[i] = status
        rec.done += 1
        rec.recent.append(lat)
        if not 200 <= status < 300:
            rec.errors += 1
        if not keep_alive:
            conn.transport.close()  # type: ignore[union-attr]
        elif self.pending:
            self._send(conn, self.pending.popleft())
        else:
            self.idle.append(conn)

    def on_failed(self, conn: HttpConnection, status: int) -> None:
        i, conn.idx = conn.idx, -1
        if i >= 0:
            self._finish(i, status)

    def on_lost(self, conn: HttpConnection) -> None:
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self.on_failed(conn, ST_CONN_LOST)
        if self.pending and self._grow_timer is None:
            self._grow_timer = self.loop.call_soon(self._grow)  # type: ignore[assignment]

    def sweep(self) -> None:
        """Fail requests older than the timeout (called periodically and while draining)."""
        limit = self.clock() - self.timeout
        while self.pending and self.intended[self.pending[0]] < limit:
            self._finish(self.pending.popleft(), ST_TIMEOUT)
        for conn in [c for c in self.conns if c.idx >= 0 and c.t0 < limit]:
            self.on_failed(conn, ST_TIMEOUT)
            conn.abort()

    def close(self) -> None:
        if self._grow_timer is not None:
            self._grow_timer.cancel()
        for conn in list(self.conns):
            conn.abort()

    async def aclose(self) -> None:
        """Close, and end the connects still in progress (a server past its accept queue leaves
        some pending): a task left pending when the loop closes is reported as destroyed."""
        self.close()
        tasks = list(self._connects)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for conn in list(self.conns):  # opened by a connect that finished while being cancelled
            conn.abort()


class HttpClosedLoop:
    """``concurrency`` connections each resending as soon as an answer arrives, until ``end``."""

    def __init__(self, host: str, port: int, payloads: Sequence[bytes], choice: np.ndarray,
                 rec: Recorder, clock: Callable[[], float], *, concurrency: int, end: float,
                 max_requests: int | None, timeout: float) -> None:
        self.host, self.port, self.concurrency = host, port, concurrency
        self.payloads = payloads
        self.choice = choice.tolist()
        self.rec, self.clock, self.end, self.timeout = rec, clock, end, timeout
        self.budget = max_requests if max_requests is not None else 1 << 62
        self.conns: set[HttpConnection] = set()
        self.opened = self.connect_errors = self.late = 0
        self.loop = asyncio.get_running_loop()

    @property
    def max_open(self) -> int:
        return self.opened

    @property
    def in_flight(self) -> int:
        return sum(1 for c in self.conns if c.idx >= 0)

    async def prepare(self, n: int) -> None:
        for _ in range(self.concurrency):
            _, conn = await self.loop.create_connection(lambda: HttpConnection(self), self.host, self.port)
            self.conns.add(conn)
            self.opened += 1

    def begin(self) -> None:
        for conn in list(self.conns):
            self._next(conn)

    def _next(self, conn: HttpConnection) -> None:
        now = self.clock()
        if now >= self.end or len(self.rec.t) >= self.budget:
            conn.idx = -1
            return
        i = self.rec.new(now)
        self.rec.sent += 1
        conn.send(i, now, self.payloads[self.choice[i % len(self.choice)]])

    def on_response(self, conn: HttpConnection, status: int, keep_alive: bool) -> None:
        i, conn.idx = conn.idx, -1
        if i < 0:
            return
        self.rec.record(i, self.clock() - conn.t0, status)
        if keep_alive:
            self._next(conn)
        else:
            conn.transport.close()  # type: ignore[union-attr]

    def on_failed(self, conn: HttpConnection, status: int) -> None:
        i, conn.idx = conn.idx, -1
        if i >= 0:
            self.rec.record(i, self.clock() - conn.t0, status)

    def on_lost(self, conn: HttpConnection) -> None:
        self.conns.discard(conn)
        self.on_failed(conn, ST_CONN_LOST)
        if self.clock() < self.end:  # keep the concurrency: replace a closed connection
            self.loop.create_task(self._reopen())

    async def _reopen(self) -> None:
        try:
            _, conn = await self.loop.create_connection(lambda: HttpConnection(self), self.host, self.port)
        except OSError:
            self.connect_errors += 1
            await asyncio.sleep(0.05)
            if self.clock() < self.end:
                self.loop.create_task(self._reopen())
            return
        self.conns.add(conn)
        self.opened += 1
        self._next(conn)

    def sweep(self) -> None:
        limit = self.clock() - self.timeout
        for conn in [c for c in self.conns if c.idx >= 0 and c.t0 < limit]:
            self.on_failed(conn, ST_TIMEOUT)
            conn.abort()

    def close(self) -> None:
        for conn in list(self.conns):
            conn.abort()
