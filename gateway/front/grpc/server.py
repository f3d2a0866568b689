"""The grpc.aio gRPC front (``grpc_front = "grpcio"``): KServe v2 ``inference.GRPCInferenceService`` on ``grpc.aio``, over the DataPlane.

It runs on the same event loop as the HTTP front and shares everything below decode with it.
Wire compatibility with Triton's clients comes from ``proto/`` (see tests/test_grpc_proto.py).

- Errors: a ``GatewayError`` aborts the call with the gRPC status that ``gateway.front.status`` maps
  its code to; the message names the culprit.
- Deadlines: what is left of the client's deadline becomes ``InferRequest.timeout_us``, so an
  expired request leaves the batch queue before compute (DEADLINE_EXCEEDED).
- Cancellation: ``ModelInfer`` awaits ``DataPlane.infer`` in the call's own task; when grpc
  cancels that task (client gone, deadline), ``infer`` cancels the queued ticket, so the work is
  not computed. Streams cancel every ticket they still hold.
- Streams: every request is answered on the stream, an error as ``error_message`` without
  closing it; requests run concurrently and answers go out as they complete (clients match them
  by id), written by one writer so that writes never overlap.
- Limits: ``grpc_max_message_bytes`` on receive and send (grpc answers RESOURCE_EXHAUSTED past
  it), keepalive from settings, and ``stop(grace)`` finishes in-flight calls before closing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from gateway.dataplane import DataPlane
from gateway.errors import Code, GatewayError
from gateway.front.grpc.codec import decode_infer_request, encode_infer_response
from gateway.front.grpc.meta import (
    model_config_to_pb,
    model_metadata_to_pb,
    model_statistics_to_pb,
    repository_index_to_pb,
    server_metadata_to_pb,
)
from gateway.front.grpc.stream import serve_stream
from gateway.front.model_docs import model_config, model_metadata, model_statistics
from gateway.front.status import grpc_status_name
from gateway.pb import Message, add_servicer
from gateway.pb import service as pb
from gateway.settings import ServerSettings
from gateway.shm import SharedMemoryRegistry, write_outputs
from gateway.types import InferRequest

log = logging.getLogger(__name__)

_STATUS: dict[Code, grpc.StatusCode] = {c: getattr(grpc.StatusCode, grpc_status_name(c)) for c in Code}
_LIVE = pb.ServerLiveResponse(live=True)
_READY = pb.ServerReadyResponse(ready=True)
_NOT_READY = pb.ServerReadyResponse(ready=False)
_MODEL_READY = pb.ModelReadyResponse(ready=True)
_MODEL_NOT_READY = pb.ModelReadyResponse(ready=False)


def status_of(code: Code) -> grpc.StatusCode:
    return _STATUS[code]


def deadline_us(context: grpc.aio.ServicerContext) -> int:
    """Microseconds left of the client's deadline; 0 when it set none."""
    remaining = context.time_remaining()
    if remaining is None:
        return 0
    return max(1, int(remaining * 1_000_000))


