"""Protobuf message classes and gRPC service glue for ``proto/*.proto``, built at import time.

Why not protoc's ``*_pb2.py``: generated Python carries the gencode version of the protoc that
wrote it, and protobuf refuses to load gencode newer than its runtime (and grpcio-tools' service
stubs refuse a grpcio older than themselves). A build with the newest grpcio-tools next to the
protobuf 6 that the current tritonclient pins died on import. So the build writes only a
serialized ``FileDescriptorSet`` (``gateway/grpc_gen/descriptors.binpb``: protobuf's own wire
format, readable by every runtime), and this module turns it into message classes with
``message_factory.GetMessageClass`` and into gRPC handlers and stubs with grpcio's generic API.

The descriptors live in a private pool: our ``inference.*`` messages have the same full names as
Triton's (that is the point: wire compatibility), and tritonclient, imported in the same process,
registers its copies in protobuf's default pool.

Use: ``from gateway.pb import service as pb`` (``pb.ModelInferRequest``, ...), ``model_config``
(``mc.ModelConfig``, ``mc.TYPE_FP32``), ``add_servicer(server, obj)``, ``Stub(channel)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

GENERATED = Path(__file__).resolve().parent / "grpc_gen"
Message = Any
"""The type of every message here: classes built at run time have no static types (annotations say
which message a function takes in its name or docstring)."""
DESCRIPTOR_SET = GENERATED / "descriptors.binpb"
SERVICE_NAME = "inference.GRPCInferenceService"


def _load_pool() -> tuple[descriptor_pool.DescriptorPool, list[str]]:
    try:
        data = DESCRIPTOR_SET.read_bytes()
    except FileNotFoundError:
        raise ImportError(f"{DESCRIPTOR_SET} is missing: the package was not built "
                          "(pip install -e . or python proto/codegen.py)") from None
    fds = descriptor_pb2.FileDescriptorSet.FromString(data)
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:  # protoc writes dependencies first
        pool.Add(f)
    return pool, [f.name for f in fds.file]


POOL, FILES = _load_pool()


class ProtoFile:
    """The message classes and top-level enum values of one ``.proto`` file, as attributes
    (the shape of a ``*_pb2`` module: ``DESCRIPTOR``, ``ModelInferRequest``, ``TYPE_FP32``)."""

    def __init__(self, name: str) -> None:
        self.DESCRIPTOR = POOL.FindFileByName(name)
        for msg_name, desc in self.DESCRIPTOR.message_types_by_name.items():
            setattr(self, msg_name, message_factory.GetMessageClass(desc))
        for enum in self.DESCRIPTOR.enum_types_by_name.values():
            for value in enum.values:
                setattr(self, value.name, value.number)

    def __getattr__(self, name: str) -> Any:  # for type checkers: attributes are set dynamically
        raise AttributeError(f"{self.DESCRIPTOR.name} has no message or enum value {name!r}")


service = ProtoFile("grpc_service.proto")
model_config = ProtoFile("model_config.proto")
SERVICE = service.DESCRIPTOR.services_by_name["GRPCInferenceService"]


def _kind(method: Any) -> str:
    return ("stream" if method.client_streaming else "unary") + "_" + (
        "stream" if method.server_streaming else "unary")


def add_servicer(server: Any, servicer: object) -> None:
    """Register every RPC that ``servicer`` has a method for (same names as the .proto); the
    others answer UNIMPLEMENTED, as grpc does for any unknown method."""
    import grpc

    handlers: dict[str, Any] = {}
    for m in SERVICE.methods:
        fn = getattr(servicer, m.name, None)
        if fn is None:
            continue
        make: Callable[..., Any] = getattr(grpc, f"{_kind(m)}_rpc_method_handler")
        handlers[m.name] = make(
            fn,
            request_deserializer=message_factory.GetMessageClass(m.input_type).FromString,
            response_serializer=message_factory.GetMessageClass(m.output_type).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


class Stub:
    """Client callables for every RPC (``Stub(channel).ModelInfer(request, timeout=...)``); works
    on sync and ``grpc.aio`` channels alike."""

    def __init__(self, channel: Any) -> None:
        for m in SERVICE.methods:
            factory = getattr(channel, _kind(m))
            setattr(self, m.name, factory(
                f"/{SERVICE_NAME}/{m.name}",
                request_serializer=message_factory.GetMessageClass(m.input_type).SerializeToString,
                response_deserializer=message_factory.GetMessageClass(m.output_type).FromString,
            ))

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"{SERVICE_NAME} has no method {name!r}")

