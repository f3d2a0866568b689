"""The HTTP access log: ``HttpProtocol`` with one ``gateway.access`` line per answered request.

``HttpFront`` uses this subclass only when ``access_log`` is on, so the plain protocol carries no
check for it. A request is noted when its message is complete and logged when its answer is
produced (``_write_in_order`` sees every answer exactly once, in any order, even one that waits
for its turn or whose client is gone), so ``duration_ms`` is from the last byte of the request to
its answer. Answers to requests that never completed (a head too large, a malformed stream) are
logged with what the parser had read. Requests still unanswered when the connection ends (the
client closed or reset it) are logged once each, as 499 without ``response_bytes``.
``request_bytes`` is the body as sent (compressed if it was), ``response_bytes`` the answer's
body on the wire.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import unquote

from gateway.front.http.server import HttpFront, HttpProtocol
from gateway.logs import log_access
from gateway.types import InferRequest

_GONE = b"HTTP/1.1 499"  # what ``_log`` reads of an answer never written: the status, no body


class _Pending:
    __slots__ = ("start", "t0", "method", "url", "request_bytes", "request_id")

    def __init__(self, method: str, url: bytes, request_bytes: int) -> None:
        self.start = time.time()
        self.t0 = time.perf_counter()
        self.method = method
        self.url = url
        self.request_bytes = request_bytes
        self.request_id = ""


class _IdTap:
    """The data plane as seen by one logged connection: notes each infer request's id (known only
    once the body is decoded, inside ``on_request``) on the request being handled."""

    __slots__ = ("_proto", "_dp")

    def __init__(self, proto: AccessLoggedProtocol, dataplane: Any) -> None:
        self._proto = proto
        self._dp = dataplane

    def submit(self, request: InferRequest, done: Any, eager: bool = False, keys: Any = None) -> Any:
        current = self._proto._current
        if current is not None:
            current.request_id = request.id
        return self._dp.submit(request, done, eager, keys)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dp, name)


class AccessLoggedProtocol(HttpProtocol):
    __slots__ = ("_pending", "_current", "_client")
    lane_ok = False  # the log names each request's id, which the data plane tap records

    def __init__(self, front: HttpFront) -> None:
        super().__init__(front)
        self._pending: dict[int, _Pending] = {}
        self._current: _Pending | None = None
        self._client = ""
        self._dataplane = _IdTap(self, front.dataplane)

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        is_inet = isinstance(peer, tuple) and len(peer) >= 2
        self._client = f"{peer[0]}:{peer[1]}" if is_inet else str(peer or "")

    def on_request(self, method: bytes, url: bytes, keep_alive: bool, body: bytes, header_len: int,
                   content_encoding: bytes | None, accept: bytes | None, auth: bytes | None,
                   sticky: dict[str, bytes] | None) -> None:
        if not self._closing:
            p = _Pending(method.decode("latin-1"), url, len(body))
            self._current = self._pending[self._seq] = p
        try:
            super().on_request(method, url, keep_alive, body, header_len, content_encoding, accept, auth, sticky)
        finally:
            self._current = None

    def _write_in_order(self, seq: int, data: bytes, close: bool) -> None:
        p = self._pending.pop(seq, None)
        if p is None:
            t = self.transport
            if t is None or t.is_closing():  # the connection ended first: its 499 line is written
                return
            # answered before the request was complete (413 on Content-Length, 400 malformed)
            method, url = self.parser.current()
            p = _Pending(method.decode("latin-1"), url, 0)
        self._log(p, data)
        super()._write_in_order(seq, data, close)

    def _gone(self) -> None:
        """Requests whose answer was not yet produced when the connection ended: 499 (client closed
        request, as nginx logs it), with no response bytes."""
        super()._gone()
        pending = self._pending
        if pending:
            self._pending = {}
            for p in pending.values():
                self._log(p, _GONE)

    def _log(self, p: _Pending, data: bytes) -> None:
        path = p.url.split(b"?", 1)[0].decode("latin-1")
        model = version = ""
        parts = path.split("/")
        if len(parts) >= 4 and parts[1] == "v2" and parts[2] == "models":
            model = unquote(parts[3])
            if len(parts) >= 6 and parts[4] == "versions":
                version = unquote(parts[5])
        end = data.find(b"\r\n\r\n")
        log_access(p.start, "http", p.method, path, model, version, int(data[9:12]), p.request_bytes,
                   len(data) - end - 4 if end >= 0 else None, (time.perf_counter() - p.t0) * 1000.0,
                   self._client, p.request_id)


__all__ = ["AccessLoggedProtocol"]
