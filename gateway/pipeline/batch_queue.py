"""The batching state machine: which queued requests form the next batch, and when to look again.

Sans-I/O: it is given the time (``now``) and returns decisions; the async driver in
``gateway.pipeline.batcher`` does the work. That keeps the timing rules testable with a fake clock.

Rules (rows are counted along the first dimension, as Triton does):
- requests whose non-batch shapes differ go to separate buckets; the bucket with the oldest
  head is served first;
- release **full** when a bucket holds ``max_batch_size`` rows;
- release **preferred** when the bucket holds at least the largest preferred size and a prefix
  of it adds up exactly to a preferred size (the largest such prefix goes);
- release **delay** when the oldest request has waited ``max_queue_delay`` (0: at once);
- release **deadline** early (only with ``release_on_deadline``) when a queued request's
  deadline would pass before the delay, given the recent batch compute time; off by default,
  as in Triton: ``max_queue_delay`` is then a promise to wait for a fuller batch;
- a request whose deadline has passed, or whose caller went away, leaves the queue unexecuted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

INF = float("inf")


class Pending:
    """One queued unit of work: a request, or one chunk of a request split above max_batch_size."""

    __slots__ = ("request", "inputs", "rows", "arrival", "deadline", "done", "cancelled", "group", "index",
                 "bucket", "queue")

    def __init__(self, request: Any, inputs: dict, rows: int, arrival: float, deadline: float,
                 done: Callable[..., None] | None, bucket: Hashable = ()) -> None:
        self.request = request
        self.inputs = inputs
        self.rows = rows
        self.arrival = arrival
        self.deadline = deadline
        self.done = done
        self.cancelled = False
        self.group: Any = None
        self.index = 0
        self.bucket = bucket
        self.queue: BatchQueue | None = None

    def cancel(self) -> None:
        """The caller went away: never compute this, never call back. Still queued, it leaves the
        queue's row count at once (live requests get its room) and is counted as cancelled."""
        if not self.cancelled:
            self.cancelled = True
            q = self.queue
            if q is not None:
                q.withdraw(self, self.group is None)  # a chunk: its group counts the request once


