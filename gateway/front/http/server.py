"""HTTP/1.1 front: KServe v2 REST on asyncio/uvloop, no web framework on the hot path.

One ``HttpProtocol`` per connection. Requests are parsed in C (``gateway._native.http1``), which
calls ``on_request`` once per complete request; an infer request is decoded and submitted to the
data plane with a callback (no task or future per request), and its response is written when the
batch completes. Pipelined requests are
answered in order: a response that completes early waits in ``_parked`` until its turn.

Invariant: every request gets exactly one answer, whatever its handling raises (an error we
did not foresee is a 500, logged); a request whose answer can never come (a bug) must not hold
its connection: the keep-alive timeout closes connections whose next answer is owed by nobody.
The exception: a client that closes its side (EOF, even a half-close) is gone, as nginx has it
(499): its queued requests are cancelled at once, nothing more is written, and it is closed.
Limits (body size, head size, pipelined requests, idle keep-alive, head and body timeouts,
connection count) are ServerSettings fields. Timeouts cost no timer per request: each
connection keeps the tick its current phase began, and ``HttpFront._sweep`` compares ticks
once a second. Connections past ``max_connections`` come from a small reserve that may only
ask for health and /metrics; past that reserve a connection is refused at once (503, closed).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import select
from typing import Any
from urllib.parse import unquote

from gateway._native.http1 import Connection, RequestReader, Stop
from gateway._native.inferenc import http_response
from gateway._native.lane import note_general
from gateway.dataplane import DataPlane
from gateway.errors import Code, GatewayError
from gateway.front.http.accept import Listener, bind
from gateway.front.http.admin import check_token, is_admin_path, route_admin, route_outcomes
from gateway.front.http.codec import decode_infer, dumps, encode_infer, plan_for
from gateway.front.http.compress import ACCEPTED, UnsupportedEncoding, decode_body, encode_body
from gateway.front.http.routes import route_get, route_post_admin, route_post_now
from gateway.front.plan import EncodePlan
from gateway.front.status import http_status
from gateway.observe.metrics import render_metrics
from gateway.settings import ServerSettings
from gateway.shm import write_outputs
from gateway.types import InferResponse

log = logging.getLogger(__name__)

_JSON = b"application/json"
_BACKLOG = 2048  # the kernel's accept queue per listening socket
_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  413: "Payload Too Large", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
                  500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
                  504: "Gateway Timeout", 415: "Unsupported Media Type", 499: "Client Closed Request"}.get(status, "Unknown")
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
    if err.code is Code.UNAUTHENTICATED:
        extra += b'www-authenticate: Bearer realm="gateway admin"\r\n'
    return build_response(status, dumps({"error": err.message}), extra=extra, close=close)


# Where a connection is in its current request; the sweep times the head and body phases.
_IDLE, _HEAD, _BODY = 0, 1, 2
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_RETRY = b"retry-after: 1\r\n"
_ARM_PINNED = b"x-gateway-arm: pinned\r\n"
_ARM_LINES: dict[str, bytes] = {}
_SOURCE_LINES = {s: b"x-prediction-source: " + s.encode() + b"\r\n" for s in ("precomputed", "live")}


def _arm_line(version: str) -> bytes:
    line = _ARM_LINES.get(version)
    if line is None:
        if len(_ARM_LINES) > 4096:  # versions are few; never let the cache grow with anything else
            _ARM_LINES.clear()
        line = _ARM_LINES[version] = b"x-gateway-arm: " + version.encode() + b"\r\n"
    return line


def connection_cap(settings: ServerSettings) -> int:
    """HTTP connections served at once: ``max_connections``, or when that is 0 the file
    descriptors RLIMIT_NOFILE leaves after ``fd_reserve`` (gRPC, models, logs) and the health
    reserve, so that HTTP alone can never exhaust the process's fds."""
    if settings.max_connections > 0:
        return settings.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft > 1 << 20:
        soft = 1 << 20
    reserve = settings.fd_reserve or soft // 4
    return max(1, soft - reserve - settings.health_connections)


_OK_200 = status_line(200)
_CL = b"content-type: application/json\r\ncontent-length: "
_BIN_CL = b"content-type: application/octet-stream\r\ninference-header-content-length: "


