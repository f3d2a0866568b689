"""A shadow pair as a Target: the primary answers; a copy of the request goes to a candidate version
whose answer is compared with the primary's and never returned.

Shed first: a copy is made only while the event loop is not saturated (``LoopLoad``: its thread's
CPU share), this pair has fewer than ``max_outstanding`` copies unanswered, and the candidate's queue
is below an eighth of its bound. So mirrored work never takes the CPU or the queue space primary
requests need, and stops at once when the candidate falls behind (each skip is counted as ``shed``). The primary's ``done`` is called as soon as the primary answers; the comparison waits for
whichever comes second. Pinned requests are never mirrored.
"""

from __future__ import annotations

from collections.abc import Callable
from random import random

from gateway.errors import GatewayError
from gateway.pipeline.admit import Admit
from gateway.pipeline.load import LoopLoad
from gateway.pipeline.shadow_compare import ShadowComparison
from gateway.pipeline.target import NO_TICKET, Done, Target, Ticket
from gateway.types import InferRequest, InferResponse


class ShadowTarget:
    __slots__ = ("primary", "shadow", "fraction", "comparison", "clock", "max_outstanding", "outstanding",
                 "_busy_rows", "load")

    def __init__(self, primary: Target, shadow: Admit, fraction: float, comparison: ShadowComparison,
                 clock: Callable[[], float], max_outstanding: int, load: LoopLoad | None = None) -> None:
        self.load = load
        self.primary = primary
        self.shadow = shadow
        self.fraction = fraction
        self.comparison = comparison
        self.clock = clock
        self.max_outstanding = max_outstanding
        self.outstanding = 0
        self._busy_rows = max(1, shadow.queue.max_queue_rows // 8)

    def submit(self, request: InferRequest, done: Done, eager: bool = False) -> Ticket:
        if random() >= self.fraction:
            return self.primary.submit(request, done, eager)
        if (self.outstanding >= self.max_outstanding or self.shadow.queue.rows >= self._busy_rows
                or (self.load is not None and self.load.saturated)):
            self.comparison.shed += 1
            return self.primary.submit(request, done, eager)
        pair = _Pair(self, done, self.clock())
        ticket = self.primary.submit(request, pair.primary_done, eager)  # raises: no copy is made
        try:
            pair.copy = self.shadow.submit(request, pair.shadow_done)
        except GatewayError as exc:
            if exc.code.name == "RESOURCE_EXHAUSTED":
                self.comparison.shed += 1
                pair.settled = True
            else:  # e.g. the candidate's signature refuses the request: a shadow error, compared as one
                pair.shadow_refused(exc)
            return ticket
        self.outstanding += 1
        pair.ticket = ticket
        return pair


class _Pair:
    """One mirrored request: whichever answer comes second triggers the comparison. Once the copy
    is queued, also the request's ticket: a caller who leaves before the primary answers cancels
    both (the copy is compared with nothing, so it is work for nobody)."""

    __slots__ = ("owner", "done", "t0", "primary", "primary_s", "primary_in", "shadow", "shadow_s", "shadow_err",
                 "shadow_in", "settled", "ticket", "copy")

    def __init__(self, owner: ShadowTarget, done: Done, t0: float) -> None:
        self.owner = owner
        self.done = done
        self.t0 = t0
        self.primary: InferResponse | None = None
        self.primary_s = 0.0
        self.primary_in = False
        self.shadow: InferResponse | None = None
        self.shadow_s = 0.0
        self.shadow_err: str | None = None
        self.shadow_in = False
        self.settled = False
        self.ticket: Ticket = NO_TICKET  # the primary's
        self.copy: Ticket = NO_TICKET  # the candidate's

    def cancel(self) -> None:
        if self.primary_in or self.settled:  # answered: the comparison may still finish
            return
        self.settled = True
        self.ticket.cancel()
        if not self.shadow_in:  # its done will never come: it no longer counts as outstanding
            self.shadow_in = True
            self.owner.outstanding -= 1
            self.copy.cancel()

    def primary_done(self, resp: InferResponse | None, err: GatewayError | None) -> None:
        self.primary, self.primary_s, self.primary_in = resp, self.owner.clock() - self.t0, True
        self.done(resp, err)  # first: the comparison never delays the answer
        if self.shadow_in:
            self._compare()

    def shadow_done(self, resp: InferResponse | None, err: GatewayError | None) -> None:
        self.owner.outstanding -= 1
        self.shadow, self.shadow_s, self.shadow_in = resp, self.owner.clock() - self.t0, True
        if err is not None:
            self.shadow_err = f"{err.code.name}: {err.message}"
        if self.primary_in:
            self._compare()

    def shadow_refused(self, err: GatewayError) -> None:
        self.shadow_err, self.shadow_in = f"{err.code.name}: {err.message}", True
        if self.primary_in:
            self._compare()

    def _compare(self) -> None:
        if self.settled:
            return
        self.settled = True
        p, s = self.primary, self.shadow
        self.owner.comparison.record(p.outputs if p is not None else None, s.outputs if s is not None else None,
                                     self.primary_s, self.shadow_s, self.shadow_err)
