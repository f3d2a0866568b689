"""The admit stage: may this request enter this version's queue, and by when must it be answered?

Checks run before anything is queued, so a refusal costs nothing downstream and the client learns at
once: the version is not unloading, the request fits the version's signature (``validate``), its
priority is one of the model's levels, its rows fit the queue bound at all (400: no retry helps) and
fit now (429 + Retry-After), and it can still be served in time. Its deadline (the client's
``timeout`` or the model's default) is fixed here, once. The batch stage then only forms batches.
Refusals are counted against the version here, off the success path.

**Admission by expected wait.** A request that would only leave the queue after its deadline, or
after the model's ``max_queue_wait_us``, is refused now (429 / RESOURCE_EXHAUSTED, Retry-After from
the estimate) rather than queued to fail later: the batcher estimates when its batch would start
from the rows ranked ahead of it (with priorities, only those) and the measured batch cost. So
whatever is admitted is work that will be answered in time, and the backend's time goes to such
work only; an overloaded model sheds the excess at the door instead of serving everything late.

``InflightCap`` bounds, server-wide, infer requests admitted and not yet answered and their tensor
bytes; the data plane claims from it before routing (see ``DataPlane.submit``). It and its claim
(``Held``) are native (``gateway._native.lane``): the lane claims without a Python call.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from gateway._native.lane import Held, InflightCap
from gateway.errors import Code, GatewayError, invalid
from gateway.model_config import ModelConfig
from gateway.observe.stats import ModelStats
from gateway.pipeline.batch_queue import INF
from gateway.pipeline.batcher import Batcher
from gateway.pipeline.target import Done, Ticket
from gateway.pipeline.validate import Signature, check_request
from gateway.types import InferRequest


class Admit:
    """A model version as a Target: admission in front of its batcher."""

    __slots__ = ("name", "version", "sig", "batcher", "queue", "stats", "clock", "timeout_us", "accepting",
                 "levels", "default_level", "max_wait_s")

    def __init__(self, name: str, version: str, config: ModelConfig, signature: Signature, batcher: Batcher,
                 stats: ModelStats, clock: Callable[[], float]) -> None:
        self.name = name
        self.version = version
        self.sig = signature
        self.batcher = batcher
        self.queue = batcher.queue
        self.stats = stats
        self.clock = clock
        self.timeout_us = config.timeout_us
        self.levels = config.priority_levels  # 0: no priorities, the parameter is not read
        self.default_level = config.default_level
        self.max_wait_s = config.max_queue_wait_us * 1e-6
        self.accepting = True
        """False once the version is being retired: the routing table no longer names it, and a
        request that still holds it (a pinned retry racing the swap) is refused, never lost."""

    def submit(self, request: InferRequest, done: Done, eager: bool = False) -> Ticket:
        # try costs nothing on the success path (3.11+); only a refusal pays for its counting
        try:
            if not self.accepting:
                raise GatewayError(Code.UNAVAILABLE, f"model '{self.name}' version {self.version} is unloading")
            rows = check_request(self.sig, request)
            level = self._level(request) if self.levels else 1
            q = self.queue
            if rows > q.max_queue_rows:  # could never fit, however idle the server: not worth a retry
                raise GatewayError(Code.INVALID_ARGUMENT,
                                   f"request has {rows} rows; model '{self.name}' queues at most "
                                   f"{q.max_queue_rows} (max_queue_size)")
            if not q.has_room(rows, level) and not (self.batcher.drain_inline() and q.has_room(rows, level)):
                raise self._full(rows, level)
            now = self.clock()
            timeout_us = request.timeout_us or self.timeout_us
            deadline = now + timeout_us * 1e-6 if timeout_us > 0 else INF
            if deadline != INF or self.max_wait_s:
                start, finish = self.batcher.expected(rows, level, now)
                if start > 0.0:  # work is ahead of it: would it still be answered in time?
                    past_deadline = now + finish - deadline
                    past_slo = start - self.max_wait_s if self.max_wait_s else -INF
                    if past_deadline > 0.0 or past_slo > 0.0:
                        raise self._too_late(start, timeout_us, past_deadline, past_slo)
        except GatewayError as exc:
            self.stats.record_failures(exc.code.name, 1)
            raise
        return self.batcher.enqueue(request, done, rows, now, deadline, eager, level)

    def _level(self, request: InferRequest) -> int:
        """The request's priority level: its ``priority`` parameter, 0 or absent for the default."""
        params = request.parameters
        p = params.get("priority") if params else None
        if p is None or (p == 0 and not isinstance(p, bool)):
            return self.default_level
        if isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= self.levels:
            return p
        raise invalid(f"parameter 'priority' must be an integer from 1 (highest) to {self.levels} for model "
                      f"'{self.name}', or 0 for its default level ({self.default_level}); got {p!r}")

    def _full(self, rows: int, level: int) -> GatewayError:
        q = self.queue
        limit = q.level_limits.get(level) if q.level_limits else None
        if limit is None or q.rows + rows > q.max_queue_rows:
            return GatewayError(Code.RESOURCE_EXHAUSTED,
                                f"model '{self.name}' queue is full ({q.max_queue_rows} rows queued at most)",
                                retry_after_s=1)
        if rows > limit:
            return GatewayError(Code.INVALID_ARGUMENT,
                                f"request has {rows} rows; model '{self.name}' queues at most {limit} at "
                                f"priority {level} (priority_queue_size)")
        return GatewayError(Code.RESOURCE_EXHAUSTED,
                            f"model '{self.name}' queue for priority {level} is full ({limit} rows queued at "
                            "most: priority_queue_size)", retry_after_s=1)

    def _too_late(self, start: float, timeout_us: int, past_deadline: float, past_slo: float) -> GatewayError:
        if past_deadline >= past_slo:
            why = f"and its deadline ({timeout_us / 1000:g} ms) would pass before it is answered"
        else:
            why = f"longer than max_queue_wait_us ({self.max_wait_s * 1e6:.0f})"
        # Retry-After: about when the backlog ahead of it will have drained by the excess
        return GatewayError(Code.RESOURCE_EXHAUSTED,
                            f"model '{self.name}' is busy: this request would wait about {start * 1000:.1f} ms "
                            f"for its batch to start, {why}; retry later",
                            retry_after_s=max(1, math.ceil(max(past_deadline, past_slo))))


__all__ = ["Admit", "Held", "InflightCap"]
