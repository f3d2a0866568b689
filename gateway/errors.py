"""Typed errors with a protocol-neutral code, and the one table that maps codes to HTTP and gRPC.

The core raises ``GatewayError(Code.X, message)``; only the front ends turn a code into a
status, through ``http_status`` and ``grpc_status_name``. Backends translate foreign
exceptions (onnxruntime, grpc) into these at their boundary.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"


# code -> (HTTP status, HTTP reason, gRPC status name). The only place protocol codes appear.
_TABLE: dict[Code, tuple[int, str, str]] = {
    Code.INVALID_ARGUMENT: (400, "Bad Request", "INVALID_ARGUMENT"),
    Code.NOT_FOUND: (404, "Not Found", "NOT_FOUND"),
    Code.PAYLOAD_TOO_LARGE: (413, "Payload Too Large", "RESOURCE_EXHAUSTED"),
    Code.RESOURCE_EXHAUSTED: (429, "Too Many Requests", "RESOURCE_EXHAUSTED"),
    Code.UNAVAILABLE: (503, "Service Unavailable", "UNAVAILABLE"),
    Code.DEADLINE_EXCEEDED: (504, "Gateway Timeout", "DEADLINE_EXCEEDED"),
    # 499 is nginx's "client closed request"; nobody reads it (the client left), but logs do.
    Code.CANCELLED: (499, "Client Closed Request", "CANCELLED"),
    Code.UNIMPLEMENTED: (501, "Not Implemented", "UNIMPLEMENTED"),
    Code.INTERNAL: (500, "Internal Server Error", "INTERNAL"),
}


def http_status(code: Code) -> tuple[int, str]:
    status, reason, _ = _TABLE[code]
    return status, reason


def grpc_status_name(code: Code) -> str:
    """Name of the ``grpc.StatusCode`` member for a code (kept as a string: the core imports no grpc)."""
    return _TABLE[code][2]


class GatewayError(Exception):
    """An error the client should see, with a neutral code and a message that names the culprit."""

    __slots__ = ("code", "message", "retry_after_s")

    def __init__(self, code: Code, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return f"GatewayError({self.code.name}, {self.message!r})"


def invalid(message: str) -> GatewayError:
    return GatewayError(Code.INVALID_ARGUMENT, message)


def not_found(message: str) -> GatewayError:
    return GatewayError(Code.NOT_FOUND, message)
