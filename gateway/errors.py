"""Typed errors with a protocol-neutral code.

The core raises ``GatewayError(Code.X, message)``; only the front ends turn a code into a
status, through ``gateway.front.status``. Backends translate foreign exceptions (onnxruntime,
grpc) into these at their boundary.
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
    UNAUTHENTICATED = "unauthenticated"
    INTERNAL = "internal"


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