class _Call:
    """The callback of one in-flight infer request: encode and write in request order."""

    __slots__ = ("proto", "seq", "plan", "keep_alive", "accept", "arm")

    def __init__(self, proto: HttpProtocol, seq: int, plan: EncodePlan | None, keep_alive: bool,
                 accept: bytes | None = None) -> None:
        self.arm = 0  # 0: no traffic policy; 1: name the version that answered; 2: the client pinned it
        self.proto = proto
        self.seq = seq
        self.plan = plan  # binary outputs and shared-memory targets, as decoded (None: all JSON)
        self.keep_alive = keep_alive
        self.accept = accept  # the request's Accept-Encoding, if it sent one

    def done(self, resp: InferResponse | None, err: GatewayError | None) -> None:
        proto = self.proto
        proto._tickets.pop(self.seq, None)
        plan = self.plan
        binary: frozenset[str] | None = None
        written = None
        if plan is not None:
            binary = plan.binary
            if err is None and plan.shm is not None:
                try:
                    written = write_outputs(resp.outputs, plan.shm)  # type: ignore[union-attr]
                except GatewayError as exc:
                    err = exc
                except Exception as exc:
                    log.exception("writing outputs into shared memory failed")
                    err = GatewayError(Code.INTERNAL, f"cannot write outputs into shared memory: {exc}")
        if err is not None:
            data = error_response(err, not self.keep_alive)
        else:
            try:
                data = self._encode(resp, binary, written)  # type: ignore[arg-type]
            except Exception as exc:  # an output we cannot serialise must not kill the connection
                log.exception("encoding response failed")
                data = error_response(GatewayError(Code.INTERNAL, f"cannot encode response: {exc}"),
                                      not self.keep_alive)
        proto._write_in_order(self.seq, data, not self.keep_alive)

    def _encode(self, resp: InferResponse, binary: frozenset[str] | None,
                written: dict[str, dict[str, Any]] | None) -> bytes:
        """The 200 answer: head and body in one native call, unless it is compressed or names
        outputs written into shared memory."""
        extra = b"" if self.keep_alive else b"connection: close\r\n"
        if self.arm:
            extra = (_ARM_PINNED if self.arm == 2 else _arm_line(resp.model_version)) + extra
        params = resp.parameters
        if params is not None and "prediction_source" in params:  # the precomputed route's answers
            extra = _SOURCE_LINES.get(params["prediction_source"], b"") + extra
        if self.accept is None and written is None:
            data = http_response(resp, binary, extra)
            if data is not None:
                return data  # type: ignore[no-any-return]
        body, hlen = encode_infer(resp, binary, written)
        if self.accept is not None:  # compressed: content-encoding goes before the other lines
            body, extra = encode_body(body, self.accept, extra)
        if hlen < 0:
            return b"".join((_OK_200, _CL, str(len(body)).encode(), b"\r\n", extra, b"\r\n", body))
        return b"".join((_OK_200, _BIN_CL, str(hlen).encode(), b"\r\ncontent-length: ",
                         str(len(body)).encode(), b"\r\n", extra, b"\r\n", body))


_RDHUP = getattr(select, "POLLRDHUP", 0)  # Linux: the peer shut down its side, even with data unread
_HUNG_UP = _RDHUP | select.POLLHUP | select.POLLERR


def closed_by_client(conns: list[HttpProtocol]) -> list[HttpProtocol]:
    """Those of ``conns`` (paused connections: not read, so their EOF is never delivered) whose
    client has closed or reset its side, found with one ``poll`` (Linux; elsewhere none)."""
    if not _RDHUP:
        return []
    poller = select.poll()
    by_fd: dict[int, HttpProtocol] = {}
    for c in conns:
        sock = c.transport.get_extra_info("socket") if c.transport is not None else None
        fd = sock.fileno() if sock is not None else -1
        if fd >= 0:
            by_fd[fd] = c
            poller.register(fd, _RDHUP)
    if not by_fd:
        return []
    return [by_fd[fd] for fd, events in poller.poll(0) if events & _HUNG_UP]


