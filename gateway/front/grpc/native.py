"""The native gRPC front: KServe v2 ``inference.GRPCInferenceService`` on HTTP/2 in C (libnghttp2).

``grpc_front = "native"``. The wire work (HTTP/2 frames, HPACK, flow control, the gRPC message
framing, status trailers) is ``gateway._native.h2``; this module is the policy over it, one
``NativeGrpcProtocol`` per connection:

- ``ModelInfer`` takes no task and no future. The common call (raw contents, numeric, no
  parameters) is read from the wire in C (``_native.grpcpb``) and takes its version's native lane
  (``_native.lane``) as HTTP requests do: a call whose message bytes equal a call in flight joins
  it before any decode, and answers are encoded in C from the batch's rows. Any other call is
  parsed by the protobuf runtime (upb), decoded by the grpc.aio front's codec, submitted to the
  data plane with a callback, and answered from it. Batching works across the streams of every
  connection, as across HTTP connections (grpc.aio hands the loop one call per pass, so its front
  asks for eager dispatch; this one does not need to);
- ``ModelStreamInfer`` runs the grpc.aio front's ``serve_stream`` over the stream's messages;
- every other RPC runs the grpc.aio front's ``InferenceServicer`` method, in a task, through a
  context that has the grpc.aio methods it uses (``abort``, ``time_remaining``, metadata).
So what each RPC answers, and every error's status and wording, are the grpc.aio front's.

Deadlines: ``grpc-timeout`` becomes ``InferRequest.timeout_us``. Cancellation: a stream the
client resets (RST_STREAM: cancel, deadline) or a connection that ends cancels the call's
ticket or task. Limits: ``grpc_max_message_bytes`` (refused from the 5-byte prefix, before the
message is buffered), ``grpc_max_inflight_bytes``, ``grpc_max_concurrent_streams`` (HTTP/2
SETTINGS), ``max_header_bytes`` (a stream whose headers pass it is reset). Compression: requests
compressed with gzip or deflate (tritonclient's ``compression_algorithm``) are decompressed;
answers go uncompressed, as the gRPC spec allows. Keepalive: a PING every
``grpc_keepalive_time_s`` on each connection; one whose ACK has not come after
``grpc_keepalive_timeout_s`` is closed. Stop: GOAWAY, the open calls finish (up to the grace),
then the connections close.

TLS is not served here (``grpc_front = "grpcio"`` keeps that door open): it would go between the
socket and the session as a memory BIO (OpenSSL's ``SSL_read``/``SSL_write`` on buffers, ALPN
``h2``), which the in-memory ``mem_recv``/``mem_send`` design leaves room for.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import message_factory

from gateway.dataplane import DataPlane
from gateway.errors import Code, GatewayError
from gateway.front.grpc.codec import decode_infer_request, encode_infer_response
from gateway.front.grpc.server import ByteBudget, InferenceServicer
from gateway.front.grpc.stream import serve_stream
from gateway.front.http.accept import Listener, bind
from gateway.front.status import grpc_status_name
from gateway.logs import log_access
from gateway.pb import SERVICE, SERVICE_NAME
from gateway.pb import service as pb
from gateway.settings import ServerSettings
from gateway.shm import write_outputs
from gateway.types import InferResponse

try:
    from gateway._native.grpcpb import decode_infer, encode_infer, target
    from gateway._native.h2 import GrpcConnection, Stream
    from gateway._native.lane import GRPC
except ImportError as exc:  # built without libnghttp2's headers (setup.py says so)
    GrpcConnection = object  # type: ignore[misc,assignment]
    Stream = Any  # type: ignore[misc,assignment]
    MISSING: str | None = (
        f"the native gRPC front needs libnghttp2 ({exc}): install it (Debian/Ubuntu: apt-get install "
        "libnghttp2-dev) and rebuild the gateway (pip install -e .), or set grpc_front = \"grpcio\"")
else:
    MISSING = None

log = logging.getLogger(__name__)

_PREFIX = f"/{SERVICE_NAME}/".encode()
INFER = _PREFIX + b"ModelInfer"
STREAM = _PREFIX + b"ModelStreamInfer"
_WINDOW = 4 << 20  # bytes a client may send ahead per stream and per connection (HTTP/2 flow control)
_BACKLOG = 2048
_STATUS: dict[Code, int] = {c: getattr(grpc.StatusCode, grpc_status_name(c)).value[0] for c in Code}
_INTERNAL = grpc.StatusCode.INTERNAL.value[0]
_INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
_ModelInferRequest = pb.ModelInferRequest
_RAW_KEY = -9  # a gRPC message's raw key (``Lane.raw_key``): apart from HTTP bodies' (header lengths >= -2)


def _unary_methods(servicer: object) -> dict[bytes, tuple[Any, str]]:
    """``:path`` -> (request message class, servicer method name), for the unary RPCs other than
    ModelInfer that ``servicer`` has (the others answer UNIMPLEMENTED, as grpc.aio does)."""
    out: dict[bytes, tuple[Any, str]] = {}
    for m in SERVICE.methods:
        if m.client_streaming or m.server_streaming or m.name == "ModelInfer" or not hasattr(servicer, m.name):
            continue
        out[_PREFIX + m.name.encode()] = (message_factory.GetMessageClass(m.input_type), m.name)
    return out


class _Abort(Exception):
    def __init__(self, code: int, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Context:
    """What the grpc.aio servicer methods use of ``grpc.aio.ServicerContext``, for one stream."""

    __slots__ = ("stream", "conn", "trailers", "start")

    def __init__(self, conn: NativeGrpcProtocol, stream: Stream) -> None:
        self.conn = conn
        self.stream = stream
        self.trailers: tuple[tuple[str, str], ...] | None = None
        self.start = conn.front.loop.time()

    def time_remaining(self) -> float | None:
        t = self.stream.timeout_us
        if not t:
            return None
        return max(0.0, t * 1e-6 - (self.conn.front.loop.time() - self.start))

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.stream.metadata or []

    def set_trailing_metadata(self, md: Any) -> None:
        self.trailers = tuple(md)

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Abort(code.value[0], details)

    async def write(self, message: Any) -> None:  # a streaming call's answer
        self.conn.send(self.stream, message.SerializeToString())

    def peer(self) -> str:
        return self.conn.peer


class _InferCall:
    """One ModelInfer in flight: what its answer needs, and the callback the data plane calls."""

    __slots__ = ("conn", "stream", "size", "plan", "arm")

    def __init__(self, conn: NativeGrpcProtocol, stream: Stream, size: int, plan: Any, arm: str | None) -> None:
        self.conn = conn
        self.stream = stream
        self.size = size
        self.plan = plan
        self.arm = arm  # None: no traffic policy; "": name the version that answered; else this

    def done(self, resp: InferResponse | None, err: GatewayError | None) -> None:
        conn, s = self.conn, self.stream
        conn.budget.give(self.size)
        self.size = 0
        s.ticket = s.state = None  # the stream and its call pointed at each other: no cycle left
        if err is not None:
            conn.finish(s, _STATUS[err.code], err.message)
            return
        assert resp is not None
        try:
            payload = None
            if self.plan is None and resp.parameters is None:  # numeric outputs, in C
                payload = encode_infer(resp.model_name, resp.model_version, resp.id, resp.outputs)
            if payload is None:
                written = None
                if self.plan is not None and self.plan.shm is not None:
                    written = write_outputs(resp.outputs, self.plan.shm)
                payload = encode_infer_response(resp, written).SerializeToString()
        except GatewayError as exc:
            conn.finish(s, _STATUS[exc.code], exc.message)
            return
        except Exception as exc:  # an output we cannot encode: answered, logged
            log.exception("encoding a ModelInfer response failed")
            conn.finish(s, _INTERNAL, f"internal error: cannot encode the response: {exc}")
            return
        trailers = None
        if self.arm is not None:
            trailers = (("x-gateway-arm", self.arm or resp.model_version),)
        conn.reply(s, payload, trailers)

    def cancel(self) -> None:
        """The client reset the stream: drop the queued work, give its bytes back."""
        t = self.stream.ticket
        self.stream.ticket = self.stream.state = None
        if t is not None:
            t.cancel()
        self.conn.budget.give(self.size)
        self.size = 0


class NativeGrpcProtocol(GrpcConnection, asyncio.Protocol):  # type: ignore[misc,valid-type]
    """One gRPC connection (see the module)."""

    def __init__(self, front: NativeGrpcFront) -> None:
        self.front = front
        self.dp = front.dataplane
        self.budget = front.budget
        self.door = front.dataplane.door
        self.peer = ""
        self.unanswered_ping = 0.0
        self.kinds = front.kinds
        self._router = front.dataplane.router
        self._inflight = front.dataplane.inflight
        self._tickets: dict[int, Any] = {}  # stream id -> the lane's ticket (the lane removes it)
        self._held: dict[int, int] = {}  # stream id -> budget bytes of a lane call
        self.max_message = front.settings.grpc_max_message_bytes
        self.max_buffered = front.settings.grpc_max_inflight_bytes  # unfinished messages, per connection
        self.max_header_bytes = front.settings.max_header_bytes

    def connection_made(self, transport: Any) -> None:
        peer = transport.get_extra_info("peername")
        self.peer = f"ipv4:{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer or "")
        self.front.connections.add(self)
        self.h2_start(transport, self.front.settings.grpc_max_concurrent_streams, _WINDOW)

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.connections.discard(self)
        self.cancel_all()

    def eof_received(self) -> bool:
        return False  # the client is done sending: close (nghttp2 saw its GOAWAY, or it is gone)

    # ---- calls ---------------------------------------------------------------------------------
    def on_call(self, s: Stream, message: bytes) -> None:
        if s.path == INFER:
            self._infer(s, message)
        else:
            self._unary(s, message)

    def _infer(self, s: Stream, message: bytes) -> None:
        dp = self.dp
        request = infer_request = None
        size = 0
        try:
            if self.door.refuse():  # the loop is late: refuse before the decode
                raise dp.door.error()
            lane = raw = None
            named = target(message)  # the version's native lane, if it has one (as the HTTP front)
            if named is not None:
                r = self._router.table.get(named[0])
                if r is not None:
                    lane = r.lanes.get(named[1])
            if lane is not None:  # the same bytes as a call in flight: join it, undecoded
                raw = lane.raw_key(message, _RAW_KEY)
                t = lane.join_raw(raw, self, s.id, True, self._inflight)
                if t is not None:
                    self._tickets[s.id] = t
                    if self.log_calls:
                        s.target = (named[0], named[1], t.request.id)  # type: ignore[index]
                    return
            infer_request = decode_infer(message, s.timeout_us)  # the common message, in C
            plan = None
            if infer_request is not None and lane is not None:
                size = self.budget.take(infer_request)
                t = lane.submit(infer_request, GRPC, self, s.id, True, self._inflight, raw)
                if t is not None:
                    self._tickets[s.id] = t
                    self._held[s.id] = size
                    if self.log_calls:
                        s.target = (infer_request.model_name, infer_request.model_version, infer_request.id)
                    return
                self.budget.give(size)  # the general stages say why (or take it)
                size = 0
            if infer_request is None:  # everything else, and every error: protobuf's parser and the codec
                try:
                    request = _ModelInferRequest.FromString(message)
                except Exception as exc:  # protobuf's DecodeError
                    raise GatewayError(Code.INVALID_ARGUMENT, f"cannot parse the ModelInferRequest: {exc}") from None
                infer_request, plan = decode_infer_request(request, s.timeout_us, dp.shm)
            size = self.budget.take(infer_request)
            route = dp.route_of(infer_request.model_name)
            keys = arm = None
            if route is not None:
                if route.keys:  # a policy's sticky key, a precomputed route's entity key
                    keys = _metadata(s, route.keys)
                if route.arms:
                    arm = "pinned" if infer_request.model_version else ""
            if self.log_calls:
                s.target = (infer_request.model_name, infer_request.model_version, infer_request.id)
            call = s.state = _InferCall(self, s, size, plan, arm)
            size = 0  # the call holds it now
            s.ticket = dp.submit(infer_request, call.done, False, keys)
        except GatewayError as exc:
            self.budget.give(size)
            if s.state is not None:  # submit refused it: the call's bytes go back too
                s.state.cancel()
            if infer_request is None:  # not decoded (the data plane counts its own rejections)
                model = request.model_name if request is not None else ""
                version = request.model_version if request is not None else ""
                dp.record_rejected(model, version, exc.code)
                if self.log_calls:
                    s.target = (model, version, request.id if request is not None else "")
            elif self.log_calls:
                s.target = (infer_request.model_name, infer_request.model_version, infer_request.id)
            self.finish(s, _STATUS[exc.code], exc.message)
        except Exception as exc:  # a bug: still answered, logged
            log.exception("ModelInfer failed")
            self.finish(s, _INTERNAL, f"internal error: {exc}")

    def _unary(self, s: Stream, message: bytes) -> None:
        cls, name = self.front.unary[s.path]
        try:
            request = cls.FromString(message)
        except Exception as exc:
            self.finish(s, _INVALID, f"cannot parse the {cls.DESCRIPTOR.name}: {exc}")
            return
        if self.log_calls:
            s.target = (getattr(request, "model_name", None) or getattr(request, "name", ""),
                        getattr(request, "model_version", None) or getattr(request, "version", ""), "")
        s.state = self.front.spawn(self._run_unary(s, getattr(self.front.servicer, name), request))

    async def _run_unary(self, s: Stream, method: Any, request: Any) -> None:
        ctx = _Context(self, s)
        try:
            resp = await method(request, ctx)
        except _Abort as a:
            self.finish(s, a.code, a.details)
            return
        except Exception as exc:
            log.exception("%s failed", s.path.decode("latin-1"))
            self.finish(s, _INTERNAL, f"internal error: {exc}")
            return
        finally:
            s.state = None  # (the task)
        self.reply(s, resp.SerializeToString(), ctx.trailers)

    # ---- ModelStreamInfer ----------------------------------------------------------------------
    def on_message(self, s: Stream, message: bytes) -> None:
        q = s.state
        if q is None:
            q = s.state = _StreamCall(self, s)
        try:
            msg = _ModelInferRequest.FromString(message)
        except Exception as exc:
            self.finish(s, _INVALID, f"cannot parse the ModelInferRequest: {exc}")
            q.cancel()
            return
        q.messages.put_nowait(msg)

    def on_half_close(self, s: Stream) -> None:
        q = s.state
        if q is None:
            q = s.state = _StreamCall(self, s)
        q.messages.put_nowait(None)

    # ---- a lane call's answer (gateway._native.lane) ------------------------------------------
    def _write_in_order(self, sid: int, data: bytes, close: bool) -> None:
        """The serialized ModelInferResponse of lane call ``sid``."""
        self.budget.give(self._held.pop(sid, 0))
        s = self.streams.get(sid)
        if s is not None:
            self.reply(s, data)

    def _answer_general(self, sid: int, resp: InferResponse | None, err: GatewayError | None,
                        binary: Any, keep_alive: bool) -> None:
        """A lane call's answer that the native encoder leaves to the general one (an error, or
        outputs it does not encode)."""
        self.budget.give(self._held.pop(sid, 0))
        s = self.streams.get(sid)
        if s is None:
            return
        if err is not None:
            self.finish(s, _STATUS[err.code], err.message)
            return
        try:
            payload = encode_infer_response(resp).SerializeToString()  # type: ignore[arg-type]
        except Exception as exc:
            log.exception("encoding a ModelInfer response failed")
            self.finish(s, _INTERNAL, f"internal error: cannot encode the response: {exc}")
            return
        self.reply(s, payload)

    # ---- ends ----------------------------------------------------------------------------------
    def on_cancel(self, s: Stream) -> None:
        t = self._tickets.pop(s.id, None)
        if t is not None:  # a lane call
            t.cancel()
            self.budget.give(self._held.pop(s.id, 0))
        state = s.state
        if state is not None:
            state.cancel()

    def decompress(self, s: Stream, message: bytes) -> bytes | None:
        enc = s.encoding
        wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(enc or "")
        if wbits is None:
            self.finish(s, grpc.StatusCode.UNIMPLEMENTED.value[0],
                        f"grpc-encoding {enc!r} is not supported (identity, gzip, deflate are)")
            return None
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(message, self.max_message + 1)
        except zlib.error as exc:
            self.finish(s, _INTERNAL, f"cannot decompress the message ({enc}): {exc}")
            return None
        if len(out) > self.max_message:
            self.finish(s, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                        f"Received message larger than max (decompressed past {self.max_message})")
            return None
        return out


_STATUS_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


class AccessLoggedGrpcProtocol(NativeGrpcProtocol):
    """The connection with the access log (``access_log``): one ``gateway.access`` line per call,
    with the grpc.aio interceptor's fields (``front.grpc.access``): the RPC's name, the status name,
    the time from its headers to its status, the model, version and request id where the request
    has them (a stream: one line, without them). What C answers by itself (an unknown method, a
    message past the limit) and a reset by the client (CANCELLED) are logged too."""

    def __init__(self, front: NativeGrpcFront) -> None:
        super().__init__(front)
        self.log_calls = True

    def finished(self, s: Stream, status: int) -> None:
        self._log(s, _STATUS_NAMES.get(status, str(status)))

    def on_cancel(self, s: Stream) -> None:
        super().on_cancel(s)
        self._log(s, "CANCELLED")

    def _log(self, s: Stream, code: str) -> None:
        path = s.path.decode("latin-1")
        model, version, rid = s.target or ("", "", "")
        start = s.started or time.time()
        took = (time.perf_counter() - s.started_mono) * 1000.0 if s.started_mono else 0.0
        peer = self.peer.split(":", 1)[1] if self.peer.startswith(("ipv4:", "ipv6:")) else self.peer
        log_access(start, "grpc", path.rsplit("/", 1)[-1], path, model, version, code, None, None, took, peer, rid)


def _metadata(s: Stream, names: tuple[str, ...]) -> dict[str, str] | None:
    out: dict[str, str] | None = None
    for k, v in s.metadata or ():
        if k in names:
            if out is None:
                out = {}
            out[k] = v
    return out


class _StreamCall:
    """One ModelStreamInfer: its messages as the async iterator ``serve_stream`` reads, and the
    task that runs it."""

    __slots__ = ("conn", "stream", "messages", "task")

    def __init__(self, conn: NativeGrpcProtocol, stream: Stream) -> None:
        self.conn = conn
        self.stream = stream
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.task = conn.front.spawn(self._run())

    async def _requests(self) -> AsyncIterator[Any]:
        while True:
            m = await self.messages.get()
            if m is None:
                return
            yield m

    async def _run(self) -> None:
        conn, s = self.conn, self.stream
        try:
            await serve_stream(conn.dp, self._requests(), _Context(conn, s), conn.budget)
        except asyncio.CancelledError:
            return
        except GatewayError as exc:
            conn.finish(s, _STATUS[exc.code], exc.message)
            return
        except Exception as exc:
            log.exception("ModelStreamInfer failed")
            conn.finish(s, _INTERNAL, f"internal error: {exc}")
            return
        finally:
            s.state = None  # the stream and this call pointed at each other: no cycle left
        conn.finish(s, 0, "")

    def cancel(self) -> None:
        self.task.cancel()


class NativeGrpcFront:
    """The listening sockets and live connections of the native gRPC front."""

    def __init__(self, dataplane: DataPlane, settings: ServerSettings) -> None:
        if MISSING is not None:
            raise RuntimeError(MISSING)
        self.dataplane = dataplane
        self.settings = settings
        self.budget = ByteBudget(settings.grpc_max_inflight_bytes)
        self.servicer = InferenceServicer(dataplane, self.budget)
        self.unary = _unary_methods(self.servicer)
        self.kinds: dict[bytes, int] = {INFER: 1, STREAM: 2, **{p: 1 for p in self.unary}}
        self.connections: set[NativeGrpcProtocol] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.loop = asyncio.get_running_loop()
        self.listener: Listener | None = None
        self.port = 0
        self._keepalive: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        s = self.settings
        socks = bind(s.host, s.grpc_port, _BACKLOG, s.workers > 1)
        protocol: type[NativeGrpcProtocol] = NativeGrpcProtocol
        if s.access_log:  # only then: the plain protocol carries no logging
            protocol = AccessLoggedGrpcProtocol
        self.listener = Listener(socks, lambda: protocol(self))
        self.listener.start()
        self.port = socks[0].getsockname()[1]
        self._keepalive = self.loop.call_later(s.grpc_keepalive_time_s, self._ping)
        log.info("gRPC front (native) listening on %s:%d", s.host, self.port)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _ping(self) -> None:
        """Keepalive: a PING on every connection; one whose last PING is still unanswered after
        grpc_keepalive_timeout_s is closed (nghttp2 reads the ACKs: ``pings_unacked``)."""
        now = self.loop.time()
        timeout = self.settings.grpc_keepalive_timeout_s
        for c in list(self.connections):
            if c.unanswered_ping and c.pings_unacked() and now - c.unanswered_ping > timeout:
                log.info("closing a gRPC connection whose keepalive ping went unanswered for %g s", timeout)
                c.goaway(False)
                continue
            if not c.pings_unacked():
                c.unanswered_ping = now
                c.ping()
        self._keepalive = self.loop.call_later(self.settings.grpc_keepalive_time_s, self._ping)

    async def stop(self, grace: float | None) -> None:
        """GOAWAY to every connection, let open calls finish (up to ``grace`` s), then close."""
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self.listener is not None:
            self.listener.close()
        for c in list(self.connections):
            c.goaway(True)
        end = self.loop.time() + (grace or 0.0)
        while any(c.open_streams for c in self.connections) and self.loop.time() < end:
            await asyncio.sleep(0.01)
        for c in list(self.connections):
            c.goaway(False)
        for t in list(self.tasks):
            t.cancel()


async def start_native_grpc_front(dataplane: DataPlane, settings: ServerSettings) -> NativeGrpcFront:
    front = NativeGrpcFront(dataplane, settings)
    await front.start()
    return front


__all__ = ["MISSING", "AccessLoggedGrpcProtocol", "NativeGrpcFront", "NativeGrpcProtocol", "start_native_grpc_front"]
