"""Per-request outcome storage for one generator process, kept out of the hot path's way.

Recording a request is two array stores and a counter: no histogram work while the load runs
(an HdrHistogram ``record_value`` costs ~2 us in Python, as much as a send). Histograms are built in
bulk from these arrays once the run is over (see ``merge.py``). The open loop knows its request count
up front and writes into preallocated numpy arrays; the closed loop grows ``array.array`` buffers.

Status codes: HTTP status as is; gRPC as ``GRPC_BASE + code`` (OK = 1000); client-side failures use
the 9xx codes below; 0 means "no outcome" (never sent, e.g. cut off at the end of a closed loop).
"""

from __future__ import annotations

from array import array

import numpy as np

__all__ = ["Recorder", "GRPC_BASE", "ST_TIMEOUT", "ST_CONNECT", "ST_CONN_LOST", "ST_PROTOCOL",
           "is_ok", "status_label"]

GRPC_BASE = 1000
ST_TIMEOUT = 900
ST_CONNECT = 901
ST_CONN_LOST = 902
ST_PROTOCOL = 903
_CLIENT = {ST_TIMEOUT: "timeout", ST_CONNECT: "connect_error", ST_CONN_LOST: "connection_lost",
           ST_PROTOCOL: "protocol_error"}
_GRPC_NAMES = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
               "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
               "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
               "UNAUTHENTICATED"]


def is_ok(status: int) -> bool:
    return 200 <= status < 300 or status == GRPC_BASE


def status_label(status: int) -> str:
    """A stable name for reports: ``http_503``, ``grpc_UNAVAILABLE``, ``timeout``..."""
    if status in _CLIENT:
        return _CLIENT[status]
    if status >= GRPC_BASE:
        code = status - GRPC_BASE
        return "grpc_" + (_GRPC_NAMES[code] if code < len(_GRPC_NAMES) else str(code))
    return f"http_{status}" if status else "no_response"


class Recorder:
    """Time, latency (seconds) and status per request index, plus live counters for progress.

    ``array.array`` rather than numpy: indexing and item assignment are plain C on Python floats
    (numpy scalar boxing costs more per request than the bookkeeping itself). ``status == 0`` marks a
    request without an outcome.
    """

    __slots__ = ("t", "lat", "status", "sent", "done", "errors", "recent")

    def __init__(self, intended: np.ndarray | None = None) -> None:
        self.t = array("d")
        self.lat = array("d")
        self.status = array("h")
        if intended is not None:  # open loop: the schedule is known, preallocate
            self.t.frombytes(np.ascontiguousarray(intended, dtype=np.float64).tobytes())
            self.lat.frombytes(bytes(8 * len(intended)))
            self.status.frombytes(bytes(2 * len(intended)))
        self.sent = self.done = self.errors = 0
        self.recent: list[float] = []  # latencies since the last progress tick

    def shift(self, offset: float) -> None:
        """Make the preallocated intended times absolute (they are planned relative to the start)."""
        shifted = array("d")
        shifted.frombytes((np.frombuffer(self.t, dtype=np.float64) + offset).tobytes())
        self.t = shifted

    def new(self, t: float) -> int:
        """Closed loop: register a request issued at ``t``; returns its index."""
        self.t.append(t)
        self.lat.append(0.0)
        self.status.append(0)
        return len(self.t) - 1

    def record(self, i: int, latency: float, status: int) -> None:
        self.lat[i] = latency
        self.status[i] = status
        self.done += 1
        self.recent.append(latency)
        if not (200 <= status < 300 or status == GRPC_BASE):
            self.errors += 1

    def take_recent(self) -> list[float]:
        r, self.recent = self.recent, []
        return r

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(intended/sent time, latency s or NaN without outcome, status) as numpy arrays."""
        t = np.frombuffer(self.t, dtype=np.float64).copy()
        status = np.frombuffer(self.status, dtype=np.int16).copy()
        lat = np.where(status != 0, np.frombuffer(self.lat, dtype=np.float64), np.nan)
        return t, lat, status
