"""One remote server as the balancer sees it: calls in flight, health, circuit breaker, statistics.

State changes on the event loop thread only (the health checks and the calls run there).

Breaker: ``breaker_failures`` consecutive failed calls (the server's fault: UNAVAILABLE, INTERNAL,
UNKNOWN; a client's bad request is no failure) open it for ``breaker_open_s``; then one call goes
through as a probe (half-open): success closes the breaker, failure opens it again. Health checks
(ServerReady and ModelReady) take an endpoint out and put it back independently of the breaker, so
an endpoint that is down costs no call at all once a check has seen it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from gateway._native.hist import Histogram
from gateway.model_config import RemoteConfig

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
SERVER_FAULTS = frozenset(("UNAVAILABLE", "INTERNAL", "UNKNOWN", "DATA_LOSS"))


class Endpoint:
    __slots__ = ("address", "max_outstanding", "breaker_failures", "breaker_open_s", "outstanding", "healthy",
                 "failures", "open_until", "probing", "calls", "errors", "latency",
                 "channels", "stubs", "_turn")

    def __init__(self, address: str, remote: RemoteConfig) -> None:
        self.address = address
        self.max_outstanding = remote.max_outstanding
        self.breaker_failures = remote.breaker_failures
        self.breaker_open_s = remote.breaker_open_s
        self.outstanding = 0
        self.healthy = False
        """Set by the health checks (and at discovery): the server is ready and serves the model."""
        self.failures = 0  # consecutive failed calls
        self.open_until = 0.0  # breaker open until then (0: closed)
        self.probing = False  # half-open: the one probe call is in flight
        self.calls = 0
        self.errors: dict[str, int] = {}  # gRPC code name -> calls that ended with it
        self.latency = Histogram(LATENCY_BUCKETS)  # call durations, seconds
        self.channels: list[Any] = []  # grpc.aio channels, opened on the loop on first use
        self.stubs: list[Any] = []
        self._turn = itertools.count()

    def breaker(self, now: float) -> str:
        if not self.open_until:
            return "closed"
        return "open" if now < self.open_until or self.probing else "half_open"

    def available(self, now: float) -> bool:
        """May take a call now: healthy, below its bound, breaker closed (or half-open, no probe yet)."""
        if not self.healthy or self.outstanding >= self.max_outstanding:
            return False
        return not self.open_until or (now >= self.open_until and not self.probing)

    def started(self, now: float) -> None:
        self.outstanding += 1
        if self.open_until and now >= self.open_until:
            self.probing = True

    def finished(self, code: str, seconds: float, now: float) -> None:
        """A call ended with gRPC status ``code`` ("OK" on success) after ``seconds``."""
        self.outstanding -= 1
        self.calls += 1
        if code != "OK":
            self.errors[code] = self.errors.get(code, 0) + 1
        self.latency.observe(seconds)
        if code in SERVER_FAULTS:
            self.failures += 1
            if self.probing or self.failures >= self.breaker_failures:
                self.open_until = now + self.breaker_open_s
        else:
            self.failures = 0
            self.open_until = 0.0
        self.probing = False

    def stub(self) -> Any:
        """The next channel's stub, round robin (several HTTP/2 connections when configured)."""
        return self.stubs[next(self._turn) % len(self.stubs)]


def pick(endpoints: Sequence[Endpoint], now: float, exclude: Sequence[Endpoint] = ()) -> Endpoint | None:
    """The available endpoint with the fewest calls in flight (ties: the first listed, so that an
    idle fleet's load is not spread for nothing; it spreads as soon as calls overlap)."""
    best: Endpoint | None = None
    for ep in endpoints:
        if ep in exclude or not ep.available(now):
            continue
        if best is None or ep.outstanding < best.outstanding:
            best = ep
    return best
