"""The one table that turns a protocol-neutral ``Code`` into an HTTP status and a gRPC status.

The core raises ``GatewayError(Code.X, message)`` and never learns a protocol's numbers; each
front answers through this table, so both protocols always agree on what a code means.
"""

from __future__ import annotations

from gateway.errors import Code

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
    Code.UNAUTHENTICATED: (401, "Unauthorized", "UNAUTHENTICATED"),
    Code.INTERNAL: (500, "Internal Server Error", "INTERNAL"),
}


def http_status(code: Code) -> tuple[int, str]:
    status, reason, _ = _TABLE[code]
    return status, reason


def grpc_status_name(code: Code) -> str:
    """Name of the ``grpc.StatusCode`` member for a code (a string: this table imports no grpc,
    so the HTTP front can use it without loading grpc)."""
    return _TABLE[code][2]
