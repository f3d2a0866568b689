"""The gRPC access log: one ``gateway.access`` line per call, on either front.

grpc.aio front: a server interceptor (``AccessLogInterceptor``, here). Native front: the connection
subclass ``front.grpc.native.AccessLoggedGrpcProtocol``, which logs each stream when its status is
decided (or its client resets it: CANCELLED), with the same fields. Either is installed only when ``access_log`` is on, so a server
without it runs no logging code per call.

For the grpc.aio front, Each RPC handler is wrapped once (cached by method): the wrapper times the
call and logs it when it ends, with the gRPC status code name (OK, or what the servicer aborted
with; CANCELLED when the client left). Unary calls report request and response message sizes;
``ModelStreamInfer`` is one line per stream (sizes left out: a stream has many messages).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from gateway.logs import log_access


def _code_name(context: Any, default: grpc.StatusCode) -> str:
    try:
        code = context.code()
    except Exception:  # older grpc.aio contexts have no code()
        code = None
    if isinstance(code, grpc.StatusCode):
        return code.name
    return default.name


def _peer(context: Any) -> str:
    """The client as HTTP's access lines show it: "ipv4:127.0.0.1:5000" -> "127.0.0.1:5000"."""
    peer = context.peer() or ""
    return peer.split(":", 1)[1] if peer.startswith(("ipv4:", "ipv6:")) else peer


def _target(request: Any) -> tuple[str, str, str]:
    """(model, version, request id) of a request message, where it has them."""
    model = getattr(request, "model_name", None)
    if model is None:
        model = getattr(request, "name", "")
    version = getattr(request, "model_version", None)
    if version is None:
        version = getattr(request, "version", "")
    return str(model), str(version), str(getattr(request, "id", ""))


class AccessLogInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        rpc = method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            behavior = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                start, t0 = time.time(), time.perf_counter()
                code = "OK"
                try:
                    response = await behavior(request, context)
                    code = _code_name(context, grpc.StatusCode.OK)
                    return response
                except asyncio.CancelledError:
                    code = "CANCELLED"
                    raise
                except BaseException:
                    code = _code_name(context, grpc.StatusCode.UNKNOWN)
                    raise
                finally:
                    model, version, rid = _target(request)
                    # No byte counts: protobuf's ByteSize() serializes the message (~65 ms for 60 MiB).
                    log_access(start, "grpc", rpc, method, model, version, code, None, None,
                               (time.perf_counter() - t0) * 1000.0, _peer(context), rid)

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.stream_stream is not None:
            stream_behavior = handler.stream_stream

            async def stream(request_iterator: Any, context: Any) -> Any:
                start, t0 = time.time(), time.perf_counter()
                code = "OK"
                try:
                    result = await stream_behavior(request_iterator, context)
                    code = _code_name(context, grpc.StatusCode.OK)
                    return result
                except asyncio.CancelledError:
                    code = "CANCELLED"
                    raise
                except BaseException:
                    code = _code_name(context, grpc.StatusCode.UNKNOWN)
                    raise
                finally:
                    log_access(start, "grpc", rpc, method, "", "", code, None, None,
                               (time.perf_counter() - t0) * 1000.0, _peer(context), "")

            return grpc.stream_stream_rpc_method_handler(
                stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler  # no other kinds are served



__all__ = ["AccessLogInterceptor"]
