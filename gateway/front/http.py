"""HTTP/1.1 front: KServe v2 REST on asyncio/uvloop + httptools, no web framework on the hot path.

One ``HttpProtocol`` per connection. Requests are parsed by httptools callbacks; an infer
request is decoded and submitted to the data plane with a callback (no task or future per
request), and its response is written when the batch completes. Pipelined requests are
answered in order: a response that completes early waits in ``_parked`` until its turn.
Limits (body size, head size, pipelined requests, idle keep-alive) are ServerSettings fields.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import unquote

import httptools

from gateway.dataplane import DataPlane
from gateway.errors import Code, GatewayError, http_status
from gateway.front.http_codec import decode_infer, dumps, encode_infer
from gateway.front.http_compress import ACCEPTED, UnsupportedEncoding, decode_body, encode_body
from gateway.front.http_routes import route_get, route_post_admin, route_post_now
from gateway.metrics import render_metrics
from gateway.settings import ServerSettings
from gateway.shm import write_outputs
from gateway.types import InferRequest, InferResponse

log = logging.getLogger(__name__)

_JSON = b"application/json"
_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  413: "Payload Too Large", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
                  415: "Unsupported Media Type",
                  500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
                  504: "Gateway Timeout", 499: "Client Closed Request"}.get(status, "Unknown")
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {reason}\r\n".encode()
    return line


def build_response(status: int, body: bytes, content_type: bytes = _JSON, extra: bytes = b"",
                   close: bool = False) -> bytes:
    return b"".join((
        status_line(status), b"content-type: ", content_type, b"\r\ncontent-length: ",
        str(len(body)).encode(), b"\r\n", extra, b"connection: close\r\n" if close else b"", b"\r\n", body,
    ))


def error_response(err: GatewayError, close: bool = False) -> bytes:
    status, _ = http_status(err.code)
    extra = f"retry-after: {err.retry_after_s}\r\n".encode() if err.retry_after_s is not None else b""
    return build_response(status, dumps({"error": err.message}), extra=extra, close=close)


_OK_200 = status_line(200)
_CL = b"content-type: application/json\r\ncontent-length: "
_BIN_CL = b"content-type: application/octet-stream\r\ninference-header-content-length: "


class _Call:
    """The callback of one in-flight infer request: encode and write in request order."""

    __slots__ = ("proto", "seq", "binary", "keep_alive", "shm", "accept")

    def __init__(self, proto: HttpProtocol, seq: int, binary: frozenset[str] | None, keep_alive: bool,
                 shm: dict[str, Any] | None = None, accept: bytes | None = None) -> None:
        self.proto = proto
        self.seq = seq
        self.binary = binary
        self.keep_alive = keep_alive
        self.shm = shm  # outputs to write into shared memory (request.shm_outputs)
        self.accept = accept  # the request's Accept-Encoding, if it sent one

    def done(self, resp: InferResponse | None, err: GatewayError | None) -> None:
        proto = self.proto
        proto._tickets.pop(self.seq, None)
        written = None
        if err is None and self.shm is not None:
            try:
                written = write_outputs(resp.outputs, self.shm)  # type: ignore[union-attr]
            except GatewayError as exc:
                err = exc
            except Exception as exc:
                log.exception("writing outputs into shared memory failed")
                err = GatewayError(Code.INTERNAL, f"cannot write outputs into shared memory: {exc}")
        if err is not None:
            data = error_response(err, not self.keep_alive)
        else:
            try:
                body, hlen = encode_infer(resp, self.binary, written)  # type: ignore[arg-type]
            except Exception as exc:  # an output we cannot serialise must not kill the connection
                log.exception("encoding response failed")
                data = error_response(GatewayError(Code.INTERNAL, f"cannot encode response: {exc}"))
            else:
                close = b"" if self.keep_alive else b"connection: close\r\n"
                if self.accept is not None:  # compressed, and content-encoding put before `close`
                    body, close = encode_body(body, self.accept, close)
                if hlen < 0:
                    data = b"".join((_OK_200, _CL, str(len(body)).encode(), b"\r\n", close, b"\r\n", body))
                else:
                    data = b"".join((_OK_200, _BIN_CL, str(hlen).encode(), b"\r\ncontent-length: ",
                                     str(len(body)).encode(), b"\r\n", close, b"\r\n", body))
        proto._write_in_order(self.seq, data, not self.keep_alive)


class HttpFront:
    """Owns the listening socket and the set of live connections."""

    def __init__(self, dataplane: DataPlane, settings: ServerSettings, metrics_registry: Any) -> None:
        self.dataplane = dataplane
        self.settings = settings
        self.metrics_registry = metrics_registry
        self.connections: set[HttpProtocol] = set()
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.tick = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self.infer_routes: dict[bytes, tuple[str, str]] = {}

    async def start(self, sock: Any = None) -> None:
        loop = asyncio.get_running_loop()
        protocol = HttpProtocol
        if self.settings.access_log:  # a subclass that logs: without it the protocol has no check to make
            from gateway.front.http_access import AccessLoggedProtocol as protocol
        if sock is not None:
            self.server = await loop.create_server(lambda: protocol(self), sock=sock, backlog=2048)
        else:
            self.server = await loop.create_server(lambda: protocol(self), self.settings.host,
                                                   self.settings.http_port, backlog=2048, reuse_address=True,
                                                   reuse_port=self.settings.workers > 1)
        self.port = self.server.sockets[0].getsockname()[1]
        self._sweeper = loop.call_later(1.0, self._sweep)

    def _sweep(self) -> None:
        """Once a second: close connections idle longer than the keep-alive timeout."""
        self.tick += 1
        limit = self.settings.http_keepalive_timeout_s
        for c in list(self.connections):
            if not c._tickets and not c._parked and self.tick - c.last_active > limit:
                c.close()
        self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep)

    async def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace`` s), then close connections."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.server is not None:
            self.server.close()
        loop = asyncio.get_running_loop()
        end = loop.time() + grace
        while any(c._tickets for c in self.connections) and loop.time() < end:
            await asyncio.sleep(0.01)
        for c in list(self.connections):
            c.close()
        if self.server is not None:
            await self.server.wait_closed()

    def infer_route(self, url: bytes) -> tuple[str, str] | None:
        """(model, version) for an infer URL, cached: the same few URLs arrive over and over."""
        r = self.infer_routes.get(url)
        if r is None:
            path = url.split(b"?", 1)[0].decode("latin-1")
            parts = path.split("/")
            # ['', 'v2', 'models', m, 'infer'] or ['', 'v2', 'models', m, 'versions', v, 'infer']
            if len(parts) == 5 and parts[1] == "v2" and parts[2] == "models" and parts[4] == "infer":
                r = (unquote(parts[3]), "")
            elif (len(parts) == 7 and parts[1] == "v2" and parts[2] == "models" and parts[4] == "versions"
                  and parts[6] == "infer"):
                r = (unquote(parts[3]), unquote(parts[5]))
            else:
                return None
            if len(self.infer_routes) < 4096:
                self.infer_routes[url] = r
        return r


class HttpProtocol(asyncio.Protocol):
    __slots__ = ("front", "transport", "parser", "_url", "_body", "_body_len", "_header_len", "_head_bytes",
                 "_expect_continue", "_too_large", "_seq", "_next_write", "_parked", "_tickets", "_closing",
                 "_paused", "last_active", "_dataplane", "_max_body", "_max_pipelined", "_content_encoding",
                 "_accept_encoding")

    def __init__(self, front: HttpFront) -> None:
        self.front = front
        self._dataplane = front.dataplane
        self._max_body = front.settings.max_body_bytes
        self._max_pipelined = front.settings.max_pipelined_requests
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._body: list[bytes] = []
        self._body_len = 0
        self._header_len = -1
        self._head_bytes = 0
        self._expect_continue = False
        self._too_large = False
        self._seq = 0
        self._next_write = 0
        self._parked: dict[int, tuple[bytes, bool]] = {}
        self._tickets: dict[int, Any] = {}
        self._closing = False
        self._paused = False
        self.last_active = front.tick
        self._content_encoding: bytes | None = None
        self._accept_encoding: bytes | None = None

    # ---- connection ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.front.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.connections.discard(self)
        for t in self._tickets.values():
            t.cancel()  # the caller is gone: drop its queued work
        self._tickets.clear()
        self._parked.clear()
        self._closing = True

    def close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:  # the client is not reading: stop reading its requests
        self._pause_reading()

    def resume_writing(self) -> None:
        self._resume_reading()

    def _pause_reading(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self._closing:
            self._paused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.last_active = self.front.tick
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fatal(400, "protocol upgrade is not supported")
        except httptools.HttpParserError as exc:
            if not self._closing:
                self._fatal(400, f"malformed HTTP request: {exc}")

    def _fatal(self, status: int, message: str) -> None:
        """Answer (in order) and close: the byte stream cannot be trusted past this point."""
        seq = self._seq
        self._seq += 1
        self._pause_reading()
        self._closing = True
        self._write_in_order(seq, build_response(status, dumps({"error": message}), close=True), True)

    # ---- httptools callbacks ---------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > self.front.settings.max_header_bytes:
            raise httptools.HttpParserError("request head too large")
        # Dispatch on length first: most headers (host, content-type, ...) are skipped without lower().
        size = len(name)
        if size == 31:
            if name.lower() == b"inference-header-content-length":
                try:
                    self._header_len = int(value)
                except ValueError:
                    self._header_len = -2  # reported as 400 once the message is complete
        elif size == 14:
            if name.lower() == b"content-length":
                try:
                    if int(value) > self._max_body:
                        self._too_large = True
                except ValueError:
                    pass  # httptools rejects it
        elif size == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True
        elif 15 <= size <= 16:  # one comparison for the headers that are neither of these two
            lname = name.lower()
            if lname == b"content-encoding":
                self._content_encoding = value
            elif lname == b"accept-encoding":
                self._accept_encoding = value
        if self._too_large:
            if not self._closing:
                self._fatal(413, f"request body exceeds max_body_bytes ({self._max_body})")
        elif self._expect_continue and self.transport is not None:
            self._expect_continue = False
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._closing:
            return
        self._body_len += len(body)
        if self._body_len > self._max_body:
            self._too_large = True
            self._fatal(413, f"request body exceeds max_body_bytes ({self._max_body})")
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._closing:
            return
        seq = self._seq
        self._seq += 1
        keep_alive = self.parser.should_keep_alive()
        chunks = self._body
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        method = self.parser.get_method()
        url = self._url
        header_len = self._header_len
        accept = self._accept_encoding
        # Reset per-message state here rather than in on_message_begin: one callback less per request.
        self._url = b""
        self._body = []
        self._body_len = 0
        self._header_len = -1
        self._head_bytes = 0
        self._accept_encoding = None
        if self._content_encoding is not None:  # only requests that sent one pay for decoding
            decoded = self._decode_body(seq, body, keep_alive)
            if decoded is None:
                return
            body = decoded
        if method == b"POST":
            route = self.front.infer_routes.get(url) or self.front.infer_route(url)
            if route is not None:
                req: InferRequest | None = None
                try:
                    if header_len == -2:
                        raise GatewayError(Code.INVALID_ARGUMENT, "Inference-Header-Content-Length is not an integer")
                    req = decode_infer(body, header_len, route[0], route[1], self._dataplane.shm)
                    call = _Call(self, seq, req.binary_outputs, keep_alive, req.shm_outputs, accept)
                    self._tickets[seq] = self._dataplane.submit(req, call.done)
                except GatewayError as err:
                    if req is None:  # not decoded (submit counts its own rejections)
                        self._dataplane.record_rejected(route[0], route[1], err.code)
                    self._write_in_order(seq, error_response(err, not keep_alive), not keep_alive)
                    return
                if len(self._tickets) >= self._max_pipelined:
                    self._pause_reading()
                return
        try:
            data = self._handle_other(seq, method, url, body, keep_alive)
        except GatewayError as err:
            data = error_response(err, not keep_alive)
        except Exception as exc:  # never let one request kill the connection or the server
            log.exception("unhandled error on %s %s", method, url)
            data = error_response(GatewayError(Code.INTERNAL, f"internal error: {exc}"), not keep_alive)
        if data is not None:
            self._write_in_order(seq, data, not keep_alive)

    def _decode_body(self, seq: int, body: bytes, keep_alive: bool) -> bytes | None:
        """The body without its Content-Encoding, or None when the error is already answered."""
        encoding = self._content_encoding
        self._content_encoding = None
        try:
            return decode_body(body, encoding, self._max_body)  # type: ignore[arg-type]
        except GatewayError as err:
            data = error_response(err, not keep_alive)
        except UnsupportedEncoding as exc:
            data = build_response(415, dumps({"error": str(exc)}), close=not keep_alive,
                                  extra=b"accept-encoding: " + ACCEPTED + b"\r\n")
        self._write_in_order(seq, data, not keep_alive)
        return None

    def _write_in_order(self, seq: int, data: bytes, close: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if seq != self._next_write:
            self._parked[seq] = (data, close)
            return
        t.write(data)
        self._next_write = seq + 1
        if close:
            t.close()
            return
        parked = self._parked
        while parked:
            nxt = parked.pop(self._next_write, None)
            if nxt is None:
                break
            t.write(nxt[0])
            self._next_write += 1
            if nxt[1]:
                t.close()
                return
        if self._paused and len(self._tickets) < self._max_pipelined // 2:
            self._resume_reading()

    # ---- everything else ---------------------------------------------------------------------
    def _handle_other(self, seq: int, method: bytes, url: bytes, body: bytes, keep_alive: bool) -> bytes | None:
        path = url.split(b"?", 1)[0].decode("latin-1")
        close = not keep_alive
        if method == b"GET" or method == b"HEAD":
            if path == "/metrics":
                text = render_metrics(self.front.metrics_registry)
                return build_response(200, text, b"text/plain; version=0.0.4; charset=utf-8", close=close)
            status, doc = route_get(self._dataplane, path)
            payload = b"" if doc is None else dumps(doc)
            return build_response(status, payload, close=close)
        if method == b"POST":
            now = route_post_now(self._dataplane, path, body)
            if now is not None:  # answered at once, so a pipelined request after it sees its effect
                status, doc = now
                return build_response(status, b"" if doc is None else dumps(doc), close=close)
            coro = route_post_admin(self._dataplane, path, body)
            if coro is None:
                raise GatewayError(Code.NOT_FOUND, f"no route for POST {path}")
            self._spawn_admin(seq, coro, close)
            return None
        raise GatewayError(Code.NOT_FOUND, f"no route for {method.decode('latin-1')} {path}")

    def _spawn_admin(self, seq: int, coro: Any, close: bool) -> None:
        """Repository calls are slow (model loads): run them as tasks, answer in order."""
        marker = _AdminTicket()
        self._tickets[seq] = marker

        async def run() -> None:
            try:
                status, doc = await coro
                data = build_response(status, b"" if doc is None else dumps(doc), close=close)
            except GatewayError as err:
                data = error_response(err, close)
            except Exception as exc:
                log.exception("repository request failed")
                data = error_response(GatewayError(Code.INTERNAL, str(exc)), close)
            self._tickets.pop(seq, None)
            self._write_in_order(seq, data, close)

        marker.task = asyncio.ensure_future(run())


class _AdminTicket:
    __slots__ = ("task",)

    def __init__(self) -> None:
        self.task: asyncio.Future[None] | None = None

    def cancel(self) -> None:
        pass  # a model load goes on even if the client that asked leaves