class HttpFront:
    """Owns the listening socket and the set of live connections."""

    def __init__(self, dataplane: DataPlane, settings: ServerSettings, metrics_registry: Any,
                 protocol: type[HttpProtocol] | None = None) -> None:
        """``protocol``: the connection class (``front.http.access.AccessLoggedProtocol`` logs
        each request; the composition root picks it when ``access_log`` is on)."""
        self.protocol = protocol or HttpProtocol
        self.dataplane = dataplane
        self.settings = settings
        self.metrics_registry = metrics_registry
        self.connections: set[HttpProtocol] = set()
        self.server: Listener | None = None
        self.port = 0
        self.tick = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self.infer_routes: dict[bytes, tuple[str, str]] = {}
        self.max_connections = connection_cap(settings)
        self.reserve: set[HttpProtocol] = set()  # from the health reserve; also in ``connections``
        self.refused = build_response(503, dumps({"error": (
            f"server has its {self.max_connections} HTTP connections and its "
            f"{settings.health_connections} health connections open; try again later")}), extra=_RETRY, close=True)
        shed = dataplane.door.error()
        self.shed_answers = (error_response(shed, close=True), error_response(shed))  # by keep-alive

    async def start(self, sock: Any = None) -> None:
        loop = asyncio.get_running_loop()
        protocol = self.protocol
        if sock is not None:
            sock.listen(_BACKLOG)
            socks = [sock]
        else:
            socks = bind(self.settings.host, self.settings.http_port, _BACKLOG, self.settings.workers > 1)
        self.server = Listener(socks, lambda: protocol(self))
        self.server.start()
        self.port = socks[0].getsockname()[1]
        self._sweeper = loop.call_later(1.0, self._sweep)

    def _sweep(self) -> None:
        """Once a second: answer 408 and close where a request head or body is late; close
        connections idle past the keep-alive timeout. A connection counts as idle when no
        in-flight work owes its next answer: parked answers waiting behind a request that will
        never be answered do not keep it open (and are logged, as that is a bug). A paused
        connection (too many requests owed, or a client not reading) is not read, so its EOF is
        not delivered: the sweep asks the kernel whether its client is gone, and drops its work."""
        self.tick = tick = self.tick + 1
        s = self.settings
        keepalive, head_limit, body_limit = s.http_keepalive_timeout_s, s.header_timeout_s, s.body_timeout_s
        paused: list[HttpProtocol] = []
        for c in list(self.connections):
            if c._paused:  # while we do not read, the client cannot be late (nor its EOF seen)
                if not c._closing:
                    paused.append(c)
            elif not c._closing:
                phase, waited = c._phase, tick - c._since
                if phase == _BODY:
                    if waited > body_limit:
                        c._late("body", "body_timeout_s", body_limit)
                # a connection's first request is timed from accept
                elif (phase == _HEAD or c._seq == 0) and waited > head_limit:
                    c._late("head", "header_timeout_s", head_limit)
            if tick - c.last_active > keepalive and c._next_write not in c._tickets:
                if c._parked:
                    log.warning("closing an HTTP connection whose request %d was never answered "
                                "(%d later answers parked)", c._next_write, len(c._parked))
                c.close()
        if paused:
            for c in closed_by_client(paused):
                c.client_left()
        self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep)

    def evict_silent_reserve(self) -> bool:
        """Make room in the full health reserve by closing the connection that has been silent
        longest (nothing asked, nothing owed), so that a flood of idle connections cannot hold
        the reserve: a probe sends its request at once and is served before it is the oldest."""
        silent = [c for c in self.reserve if c._phase == _IDLE and not c._tickets and not c._parked]
        if not silent:
            return False
        victim = min(silent, key=lambda c: c.last_active)
        self.reserve.discard(victim)
        victim.close()
        return True

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

    def infer_route(self, url: bytes) -> tuple[str, str] | None:
        """(model, version) for an infer URL, cached: the same few URLs arrive over and over.
        An empty version segment is an error, not the default version."""
        r = self.infer_routes.get(url)
        if r is None:
            path = url.split(b"?", 1)[0].decode("latin-1")
            parts = path.split("/")
            # ['', 'v2', 'models', m, 'infer'] or ['', 'v2', 'models', m, 'versions', v, 'infer']
            if len(parts) == 5 and parts[1] == "v2" and parts[2] == "models" and parts[4] == "infer":
                r = (unquote(parts[3]), "")
            elif (len(parts) == 7 and parts[1] == "v2" and parts[2] == "models" and parts[4] == "versions"
                  and parts[6] == "infer"):
                if not parts[5]:
                    raise GatewayError(Code.INVALID_ARGUMENT, f"empty version segment in {path}")
                r = (unquote(parts[3]), unquote(parts[5]))
            else:
                return None
            if len(self.infer_routes) < 4096:
                self.infer_routes[url] = r
        return r


