"""Accepting connections in batches, not one per loop pass.

uvloop's ``create_server`` accepts one pending connection per pass of the event loop (libuv stops
reading the listening socket until the accepted one is taken, and uvloop takes it from a later
callback). While the loop is busy, passes take milliseconds, so new connections are taken at a few
hundred a second whatever the load: at twice the capacity of batch-64 requests the kernel's accept
queue held ~2,000 connections (``ss -ltn``: Recv-Q), most already closed by their clients, and a
``/metrics`` scrape on a new connection waited 1-2 s behind them. The backlog a server must see to
shed load sat where it could not see it.

``Listener`` reads the listening socket itself: every time it is readable, it accepts up to
``burst`` connections and hands each to the loop (``connect_accepted_socket``). The backlog then
reaches the loop, where requests are read, measured (``pipeline.door``) and answered or refused.
Running out of file descriptors (EMFILE, ENFILE, ENOBUFS) pauses accepting for ``pause_s`` instead
of spinning on a socket that stays readable, as asyncio's own loop does.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def bind(host: str, port: int, backlog: int, reuse_port: bool) -> list[socket.socket]:
    """Listening sockets for every address ``host`` resolves to (as ``loop.create_server``)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _name, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            s = socket.socket(family, kind, proto)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((addr[0], port, *addr[2:]))
            port = s.getsockname()[1]  # asked for 0: the other addresses get the port the first got
            s.listen(backlog)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


class Listener:
    """Accepts on ``socks`` in bursts and connects each new socket to ``factory()``'s protocol."""

    def __init__(self, socks: list[socket.socket], factory: Callable[[], asyncio.Protocol],
                 burst: int = 128, pause_s: float = 0.5) -> None:
        self.sockets = socks
        self.factory = factory
        self.burst = burst
        self.pause_s = pause_s
        self.accepted = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Task[object]] = set()  # connections being attached (a pass each)
        self._closed = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for s in self.sockets:
            s.setblocking(False)
            self._loop.add_reader(s.fileno(), self._ready, s)

    def _ready(self, lsock: socket.socket) -> None:
        loop = self._loop
        assert loop is not None
        for _ in range(self.burst):
            try:
                conn, _addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up before we took it
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:
                    log.warning("accepting HTTP connections paused for %g s: %s", self.pause_s, exc)
                    loop.remove_reader(lsock.fileno())
                    loop.call_later(self.pause_s, self._resume, lsock)
                    return
                raise
            self.accepted += 1
            conn.setblocking(False)
            if conn.family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(self._attach(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _attach(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self.factory, conn)  # type: ignore[union-attr]
        except OSError:  # reset before it was attached: nothing was read, nothing is owed
            conn.close()

    def _resume(self, lsock: socket.socket) -> None:
        if not self._closed and self._loop is not None and lsock.fileno() >= 0:
            self._loop.add_reader(lsock.fileno(), self._ready, lsock)

    def close(self) -> None:
        """Stop accepting: the listening sockets are closed; accepted connections are not touched."""
        self._closed = True
        for s in self.sockets:
            if self._loop is not None and s.fileno() >= 0:
                self._loop.remove_reader(s.fileno())
            s.close()