class BatchQueue:
    def __init__(self, max_batch_size: int, max_queue_delay_s: float = 0.0,
                 preferred: tuple[int, ...] = (), max_queue_rows: int = 4096,
                 release_on_deadline: bool = False) -> None:
        self.max_batch_size = max_batch_size  # 0: no batching, one request per batch
        self.delay = max_queue_delay_s
        self.preferred = frozenset(p for p in preferred if p <= max_batch_size)
        self.largest_preferred = max(self.preferred) if self.preferred else 0
        self.max_queue_rows = max_queue_rows
        self.release_on_deadline = release_on_deadline
        self.buckets: dict[Hashable, deque[Pending]] = {}
        self.rows = 0
        self.deadlines = 0  # queued items with a finite deadline
        self.dirty = False  # some queued item was cancelled
        self.cancelled = 0  # requests whose queued work was cancelled, not yet taken by ``take_cancelled``
        self._cancelled_arrivals = 0.0  # the sum of their arrival times
        self.on_withdraw: Callable[[], None] | None = None
        """Called when a queued item is cancelled: the driver drops it soon (``expire``), rather
        than when a delay it was waiting for comes due."""

    def __len__(self) -> int:
        return sum(len(q) for q in self.buckets.values())

    def has_room(self, rows: int) -> bool:
        return self.rows + rows <= self.max_queue_rows

    def add(self, p: Pending) -> None:
        q = self.buckets.get(p.bucket)
        if q is None:
            q = self.buckets[p.bucket] = deque()
        q.append(p)
        p.queue = self
        self.rows += p.rows
        if p.deadline != INF:
            self.deadlines += 1

    def _remove_where(self, pred: Callable[[Pending], bool]) -> list[Pending]:
        removed: list[Pending] = []
        for key in list(self.buckets):
            q = self.buckets[key]
            keep: deque[Pending] = deque()
            for p in q:
                if pred(p):
                    removed.append(p)
                else:
                    keep.append(p)
            if len(keep) != len(q):
                if keep:
                    self.buckets[key] = keep
                else:
                    del self.buckets[key]
        for p in removed:
            self._forget(p)
        return removed

    def _forget(self, p: Pending) -> None:
        if not p.cancelled:  # a cancelled item left the counts when it was withdrawn
            self.rows -= p.rows
            if p.deadline != INF:
                self.deadlines -= 1
        p.queue = None

    def withdraw(self, p: Pending, count: bool = True) -> None:
        """A queued item was cancelled (``Pending.cancel``): its rows and deadline leave the counts
        now; the item itself leaves the deque on the next ``expire``. ``count``: one cancelled
        request (False for the further chunks of a split request)."""
        self.rows -= p.rows
        if p.deadline != INF:
            self.deadlines -= 1
        if count:
            self.note_cancelled(p.arrival)
        if not self.dirty:
            self.dirty = True
            if self.on_withdraw is not None:
                self.on_withdraw()

    def note_cancelled(self, arrival: float) -> None:
        """One request that arrived at ``arrival`` was cancelled while (some of) its work was queued."""
        self.cancelled += 1
        self._cancelled_arrivals += arrival

    def take_cancelled(self, now: float) -> tuple[int, float]:
        """(requests cancelled while queued, their summed seconds from arrival to ``now``) since the
        last call, for the statistics; (0, 0.0) when there were none."""
        n = self.cancelled
        if not n:
            return 0, 0.0
        waited = n * now - self._cancelled_arrivals
        self.cancelled, self._cancelled_arrivals = 0, 0.0
        return n, waited

    def expire(self, now: float) -> list[Pending]:
        """Drop cancelled items (silently) and return the ones whose deadline has passed."""
        if not self.deadlines and not self.dirty:
            return []
        self.dirty = False
        gone = self._remove_where(lambda p: p.cancelled or p.deadline <= now)
        return [p for p in gone if not p.cancelled]

    def _oldest_first(self) -> list[deque[Pending]]:
        if len(self.buckets) == 1:
            return list(self.buckets.values())
        return sorted(self.buckets.values(), key=lambda q: q[0].arrival)

    def next_batch(self, now: float, compute_estimate_s: float = 0.0) -> tuple[list[Pending], str] | None:
        """Remove and return the next batch and why it was released, or None if none is due."""
        for q in self._oldest_first():
            if not self.max_batch_size:
                p = q.popleft()
                self._drop_if_empty(q, p.bucket)
                self._forget(p)
                return [p], "full"
            reason = self._due(q, now, compute_estimate_s)
            if reason is None:
                continue
            take = self._prefix(q, reason)
            batch = [q.popleft() for _ in range(take)]
            self._drop_if_empty(q, batch[0].bucket)
            for p in batch:
                self._forget(p)
            return batch, reason
        return None

    def _drop_if_empty(self, q: deque[Pending], key: Hashable) -> None:
        if not q:
            del self.buckets[key]

    def _bucket_rows(self, q: deque[Pending]) -> int:
        if len(self.buckets) == 1:
            return self.rows
        return sum(p.rows for p in q)

    def _due(self, q: deque[Pending], now: float, est: float) -> str | None:
        rows = self._bucket_rows(q)
        if rows >= self.max_batch_size:
            return "full"
        if self.largest_preferred and rows >= self.largest_preferred and self._preferred_prefix(q):
            return "preferred"
        if now - q[0].arrival >= self.delay:
            return "delay"
        if self.release_on_deadline and self.deadlines and min(p.deadline for p in q) - est <= now:
            return "deadline"
        return None

    def _preferred_prefix(self, q: deque[Pending]) -> int:
        best, total = 0, 0
        for i, p in enumerate(q):
            total += p.rows
            if total > self.max_batch_size:
                break
            if total in self.preferred:
                best = i + 1
        return best

    def _prefix(self, q: deque[Pending], reason: str) -> int:
        if reason == "preferred":
            return self._preferred_prefix(q)
        total = 0
        for i, p in enumerate(q):
            total += p.rows
            if total > self.max_batch_size:
                return i
        return len(q)

    def wake_at(self, now: float, compute_estimate_s: float = 0.0) -> float | None:
        """When the queue next needs a look (a delay or deadline comes due); None when empty."""
        if not self.buckets:
            return None
        t = INF
        for q in self.buckets.values():
            t = min(t, q[0].arrival + self.delay)
            if self.deadlines:
                d = min(p.deadline for p in q)
                t = min(t, d - compute_estimate_s if self.release_on_deadline else d)
        return t
