"""What every route destination is: something a request can be submitted to, and a ticket to cancel it.

A model version's admit + batch stages are one Target; a shadow pair (primary answered, candidate
compared), later a coalesced flight and a precomputed store are others. The router only ever picks a
Target; it never reaches into a version's batcher. Stages compose by wrapping: a stage that needs to
see the answer on its way back wraps ``done`` (only for the requests it acts on, so the common path
allocates nothing extra).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from gateway._native.lane import NO_TICKET as _NO_TICKET
from gateway.errors import GatewayError
from gateway.types import InferRequest, InferResponse

Done = Callable[[InferResponse | None, GatewayError | None], None]
"""Called exactly once per submitted request that was not cancelled, on the loop thread."""


class Ticket(Protocol):
    def cancel(self) -> None:
        """The caller went away: drop the work if it has not been dispatched; ``done`` is never called."""
        ...


class Target(Protocol):
    def submit(self, request: InferRequest, done: Done, eager: bool = False) -> Ticket:
        """Accept a request or raise ``GatewayError`` synchronously (nothing queued).

        ``eager``: a hint from fronts whose requests arrive one per loop pass (grpc.aio): run now
        when idle instead of on the next pass (see ``Batcher.enqueue``)."""
        ...


NO_TICKET = _NO_TICKET
"""The ticket of work that is already answered (or never queued): cancelling it does nothing (the
native lane's, which the in-flight claims use too)."""