class HttpProtocol(Connection, asyncio.Protocol):
    """One HTTP connection: its per-request state, reading, ticket keeping, in-order writing and
    the common infer request are in C (``_native.http1.Connection``); the rest is here."""

    lane_ok = True
    """Infer requests may take the version's native lane (``gateway._native.lane``). A subclass
    that must see every request pass through the data plane (the access log's request ids) says no."""

    __slots__ = ("_max_body", "_reserve")

    def __init__(self, front: HttpFront) -> None:
        self.front = front
        self._dataplane = front.dataplane
        self._router = front.dataplane.router
        self._door = front.dataplane.door
        self._inflight = front.dataplane.inflight
        self._routes = front.infer_routes
        self._max_body = front.settings.max_body_bytes
        self._max_pipelined = front.settings.max_pipelined_requests
        self.transport: asyncio.Transport | None = None
        # phase and since: where the request being read is, and the tick that phase began
        # (accept, first byte, end of head), for the sweep
        self.parser = RequestReader(self, self._router, front.settings.max_header_bytes, self._max_body, front.tick)
        self._continue_due = False  # a 100 Continue waits until earlier answers are written
        self._seq = 0
        self._next_write = 0
        self._parked: dict[int, tuple[bytes, bool]] = {}
        self._tickets: dict[int, Any] = {}
        self._closing = False
        self._paused = False
        self.last_active = front.tick
        self._reserve = False  # from the health reserve: health and /metrics only

    @property
    def _phase(self) -> int:
        return self.parser.phase  # type: ignore[no-any-return]

    @property
    def _since(self) -> int:
        return self.parser.since  # type: ignore[no-any-return]

    # ---- connection ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        front = self.front
        reserve = front.reserve
        if len(front.connections) - len(reserve) >= front.max_connections:
            if len(reserve) >= front.settings.health_connections and not front.evict_silent_reserve():
                self._closing = True  # past every budget: refuse before reading anything
                transport.write(front.refused)  # type: ignore[attr-defined]
                transport.close()
                return
            self._reserve = True
            self.parser.check_head = True
            reserve.add(self)
        front.connections.add(self)

    def eof_received(self) -> bool:
        """The client closed its side: it is gone, as nginx has it (499, client closed request),
        even if it only half-closed."""
        self.client_left()
        return False

    def client_left(self) -> None:
        """Drop the client's queued work now, synchronously: ``connection_lost`` comes a loop pass
        after the close, after any batch flush already scheduled (which would compute it)."""
        self._gone()
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._reserve:
            self.front.reserve.discard(self)
        self.front.connections.discard(self)
        self._gone()  # a reset or our own close: after an EOF, nothing is left to drop

    def _gone(self) -> None:
        """Nobody will read another answer: cancel every request still owed (queued work is never
        computed; what is computing finishes and is dropped), forget parked answers, read and write
        nothing more."""
        self._closing = True
        tickets = self._tickets
        if tickets:
            self._tickets = {}
            for t in tickets.values():
                t.cancel()
        self._parked.clear()
        self._continue_due = False

    def close(self) -> None:
        self._closing = True
        self.parser.stop()
        if self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:  # the client is not reading: stop reading its requests
        self._pause_reading()

    def resume_writing(self) -> None:
        self._resume_reading()

    def _fatal(self, status: int, message: str, extra: bytes = b"") -> None:
        """Answer (in order) and close: the byte stream cannot be trusted past this point.

        The answer goes to the first request that nobody will answer, if there is one (handling
        that failed without answering), else to the request being read."""
        seq = self._seq
        self._seq += 1
        for s in range(self._next_write, seq):
            if s not in self._tickets and s not in self._parked:
                seq = s
                break
        self.parser.stop()
        self._pause_reading()
        self._closing = True
        self._write_in_order(seq, build_response(status, dumps({"error": message}), extra=extra, close=True), True)

    def _late(self, what: str, setting: str, limit: float) -> None:
        """The sweep found the request head or body late: 408, or a plain close when no byte of
        a request has arrived (there is nothing to answer)."""
        if self.parser.phase == _IDLE:
            self.close()
        else:
            self._fatal(408, f"request {what} not received within {setting} ({limit:g} s)")

    # ---- reader callbacks ------------------------------------------------------------------
    def expect_continue(self) -> None:
        """The head asked for ``100 Continue`` and passed its checks (Content-Length first)."""
        t = self.transport
        if self._next_write != self._seq:
            self._continue_due = True  # earlier answers first: _write_in_order sends it
        elif t is not None and not t.is_closing():
            t.write(_CONTINUE)

    def check_head(self, method: bytes, url: bytes) -> None:
        """A connection from the health reserve may only ask for health and /metrics."""
        path = url.split(b"?", 1)[0]
        if method in (b"GET", b"HEAD") and (path == b"/metrics" or path.startswith(b"/v2/health/")):
            return
        self._fatal(503, f"server is at max_connections ({self.front.max_connections}); this connection "
                         "may only ask for /v2/health/* and /metrics", _RETRY)
        raise Stop

    def on_request(self, method: bytes, url: bytes, keep_alive: bool, body: bytes, header_len: int,
                   content_encoding: bytes | None, accept: bytes | None, auth: bytes | None,
                   sticky: dict[str, bytes] | None) -> None:
        """One complete request the reader did not give to ``Connection._lane_infer`` (the
        reader's only per-request call into Python)."""
        if self._closing:
            return
        seq = self._seq
        self._seq += 1
        self._continue_due = False
        route = None
        try:
            if content_encoding is not None:  # only requests that sent one pay for decoding
                body = decode_body(body, content_encoding, self._max_body)
            if method == b"POST":
                route = self.front.infer_routes.get(url) or self.front.infer_route(url)
                if route is not None:
                    if self._door.refuse():  # the loop is late: refuse before the decode, which costs most
                        self._shed(seq, route, keep_alive)
                        return
                    if header_len == -2:
                        raise GatewayError(Code.INVALID_ARGUMENT, "Inference-Header-Content-Length is not an integer")
                    r = self._router.table.get(route[0])
                    lane = r.lanes.get(route[1]) if r is not None and self.lane_ok and accept is None else None
                    raw = None
                    if lane is not None:  # the same bytes as a request in flight: join it, undecoded
                        raw = lane.raw_key(body, header_len)
                        t = lane.join_raw(raw, self, seq, keep_alive, self._dataplane.inflight)
                        if t is not None:
                            self._hold(seq, t)
                            return
                    self._infer_rest(seq, url, route, lane, raw, body, header_len, keep_alive, accept, sticky, None)
                    return
            data = self._handle_other(seq, method, url, body, keep_alive, auth)
        except Exception as exc:
            data = self._error_answer(exc, route, method, url, keep_alive)
        if data is not None:
            if method == b"HEAD":  # the GET's headers, content-length included, and no body
                data = data[:data.index(b"\r\n\r\n") + 4]
            self._write_in_order(seq, data, not keep_alive)

    def _infer_rest(self, seq: int, url: bytes, route: tuple[str, str], lane: Any, raw: Any, body: bytes,
                    header_len: int, keep_alive: bool, accept: bytes | None, sticky: dict[str, bytes] | None,
                    fast: tuple[Any, frozenset[str] | None] | None) -> None:
        """Infer request ``seq`` from its decode on (``fast``: what the native decoder made of it,
        which ``lane`` declined): the lane if it takes it, else the general stages; answered
        whatever happens."""
        req = None
        try:
            if fast is not None:
                req, plan = fast[0], plan_for(fast[1])
            else:
                req, plan = decode_infer(body, header_len, route[0], route[1], self._dataplane.shm)
                if lane is not None and (plan is None or plan.shm is None):
                    # the version's native lane (it counts which way each request went)
                    t = lane.submit(req, None if plan is None else plan.binary, self, seq, keep_alive,
                                    self._dataplane.inflight, raw)
                    if t is not None:
                        self._hold(seq, t)
                        return
                else:
                    note_general()
            call = _Call(self, seq, plan, keep_alive, accept)
            r = self._router.table.get(route[0])
            if r is not None and r.arms:  # a traffic policy: say which arm answered
                call.arm = 2 if req.model_version else 1
            self._hold(seq, self._dataplane.submit(req, call.done, False, sticky))
        except Exception as exc:
            self._infer_failed(seq, url, route if req is None else None, exc, keep_alive)

    def _shed(self, seq: int, route: tuple[str, str], keep_alive: bool) -> None:
        """The door refused infer request ``seq``: counted, and answered 429 at once."""
        self._dataplane.record_rejected(route[0], route[1], Code.RESOURCE_EXHAUSTED)
        self._write_in_order(seq, self.front.shed_answers[keep_alive], not keep_alive)

    def _infer_failed(self, seq: int, url: bytes, route: tuple[str, str] | None, exc: Exception,
                      keep_alive: bool) -> None:
        """Infer request ``seq`` raised ``exc`` (``route``: it was not decoded, so its rejection
        is counted here; the stages count their own)."""
        self._write_in_order(seq, self._error_answer(exc, route, b"POST", url, keep_alive), not keep_alive)

    def _error_answer(self, exc: Exception, route: tuple[str, str] | None, method: bytes, url: bytes,
                      keep_alive: bool) -> bytes:
        """The answer to a request whose handling raised ``exc``: the protocol's error for ours, a
        logged 500 for one we did not foresee (still exactly one answer)."""
        if isinstance(exc, UnsupportedEncoding):
            return build_response(415, dumps({"error": str(exc)}), close=not keep_alive,
                                  extra=b"accept-encoding: " + ACCEPTED + b"\r\n")
        if isinstance(exc, GatewayError):
            if route is not None:
                self._dataplane.record_rejected(route[0], route[1], exc.code)
            return error_response(exc, not keep_alive)
        log.error("unhandled error on %s %s", method.decode("latin-1"), url[:200].decode("latin-1"), exc_info=exc)
        return error_response(GatewayError(Code.INTERNAL, f"internal error: {type(exc).__name__}: "
                                                          f"{str(exc)[:200]}"), not keep_alive)

    def _answer_general(self, seq: int, resp: InferResponse | None, err: GatewayError | None,
                        binary: frozenset[str] | None, keep_alive: bool) -> None:
        """A lane request's answer that the native encoder leaves to the general one (an error, or
        outputs it does not encode): as ``_Call`` answers it."""
        _Call(self, seq, EncodePlan(binary) if binary else None, keep_alive).done(resp, err)

    # ---- everything else ---------------------------------------------------------------------
    def _handle_other(self, seq: int, method: bytes, url: bytes, body: bytes, keep_alive: bool,
                      auth: bytes | None = None) -> bytes | None:
        path = url.split(b"?", 1)[0].decode("latin-1")
        close = not keep_alive
        if path.startswith("/v2/admin/") or path.endswith("/outcomes"):
            doc = self._admin(method.decode("latin-1"), path, body, auth)
            if doc is not None:
                return build_response(doc[0], dumps(doc[1]), close=close)
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
            token = self.front.settings.admin_token
            if token and path.startswith("/v2/repository/models/"):  # load/unload obey the admin token
                check_token(token, auth)
            coro = route_post_admin(self._dataplane, path, body)
            if coro is None:
                raise GatewayError(Code.NOT_FOUND, f"no route for POST {path}")
            self._spawn_admin(seq, coro, close)
            return None
        raise GatewayError(Code.NOT_FOUND, f"no route for {method.decode('latin-1')} {path}")

    def _admin(self, method: str, path: str, body: bytes, auth: bytes | None) -> tuple[int, Any] | None:
        """Traffic admin and outcome feedback (``front.http.admin``); None: not one of those routes."""
        parts = [p for p in path.split("/") if p]
        token = self.front.settings.admin_token
        if is_admin_path(parts):
            return route_admin(self._dataplane, token, method, parts, body, auth)
        if method == "POST" and len(parts) == 4 and parts[:2] == ["v2", "models"] and parts[3] == "outcomes":
            return route_outcomes(self._dataplane, token, unquote(parts[2]), body, auth)
        return None

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
