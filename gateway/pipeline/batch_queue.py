"""The batching state machine: which queued requests form the next batch, and when to look again.

Sans-I/O: it is given the time (``now``) and returns decisions; the async driver in
``gateway.pipeline.batcher`` does the work. That keeps the timing rules testable with a fake clock.

Rules (rows are counted along the first dimension, as Triton does):
- requests whose non-batch shapes differ go to separate buckets; the bucket whose first request
  (in the order below) came first is served first;
- within a bucket, requests are taken in **priority order with aging**: a request of priority
  level p (1 = highest) ranks as if it had arrived ``(p - 1) * aging`` later than it did. So a
  higher level goes first, and a lower level cannot starve: once it has waited ``aging`` per level
  of difference, no newly arriving request ranks ahead of it. One level: plain arrival order;
- release **full** when a bucket holds ``max_batch_size`` rows;
- release **preferred** when the bucket holds at least the largest preferred size and a prefix
  of it (in that order) adds up exactly to a preferred size (the largest such prefix goes);
- release **delay** when the oldest request has waited ``max_queue_delay`` (0: at once);
- release **deadline** early (only with ``release_on_deadline``) when a queued request's
  deadline would pass before the delay, given the recent batch compute time; off by default,
  as in Triton: ``max_queue_delay`` is then a promise to wait for a fuller batch;
- a request whose deadline has passed, or whose caller went away, leaves the queue unexecuted.

``BatchCost`` is the measured side: how long a batch of n rows keeps the backend busy, from which
the admit stage estimates how long the work queued ahead of a request takes to drain.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from itertools import islice
from operator import attrgetter
from typing import Any

INF = float("inf")
_RANK = attrgetter("rank")
_ARRIVAL = attrgetter("arrival")


class Pending:
    """One queued unit of work: a request, or one chunk of a request split above max_batch_size."""

    __slots__ = ("request", "inputs", "rows", "arrival", "deadline", "done", "cancelled", "group", "index",
                 "bucket", "queue", "level", "rank", "cum")

    def __init__(self, request: Any, inputs: dict, rows: int, arrival: float, deadline: float,
                 done: Callable[..., None] | None, bucket: Hashable = (), level: int = 1) -> None:
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
        self.queue: BatchQueue | Running | None = None
        self.level = level
        """Priority level, 1 = highest."""
        self.rank = arrival
        """Where it ranks: arrival + (level - 1) * aging (set when queued)."""
        self.cum = 0
        """Running total of the rows of its lane through this item (set when queued): the rows
        between two items of a lane are a difference, found without a walk."""

    def cancel(self) -> None:
        """The caller went away: never compute this, never call back. Still queued, it leaves the
        queue's row count at once (live requests get its room) and is counted as cancelled."""
        if not self.cancelled:
            self.cancelled = True
            q = self.queue
            if q is not None:
                q.withdraw(self, self.group is None)  # a chunk: its group counts the request once


class Running:
    """The ``queue`` of the items of a batch in flight on a backend that can abandon it (a remote
    call): once every one of them is cancelled, nobody wants the answer and the call is cancelled."""

    __slots__ = ("live", "cancel")

    def __init__(self, live: int) -> None:
        self.live = live
        self.cancel: Callable[[], object] | None = None

    def note_cancelled(self, arrival: float) -> None:
        """(Counted when the abandoned call answers CANCELLED, like any failed batch.)"""

    def withdraw(self, p: Pending, whole: bool) -> None:
        self.live -= 1
        if self.live == 0 and self.cancel is not None:
            cancel, self.cancel = self.cancel, None
            cancel()