def aborts_on_error(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A ``GatewayError`` from the RPC becomes the call's gRPC status. The abort happens outside
    the ``except`` block: inside it, the error's traceback (frames holding the request) would be
    chained to grpc's AbortError, a cycle only the collector frees (see ModelInfer)."""

    @functools.wraps(method)
    async def rpc(self: Any, request: Any, context: Any) -> Any:
        try:
            return await method(self, request, context)
        except GatewayError as exc:
            status, message = _STATUS[exc.code], exc.message
        await context.abort(status, message)

    return rpc


def route_metadata(context: Any, names: tuple[str, ...]) -> dict[str, str] | None:
    """The values of the metadata keys ``names`` (a sticky key, an entity key) the call sent;
    keys arrive lowercase."""
    out: dict[str, str] | None = None
    for k, v in context.invocation_metadata() or ():
        if k in names:
            if out is None:
                out = {}
            out[k] = v if isinstance(v, str) else v.decode("latin-1")
    return out


class InferenceServicer:
    """One method per RPC; each is a thin adapter: decode, call the data plane, encode."""

    def __init__(self, dataplane: DataPlane, budget: ByteBudget | None = None) -> None:
        self._dp = dataplane
        self._door = dataplane.door
        self._budget = budget or ByteBudget(1 << 62)

    # ---- health and metadata ---------------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> Message:
        return _LIVE

    async def ServerReady(self, request: Any, context: Any) -> Message:
        return _READY if self._dp.ready() else _NOT_READY

    async def ModelReady(self, request: Any, context: Any) -> Message:
        return _MODEL_READY if self._dp.model_ready(request.name, request.version) else _MODEL_NOT_READY

    async def ServerMetadata(self, request: Any, context: Any) -> Message:
        return server_metadata_to_pb(self._dp.server_metadata())

    @aborts_on_error
    async def ModelMetadata(self, request: Any, context: Any) -> Message:
        mv = self._dp.model_version(request.name, request.version)
        return model_metadata_to_pb(model_metadata(mv, self._dp.version_labels(request.name)))

    @aborts_on_error
    async def ModelConfig(self, request: Any, context: Any) -> Message:
        return model_config_to_pb(model_config(self._dp.model_version(request.name, request.version)))

    @aborts_on_error
    async def ModelStatistics(self, request: Any, context: Any) -> Message:
        return model_statistics_to_pb(model_statistics(self._dp.model_totals(request.name, request.version)))

    # ---- inference -------------------------------------------------------------------------
    async def ModelInfer(self, request: Message, context: Any) -> Message:
        size = 0
        infer_request = plan = None
        try:
            if self._door.refuse():  # the loop is late: refuse before the decode
                raise self._dp.door.error()
            infer_request, plan = decode_infer_request(request, deadline_us(context), self._dp.shm)
            size = self._budget.take(infer_request)
            route = self._dp.route_of(infer_request.model_name)
            keys = None
            if route is not None and route.keys:  # a policy's sticky key, a precomputed route's entity key
                keys = route_metadata(context, route.keys)
            # eager: grpc.aio hands the loop one call per pass, so there is no batch to wait for
            response = await self._dp.infer(infer_request, eager=True, keys=keys)
            if route is not None and route.arms:
                context.set_trailing_metadata(
                    (("x-gateway-arm", "pinned" if infer_request.model_version else response.model_version),))
            if plan is not None and plan.shm is not None:
                return encode_infer_response(response, write_outputs(response.outputs, plan.shm))
            return encode_infer_response(response)
        except GatewayError as exc:
            if infer_request is None:  # not decoded (the data plane counts its own rejections and failures)
                self._dp.record_rejected(request.model_name, request.model_version, exc.code)
            status, message = _STATUS[exc.code], exc.message
        except Exception as exc:  # a bug must still reach the client as INTERNAL with a message
            log.exception("ModelInfer failed")
            status, message = grpc.StatusCode.INTERNAL, f"internal error: {exc}"
        finally:
            self._budget.give(size)
        # Abort outside the except block, with the request gone from this frame: aborting inside
        # it chains the error (and its traceback, whose frames hold the request and numpy views
        # of its bytes) to grpc's AbortError, a reference cycle only the collector frees. With
        # large messages that kept ~2 copies of every rejected 60 MiB request alive.
        del request, infer_request, plan
        await context.abort(status, message)
        raise AssertionError("unreachable: abort raises")

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> None:
        await serve_stream(self._dp, request_iterator, context, self._budget)

    # ---- repository ------------------------------------------------------------------------
    @aborts_on_error
    async def RepositoryIndex(self, request: Any, context: Any) -> Message:
        _check_repository(request.repository_name)
        return repository_index_to_pb(self._dp.repository_index(request.ready))

    @aborts_on_error
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Message:
        _check_repository(request.repository_name)
        params = {k: getattr(v, v.WhichOneof("parameter_choice") or "string_param")
                  for k, v in request.parameters.items()}  # config: string_param; file:...: bytes_param
        await self._dp.load_model(request.model_name, parameters=params)
        return pb.RepositoryModelLoadResponse()

    @aborts_on_error
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Message:
        _check_repository(request.repository_name)
        await self._dp.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # ---- shared memory (gateway.shm) -------------------------------------------------------
    async def _shm(self, context: Any) -> SharedMemoryRegistry:
        if self._dp.shm is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "shared memory is not served here")
        return self._dp.shm  # type: ignore[return-value]

    @aborts_on_error
    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Message:
        shm = await self._shm(context)
        regions = shm.status(request.name)
        resp = pb.SystemSharedMemoryStatusResponse()
        for r in regions:
            s = resp.regions[r["name"]]
            s.name, s.key, s.offset, s.byte_size = r["name"], r["key"], r["offset"], r["byte_size"]
        return resp

    @aborts_on_error
    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Message:
        shm = await self._shm(context)
        shm.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Message:
        shm = await self._shm(context)
        if request.name:
            shm.unregister(request.name)
        else:
            shm.unregister_all()
        return pb.SystemSharedMemoryUnregisterResponse()

    @aborts_on_error
    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Message:
        shm = await self._shm(context)
        shm.cuda_status(request.name)  # never any region
        return pb.CudaSharedMemoryStatusResponse()

    @aborts_on_error
    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Message:
        shm = await self._shm(context)
        shm.cuda_register(request.name)

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Message:
        shm = await self._shm(context)
        shm.cuda_unregister(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    # ---- not served ------------------------------------------------------------------------
    async def _unimplemented(self, what: str, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not supported by this server")

    async def TraceSetting(self, request: Any, context: Any) -> Any:
        return await self._unimplemented("tracing (TraceSetting)", context)

    async def LogSettings(self, request: Any, context: Any) -> Any:
        return await self._unimplemented("log settings (LogSettings)", context)


class ByteBudget:
    """Tensor bytes of the gRPC requests the server holds (decoded, queued or computing), bounded
    by ``grpc_max_inflight_bytes``: past it a request is refused with RESOURCE_EXHAUSTED at once
    instead of piling up gigabytes of queued messages. Counted from the decoded arrays (their
    ``nbytes``): ``ByteSize()`` re-encodes the message (90 ms for 60 MiB)."""

    __slots__ = ("limit", "held")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, request: InferRequest) -> int:
        size = 0
        for a in request.inputs.values():
            size += a.nbytes
        if self.held + size > self.limit and self.held:
            raise GatewayError(Code.RESOURCE_EXHAUSTED,
                               f"server holds {self.held} bytes of gRPC requests; this one ({size} bytes) "
                               f"would pass grpc_max_inflight_bytes ({self.limit}): retry later",
                               retry_after_s=1)
        self.held += size
        return size

    def give(self, size: int) -> None:
        self.held -= size


def _check_repository(name: str) -> None:
    # One repository per server; Triton accepts its (empty) name too.
    if name:
        raise GatewayError(Code.INVALID_ARGUMENT,
                           f"unknown repository '{name}': this server has one repository; leave the name empty")


class GrpcFront:
    """A started gRPC server; ``port`` is the bound port (useful when settings asked for 0)."""

    def __init__(self, server: grpc.aio.Server, port: int) -> None:
        self._server = server
        self.port = port

    async def stop(self, grace: float | None) -> None:
        """Stop accepting calls, let in-flight calls finish for up to ``grace`` s, then cancel them."""
        await self._server.stop(grace)


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    limit = settings.grpc_max_message_bytes
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.keepalive_time_ms", int(settings.grpc_keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.grpc_keepalive_timeout_s * 1000)),
        # Clients with their own keepalive (tritonclient's KeepAliveOptions) may ping an idle
        # connection every 10 s (or our own interval, if shorter) without being sent GOAWAY
        # "too_many_pings"; grpc's default would refuse anything under 5 minutes.
        ("grpc.http2.min_ping_interval_without_data_ms", min(10_000, int(settings.grpc_keepalive_time_s * 1000))),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        # Share the port only between our own workers; a second server started by mistake must fail.
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
    ]


async def start_grpc_front(dataplane: DataPlane, settings: ServerSettings) -> GrpcFront:
    """Bind ``settings.host:settings.grpc_port`` (0: a free port) and start serving."""
    interceptors = None
    if settings.access_log:  # installed only when asked for: otherwise calls go through no interceptor
        from gateway.front.grpc.access import AccessLogInterceptor

        interceptors = [AccessLogInterceptor()]
    server = grpc.aio.server(options=server_options(settings), interceptors=interceptors)
    add_servicer(server, InferenceServicer(dataplane, ByteBudget(settings.grpc_max_inflight_bytes)))
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    port = server.add_insecure_port(f"{host}:{settings.grpc_port}")
    if port == 0:
        raise OSError(f"gRPC front could not bind {host}:{settings.grpc_port}")
    await server.start()
    log.info("gRPC front listening on %s:%d", host, port)
    return GrpcFront(server, port)


__all__ = ["GrpcFront", "InferenceServicer", "start_grpc_front", "status_of", "deadline_us"]
