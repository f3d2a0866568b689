"""The admit stage: may this request enter this version's queue, and by when must it be answered?

Checks run before anything is queued, so a refusal costs nothing downstream and the client learns at
once: the version is not unloading, the request fits the version's signature (``validate``), its rows
fit the queue bound at all (400: no retry helps) and fit now (429 + Retry-After), and its deadline
(the client's ``timeout`` or the model's default) is fixed here, once. The batch stage then only forms
batches. Refusals are counted against the version here, off the success path.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.errors import Code, GatewayError
from gateway.model_config import ModelConfig
from gateway.observe.stats import ModelStats
from gateway.pipeline.batch_queue import INF
from gateway.pipeline.batcher import Batcher
from gateway.pipeline.target import Done, Ticket
from gateway.pipeline.validate import Signature, check_request
from gateway.types import InferRequest


class Admit:
    """A model version as a Target: admission in front of its batcher."""

    __slots__ = ("name", "version", "sig", "batcher", "queue", "stats", "clock", "timeout_us", "accepting")

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
        self.accepting = True
        """False once the version is being retired: the routing table no longer names it, and a
        request that still holds it (a pinned retry racing the swap) is refused, never lost."""

    def submit(self, request: InferRequest, done: Done, eager: bool = False) -> Ticket:
        # try costs nothing on the success path (3.11+); only a refusal pays for its counting
        try:
            if not self.accepting:
                raise GatewayError(Code.UNAVAILABLE, f"model '{self.name}' version {self.version} is unloading")
            rows = check_request(self.sig, request)
            q = self.queue
            if rows > q.max_queue_rows:  # could never fit, however idle the server: not worth a retry
                raise GatewayError(Code.INVALID_ARGUMENT,
                                   f"request has {rows} rows; model '{self.name}' queues at most "
                                   f"{q.max_queue_rows} (max_queue_size)")
            if not q.has_room(rows):
                raise GatewayError(Code.RESOURCE_EXHAUSTED,
                                   f"model '{self.name}' queue is full ({q.max_queue_rows} rows queued at most)",
                                   retry_after_s=1)
        except GatewayError as exc:
            self.stats.record_failures(exc.code.name, 1)
            raise
        now = self.clock()
        timeout_us = request.timeout_us or self.timeout_us
        deadline = now + timeout_us * 1e-6 if timeout_us > 0 else INF
        return self.batcher.enqueue(request, done, rows, now, deadline, eager)