class Bucket:
    """The queued requests of one shape: a FIFO lane per priority level in use."""

    __slots__ = ("lanes", "rows")

    def __init__(self) -> None:
        self.lanes: dict[int, deque[Pending]] = {}
        self.rows = 0

    def __iter__(self) -> Iterator[Pending]:
        """In the order they will be batched."""
        lanes = self.lanes
        if len(lanes) == 1:
            return iter(next(iter(lanes.values())))
        return heapq.merge(*lanes.values(), key=_RANK)

    def __len__(self) -> int:
        return sum(len(lane) for lane in self.lanes.values())

    def head_key(self) -> float:
        return min(lane[0].rank for lane in self.lanes.values())

    def oldest(self) -> float:
        """Arrival of the request that has waited longest (the delay is counted from it)."""
        lanes = self.lanes
        if len(lanes) == 1:
            return next(iter(lanes.values()))[0].arrival
        return min(lane[0].arrival for lane in lanes.values())


def _lane_rows(lane: deque[Pending], upto: int = -1) -> int:
    """Rows of ``lane`` from its head through index ``upto``."""
    head = lane[0]
    return lane[upto].cum - head.cum + head.rows


class BatchQueue:
    def __init__(self, max_batch_size: int, max_queue_delay_s: float = 0.0,
                 preferred: tuple[int, ...] = (), max_queue_rows: int = 4096,
                 release_on_deadline: bool = False, levels: int = 1, aging_s: float = 1.0,
                 level_limits: Mapping[int, int] | None = None, merge: bool = True) -> None:
        self.max_batch_size = max_batch_size  # 0: no batching, one request per batch
        self.merge = merge  # False: one request per batch even when batching (a pass-through remote)
        self.delay = max_queue_delay_s
        self.preferred = frozenset(p for p in preferred if p <= max_batch_size)
        self.largest_preferred = max(self.preferred) if self.preferred else 0
        self.max_queue_rows = max_queue_rows
        self.release_on_deadline = release_on_deadline
        self.levels = max(1, levels)
        """Priority levels (1 = highest); requests carry one of 1..levels."""
        self.aging = aging_s
        self.level_limits = dict(level_limits or {})
        """Priority level -> rows of that level allowed to wait (within max_queue_rows)."""
        self.level_rows: dict[int, int] = {}  # kept for the levels in level_limits only
        self.buckets: dict[Hashable, Bucket] = {}
        self.rows = 0
        self.deadlines = 0  # queued items with a finite deadline
        self.dirty = False  # some queued item was cancelled
        self.cancelled = 0  # requests whose queued work was cancelled, not yet taken by ``take_cancelled``
        self._cancelled_arrivals = 0.0  # the sum of their arrival times
        self.on_withdraw: Callable[[], None] | None = None
        """Called when a queued item is cancelled: the driver drops it soon (``expire``), rather
        than when a delay it was waiting for comes due."""
        # An emptied bucket and lane, kept for the next request: at low load every request
        # empties the queue, and making both again costs more than the rest of ``add``.
        self._spare_bucket: Bucket | None = None
        self._spare_lane: deque[Pending] | None = None

    def __len__(self) -> int:
        return sum(len(b) for b in self.buckets.values())

    def items(self) -> Iterator[Pending]:
        for b in self.buckets.values():
            yield from b

    def has_room(self, rows: int, level: int = 1) -> bool:
        if self.rows + rows > self.max_queue_rows:
            return False
        limit = self.level_limits.get(level) if self.level_limits else None
        return limit is None or self.level_rows.get(level, 0) + rows <= limit

    def add(self, p: Pending) -> None:
        b = self.buckets.get(p.bucket)
        if b is None:
            b = self._spare_bucket
            if b is None:
                b = Bucket()
            else:
                self._spare_bucket = None
            self.buckets[p.bucket] = b
        level = p.level
        rows = p.rows
        lane = b.lanes.get(level)
        if lane is None:
            lane = self._spare_lane
            if lane is None:
                lane = deque()
            else:
                self._spare_lane = None
            b.lanes[level] = lane
            p.cum = rows
        else:
            p.cum = lane[-1].cum + rows
        if level != 1:
            p.rank = p.arrival + (level - 1) * self.aging
        lane.append(p)
        p.queue = self
        b.rows += rows
        self.rows += rows
        if self.level_limits and level in self.level_limits:
            self.level_rows[level] = self.level_rows.get(level, 0) + rows
        if p.deadline != INF:
            self.deadlines += 1

    def _forget(self, items: list[Pending]) -> None:
        """``items`` left the lanes: take them out of the counts (a cancelled item already left
        them when it was withdrawn)."""
        rows = deadlines = 0
        limits = self.level_limits
        for p in items:
            p.queue = None
            if p.cancelled:
                continue
            rows += p.rows
            if p.deadline != INF:
                deadlines += 1
            if limits and p.level in limits:
                self.level_rows[p.level] -= p.rows
        self.rows -= rows
        self.deadlines -= deadlines

    def _pop(self, b: Bucket, key: Hashable, items: list[Pending]) -> None:
        """Remove ``items``, each the head of its lane when its turn comes (a prefix in batch order)."""
        lanes = b.lanes
        if len(lanes) == 1:
            lane = lanes[items[0].level]
            for _ in items:
                lane.popleft()
            if not lane:
                lanes.clear()
                self._spare_lane = lane
        else:
            for p in items:
                lane = lanes[p.level]
                lane.popleft()
                if not lane:
                    del lanes[p.level]
        for p in items:
            b.rows -= p.rows
        if not lanes:
            del self.buckets[key]
            self._spare_bucket = b
        self._forget(items)

    def _remove_where(self, pred: Callable[[Pending], bool]) -> list[Pending]:
        removed: list[Pending] = []
        for key in list(self.buckets):
            b = self.buckets[key]
            for level in list(b.lanes):
                lane = b.lanes[level]
                keep: deque[Pending] = deque()
                for p in lane:
                    if pred(p):
                        removed.append(p)
                        b.rows -= p.rows
                    else:
                        keep.append(p)
                if len(keep) == len(lane):
                    continue
                if keep:
                    total = 0
                    for p in keep:  # the lane's running row counts, renumbered past the gaps
                        total += p.rows
                        p.cum = total
                    b.lanes[level] = keep
                else:
                    del b.lanes[level]
            if not b.lanes:
                del self.buckets[key]
        self._forget(removed)
        return removed

    def withdraw(self, p: Pending, count: bool = True) -> None:
        """A queued item was cancelled (``Pending.cancel``): its rows and deadline leave the counts
        now; the item itself leaves the deque on the next ``expire``. ``count``: one cancelled
        request (False for the further chunks of a split request)."""
        self.rows -= p.rows
        if p.deadline != INF:
            self.deadlines -= 1
        if self.level_limits and p.level in self.level_limits:
            self.level_rows[p.level] -= p.rows
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

    def next_batch(self, now: float, compute_estimate_s: float = 0.0) -> tuple[list[Pending], str] | None:
        """Remove and return the next batch and why it was released, or None if none is due."""
        buckets = self.buckets
        order: Iterable[tuple[Hashable, Bucket]] = (
            buckets.items() if len(buckets) < 2 else sorted(buckets.items(), key=lambda kb: kb[1].head_key()))
        for key, b in order:  # (a bucket emptied below is deleted only just before returning)
            if not self.max_batch_size or not self.merge:
                batch = list(islice(b, 1))
                self._pop(b, key, batch)
                return batch, "full"
            reason = self._due(b, now, compute_estimate_s)
            if reason is None:
                continue
            batch = self._take(b, reason)
            self._pop(b, key, batch)
            return batch, reason
        return None

    def _due(self, b: Bucket, now: float, est: float) -> str | None:
        rows = b.rows
        if rows >= self.max_batch_size:
            return "full"
        if self.largest_preferred and rows >= self.largest_preferred and self._preferred_prefix(b):
            return "preferred"
        if now - b.oldest() >= self.delay:
            return "delay"
        if self.release_on_deadline and self.deadlines and min(p.deadline for p in b) - est <= now:
            return "deadline"
        return None

    def _preferred_prefix(self, b: Bucket) -> int:
        best, total = 0, 0
        for i, p in enumerate(b):
            total += p.rows
            if total > self.max_batch_size:
                break
            if total in self.preferred:
                best = i + 1
        return best

    def _take(self, b: Bucket, reason: str) -> list[Pending]:
        if reason == "preferred":
            return list(islice(b, self._preferred_prefix(b)))
        out: list[Pending] = []
        total = 0
        lanes = b.lanes
        for p in next(iter(lanes.values())) if len(lanes) == 1 else b:
            total += p.rows
            if total > self.max_batch_size:
                break
            out.append(p)
        return out

    def wake_at(self, now: float, compute_estimate_s: float = 0.0) -> float | None:
        """When the queue next needs a look (a delay or deadline comes due); None when empty."""
        if not self.buckets:
            return None
        t = INF
        for b in self.buckets.values():
            t = min(t, b.oldest() + self.delay)
            if self.deadlines:
                d = min(p.deadline for p in b)
                t = min(t, d - compute_estimate_s if self.release_on_deadline else d)
        return t

    def rows_ahead(self, level: int, now: float) -> int:
        """Rows queued that rank ahead of a request of ``level`` arriving ``now``: every row of its
        own and higher levels, and the rows of lower levels that have aged past it. Requests that
        arrive later at a higher level can still go before it: this is what is known now."""
        if self.levels == 1:
            return self.rows
        total = 0
        aging = self.aging
        for b in self.buckets.values():
            for lvl, lane in b.lanes.items():
                if lvl <= level:
                    total += _lane_rows(lane)
                    continue
                cutoff = now - (lvl - level) * aging  # a lower level ranks ahead if it arrived by then
                if lane[0].arrival > cutoff:
                    continue
                if lane[-1].arrival <= cutoff:
                    total += _lane_rows(lane)
                else:
                    total += _lane_rows(lane, bisect_right(lane, cutoff, key=_ARRIVAL) - 1)
        return total

    def oldest(self) -> float:
        """Arrival of the request queued longest; INF when empty."""
        return min((b.oldest() for b in self.buckets.values()), default=INF)


