"""Dynamic batcher for one model version: the async driver around ``BatchQueue``.

Invariants:
- ``done`` is called exactly once per request that was not cancelled, on the loop thread;
  a cancelled request is never computed (if still queued) and never called back. Cancelled
  queued work is counted once per request, as a CANCELLED failure, when the queue drops it.
- At most ``backend.capacity`` batches are in flight; inline backends run one at a time.
- Sub-millisecond delays are honoured by re-checking the clock on every loop pass
  (``call_soon``): uvloop's timers have millisecond resolution. Longer waits use a timer that
  fires ~1 ms early and then poll.
- Every output of a batch must have as many rows as went in, or the whole batch fails.
- Each batch's busy time (pack to the last callback) feeds ``cost`` (``BatchCost``), from which
  ``expected`` tells the admit stage how long the work queued ahead of a request takes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from gateway._native.lane import deliver
from gateway._native.pack import pack_rows, scatter_rows
from gateway.backends.base import Backend, Outputs
from gateway.errors import Code, GatewayError
from gateway.model_config import ModelConfig
from gateway.observe.stats import ModelStats
from gateway.pipeline.batch_queue import BatchCost, BatchQueue, Pending, Running
from gateway.pipeline.target import Done
from gateway.pipeline.validate import Signature, bucket_key
from gateway.types import InferRequest, InferResponse

log = logging.getLogger(__name__)

Ticket = Pending  # what enqueue returns: ``.cancel()``


class SplitGroup:
    """A request larger than max_batch_size, run as several chunks and reassembled in order."""

    __slots__ = ("request", "done", "parts", "results", "remaining", "failed")

    def __init__(self, request: InferRequest, done: Done, n: int) -> None:
        self.request = request
        self.done = done
        self.parts: list[Pending] = []
        self.results: list[dict[str, np.ndarray] | None] = [None] * n
        self.remaining = n
        self.failed = False

    def cancel(self) -> None:
        """The caller went away: drop the chunks still queued (counted once, as one cancelled
        request); chunks already computing finish uncalled."""
        count = True
        for p in self.parts:
            q = p.queue
            if count and q is not None and not p.cancelled:
                count = False
                q.note_cancelled(p.arrival)
            p.cancel()

    def _drop_rest(self) -> None:
        """A chunk failed and the request was answered with its error: the rest is not needed."""
        for p in self.parts:
            p.cancel()

    def part_done(self, index: int, outputs: dict[str, np.ndarray] | None, err: GatewayError | None,
                  make_response: Callable[[InferRequest, dict[str, np.ndarray]], InferResponse]) -> None:
        if self.failed:
            return
        if err is not None:
            self.failed = True
            self._drop_rest()
            self.done(None, err)
            return
        self.results[index] = outputs
        self.remaining -= 1
        if self.remaining == 0:
            names = self.results[0].keys()  # type: ignore[union-attr]
            merged = {n: np.concatenate([r[n] for r in self.results]) for n in names}  # type: ignore[index]
            self.done(make_response(self.request, merged), None)


class Batcher:
    def __init__(self, name: str, version: str, config: ModelConfig, backend: Backend, signature: Signature,
                 stats: ModelStats, clock: Callable[[], float] = time.perf_counter,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.name = name
        self.version = version
        self.config = config
        self.backend = backend
        self.sig = signature
        self.stats = stats
        self.clock = clock
        self._loop = loop
        self.queue = BatchQueue(config.max_batch_size, config.max_queue_delay_us / 1e6,
                                config.preferred_batch_sizes, config.max_queue_size,
                                config.release_on_deadline, max(1, config.priority_levels),
                                config.priority_aging_us / 1e6, dict(config.priority_queue_size),
                                merge=config.remote is None or config.remote.batching)
        self.queue.on_withdraw = self._withdrawn
        self.in_flight = 0
        self.executing = 0  # queued units handed to an async backend and not back yet
        self.compute_estimate_s = 0.0
        self.cost = BatchCost()
        self._soon: asyncio.Handle | None = None  # a flush on the next loop pass
        self._timer: asyncio.TimerHandle | None = None  # a flush when a delay or deadline comes due
        self._idle_waiters: list[asyncio.Future[None]] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def outstanding(self) -> tuple[int, int]:
        """(units queued, units executing) now, for gauges read at scrape time (walks the queue).
        A unit is a request, or one chunk of a request split above max_batch_size."""
        queued = sum(1 for p in self.queue.items() if not p.cancelled)
        return queued, self.executing

    # ---- intake ----------------------------------------------------------------------------
    def expected(self, rows: int, level: int, now: float) -> tuple[float, float]:
        """(seconds until its batch starts, seconds until it is answered) for a request of ``rows`` at
        priority ``level`` queued ``now``: the rows ranked ahead of it, drained in full batches at the
        measured batch cost, ``capacity`` at a time. (0, 0) until a batch has been measured. The
        batching delay is not counted: it ends early once a batch fills."""
        cost = self.cost
        if not cost.known:
            return 0.0, 0.0
        mbs = self.config.max_batch_size or 1
        slots = 1 if self.backend.inline else self.backend.capacity
        full, part = divmod(self.queue.rows_ahead(level, now), mbs)
        t_full = cost.seconds(mbs)
        start = full * t_full / slots
        if self.in_flight >= slots:  # every instance busy: on average half a batch to go
            start += 0.5 * t_full
        mine = part + rows
        more, last = divmod(mine - 1, mbs)  # batches of its own beyond the first (a split request)
        return start, start + more * t_full / slots + cost.seconds(last + 1)

    def enqueue(self, request: InferRequest, done: Done, rows: int, now: float, deadline: float,
                eager: bool = False, level: int = 1) -> Ticket | SplitGroup:
        """Queue a request the admit stage accepted (``rows`` checked against the signature and
        the queue bound, ``deadline`` and priority ``level`` fixed). ``eager``: when the backend is idle, runs inline,
        nothing is queued and no delay is configured, run it now instead of on the next loop
        pass; for callers whose requests arrive one per loop pass (grpc.aio), waiting a pass only
        costs latency and CPU."""
        q = self.queue
        key = bucket_key(self.sig, request)
        mbs = self.config.max_batch_size
        ticket: Ticket | SplitGroup
        if mbs and rows > mbs:
            n = -(-rows // mbs)
            group = SplitGroup(request, done, n)
            for i in range(n):
                chunk = {k: v[i * mbs:(i + 1) * mbs] for k, v in request.inputs.items()}
                p = Pending(request, chunk, min(mbs, rows - i * mbs), now, deadline, None, key, level)
                p.group, p.index = group, i
                group.parts.append(p)
                q.add(p)
            ticket = group
        else:
            ticket = Pending(request, request.inputs, rows, now, deadline, done, key, level)
            q.add(ticket)
        self.stats.queue_rows = q.rows
        if (eager and q.rows == rows and self._soon is None and self._timer is None and not self.in_flight
                and self.backend.inline and not self.queue.delay):
            self._flush()
            return ticket
        # Always look on the next pass (deduplicated): a new request may fill a batch or carry an
        # earlier deadline than the armed timer.
        if self._soon is None and self.in_flight < self.backend.capacity:
            self._soon = self.loop.call_soon(self._flush)
        return ticket

    def drain_inline(self) -> bool:
        """Run what is queued now, if the backend runs inline and is idle; True if anything ran.

        The admit stage asks before refusing a request the queue has no room for. An inline
        backend is otherwise flushed only once the loop's pass ends, and a long pass (hundreds of
        ready connections) would fill the queue and then decode requests only to refuse them.
        What completes here was submitted earlier: the caller's own request is not yet queued."""
        if not (self.backend.inline and not self.in_flight and self.queue.rows):
            return False
        self._flush()
        return True

    def _withdrawn(self) -> None:
        """Queued work was cancelled: drop (and count) it on the next pass, not when the delay it
        waited for comes due."""
        if self._soon is None:
            self._soon = self.loop.call_soon(self._flush)

    # ---- the driver ------------------------------------------------------------------------
    def _flush(self) -> None:
        self._soon = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        q = self.queue
        now = self.clock()
        self._expire(now)
        while self.in_flight < self.backend.capacity:
            nb = q.next_batch(now, self.compute_estimate_s)
            if nb is None:
                break
            items, reason = nb
            self.stats.release[reason] += 1
            self._dispatch(items)
            now = self.clock()
            if q.dirty:  # an inline batch's callbacks cancelled queued work: never dispatch it
                self._expire(now)
        self.stats.queue_rows = q.rows
        if self.in_flight < self.backend.capacity:
            wake = q.wake_at(now, self.compute_estimate_s)
            if wake is not None and self._soon is None:
                delta = wake - now
                if delta > 0.002:
                    self._timer = self.loop.call_later(delta - 0.001, self._flush)
                else:
                    self._soon = self.loop.call_soon(self._flush)
        if not q.rows and not self.in_flight and self._idle_waiters:
            for w in self._idle_waiters:
                if not w.done():
                    w.set_result(None)
            self._idle_waiters.clear()

    def _expire(self, now: float) -> None:
        """Drop what was cancelled (counted as CANCELLED failures, once per request, here rather
        than on the cancelling path) and fail what is past its deadline."""
        q = self.queue
        for p in q.expire(now):
            self._fail_one(p, GatewayError(Code.DEADLINE_EXCEEDED,
                                           f"deadline exceeded while queued for model '{self.name}'"), now)
        if q.cancelled:
            n, waited = q.take_cancelled(now)
            self.stats.record_failures(Code.CANCELLED.name, n, int(waited * 1e9))

    def _dispatch(self, items: list[Pending]) -> None:
        t0 = self.clock()
        if len(items) == 1:
            feeds = items[0].inputs
            rows = items[0].rows
        else:
            feeds = {}
            rows = sum(p.rows for p in items)
            for name, first in items[0].inputs.items():
                out = np.empty((rows, *first.shape[1:]), dtype=first.dtype)
                pack_rows([p.inputs[name] for p in items], out)
                feeds[name] = out
        t1 = self.clock()
        if self.backend.inline:
            try:
                outputs: Outputs | None = self.backend.run_inline(feeds)
                err: GatewayError | None = None
            except GatewayError as exc:
                outputs, err = None, exc
            self._complete(items, rows, outputs, err, t0, t1)
        else:
            self.in_flight += 1
            self.executing += len(items)
            deadline = max(p.deadline for p in items)  # the call is worth making until the last one leaves
            running = Running(len(items))
            for p in items:
                p.queue = running  # a cancel now reaches the call (once all of them are cancelled)
            running.cancel = self.backend.run_async(feeds, partial(self._async_done, items, rows, t0, t1, running),
                                                    deadline)

    def _async_done(self, items: list[Pending], rows: int, t0: float, t1: float, running: Running,
                    outputs: Outputs | None, err: BaseException | None) -> None:
        running.cancel = None
        self.in_flight -= 1
        self.executing -= len(items)
        if err is not None and not isinstance(err, GatewayError):
            err = GatewayError(Code.INTERNAL, f"model '{self.name}' failed: {err}")
        self._complete(items, rows, outputs, err, t0, t1)  # type: ignore[arg-type]
        if self._soon is None:
            self._soon = self.loop.call_soon(self._flush)

    def _complete(self, items: list[Pending], rows: int, outputs: Outputs | None, err: GatewayError | None,
                  t0: float, t1: float) -> None:
        t2 = self.clock()
        if err is None and outputs is not None and self.sig.batching:
            for name, arr in outputs.items():
                if arr.ndim == 0 or arr.shape[0] != rows:
                    err = GatewayError(
                        Code.INTERNAL,
                        f"model '{self.name}' returned {arr.shape[0] if arr.ndim else 0} rows for output "
                        f"'{name}' from a batch of {rows} rows; the batch was failed",
                    )
                    break
        self.compute_estimate_s = 0.8 * self.compute_estimate_s + 0.2 * (t2 - t1)
        if err is not None:
            log.debug("batch of %d failed: %s", len(items), err)
            for p in items:
                self._fail_one(p, err, t2)
            return
        assert outputs is not None
        views = None
        if len(items) > 1:  # each item's rows: views of the batch's outputs
            counts = [p.rows for p in items]
            views = {name: scatter_rows(arr, counts) for name, arr in outputs.items()}
        t3 = self.clock()
        deliver(items, outputs, views, self._response)  # (native: lane tickets are answered in C)
        t4 = self.clock()
        self.stats.record_batch(items, rows, t0, t1, t2, t3, t4)
        self.cost.observe(rows, t4 - t0)

    def _response(self, request: InferRequest, outs: dict[str, np.ndarray]) -> InferResponse:
        wanted = request.outputs
        if wanted is not None:
            outs = {n: outs[n] for n in wanted}
        return InferResponse(self.name, self.version, outs, request.id)

    def _fail_one(self, p: Pending, err: GatewayError, now: float) -> None:
        self.stats.record_failures(err.code.name, 1, int((now - p.arrival) * 1e9))
        if p.cancelled:
            return
        if p.group is not None:
            p.group.part_done(p.index, None, err, self._response)
        else:
            p.done(None, err)  # type: ignore[misc]

    # ---- lifecycle -------------------------------------------------------------------------
    async def drain(self) -> None:
        """Wait until nothing is queued or in flight (the admit stage stopped accepting first)."""
        if not self.queue.rows and not self.in_flight:
            return
        fut: asyncio.Future[None] = self.loop.create_future()
        self._idle_waiters.append(fut)
        if self._soon is None:
            self._soon = self.loop.call_soon(self._flush)
        await fut