class BatchCost:
    """How long a batch of ``n`` rows keeps the backend busy: ``t(n) = fixed + per_row * n``, a least
    squares fit with exponential forgetting (each batch weighs ``decay`` times the one after it, so
    about the last ``1 / (1 - decay)`` batches count). Updated once per batch, read per admission.

    With batches all of one size the two terms cannot be told apart: the time is then taken as
    proportional to the rows. Neither term is ever negative.
    """

    __slots__ = ("decay", "w", "sn", "st", "snn", "snt", "fixed", "per_row")

    def __init__(self, decay: float = 0.95) -> None:
        self.decay = decay
        self.w = self.sn = self.st = self.snn = self.snt = 0.0
        self.fixed = 0.0
        self.per_row = 0.0

    @property
    def known(self) -> bool:
        return self.w > 0.0

    def observe(self, rows: int, seconds: float) -> None:
        d = self.decay
        self.w = self.w * d + 1.0
        self.sn = self.sn * d + rows
        self.st = self.st * d + seconds
        self.snn = self.snn * d + rows * rows
        self.snt = self.snt * d + rows * seconds
        var = self.w * self.snn - self.sn * self.sn
        if var <= 1e-6 * self.w * self.snn:  # one batch size so far: proportional to the rows
            fixed, per_row = 0.0, self.st / self.sn
        else:
            per_row = (self.w * self.snt - self.sn * self.st) / var
            fixed = (self.st - per_row * self.sn) / self.w
            if per_row < 0.0:  # time does not grow with rows: a cost per batch
                fixed, per_row = self.st / self.w, 0.0
            elif fixed < 0.0:  # through the origin
                fixed, per_row = 0.0, self.snt / self.snn
        self.fixed, self.per_row = fixed, per_row

    def seconds(self, rows: int) -> float:
        return self.fixed + self.per_row * rows
