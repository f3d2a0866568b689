"""Autoscaling signals over a recent window, computed from counter differences at scrape time.

HPA (through prometheus-adapter) and KEDA read a gauge; a ``rate()`` over a counter would need the
adapter's query to know our window and label sums. So the gateway turns its own cumulative totals
into windowed numbers: each scrape takes a point (per version: requests answered, queue-wait
bucket counts, rows-per-batch count and sum) and compares it with the newest point at least
``window_s`` old (the oldest kept point until one is that old). Nothing runs on the request path
or on a timer: with no scrape there is no work, and with ``--workers N`` the points are taken from
the merged totals, so any worker that answers a scrape reports the whole server's load.

Why points at scrape time and not from a 1 s timer: a timer would read every peer's snapshot file
every second, scraped or not, and the answer would be no fresher than the peers' snapshot interval
anyway. Scrapers ask every 10-30 s; a window of 30 s then spans one or two scrape intervals. Points
are kept at most one per ``window_s / 30``, so a scraper polling fast keeps the ring small.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.observe.stats import LATENCY_BUCKETS, Totals

WINDOW_S = 30.0


@dataclass(frozen=True, slots=True)
class Point:
    """One version's cumulative numbers at one instant."""

    requests: int  # answered: successes + failures
    queue: tuple[int, ...]  # per-bucket counts of the queue stage (the last is +Inf)
    batches: int
    rows: float


@dataclass(frozen=True, slots=True)
class VersionWindow:
    """One version over the window."""

    rps: float
    queue_wait_p95_s: float  # 0 when nothing waited in the window
    mean_rows: float  # rows per executed batch; 0 when no batch ran


@dataclass(frozen=True, slots=True)
class Snapshot:
    t: float
    versions: dict[tuple[str, str], Point]
    unresolved: dict[str, int]  # model -> failures that named no loaded version


def point_of(t: Totals) -> Point:
    counts, _ = t.hists.get("queue") or ([0] * (len(LATENCY_BUCKETS) + 1), 0.0)
    rows_counts, rows_sum = t.hists.get("rows") or ([0], 0.0)
    return Point(t.success_count + t.fail_count, tuple(counts), sum(rows_counts), rows_sum)


def quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float:
    """The q-quantile of per-bucket counts, interpolated linearly inside its bucket as PromQL's
    ``histogram_quantile`` does (the +Inf bucket answers the largest finite bound); 0 when empty."""
    total = sum(counts)
    if total <= 0:
        return 0.0
    rank, seen = q * total, 0
    for i, n in enumerate(counts):
        if n > 0 and seen + n >= rank:
            if i >= len(bounds):
                return float(bounds[-1])
            lo = float(bounds[i - 1]) if i else 0.0
            return lo + (float(bounds[i]) - lo) * (rank - seen) / n
        seen += n
    return float(bounds[-1])


def _delta(now: Point, then: Point | None) -> Point:
    """now - then; a counter that went down (version reloaded, worker restarted) restarts from 0."""
    if then is None or now.requests < then.requests or now.batches < then.batches or len(now.queue) != len(
            then.queue) or any(a < b for a, b in zip(now.queue, then.queue, strict=True)):
        return now
    return Point(now.requests - then.requests, tuple(a - b for a, b in zip(now.queue, then.queue, strict=True)),
                 now.batches - then.batches, now.rows - then.rows)


class Window:
    """The ring of scrape-time points, and the windowed numbers of the newest against the baseline."""

    def __init__(self, start: float, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        # a zero point at start: the first scrape's rates are over the process's life so far
        self.ring: deque[Snapshot] = deque([Snapshot(start, {}, {})])

    def observe(self, now: float, totals: Mapping[tuple[str, str], Totals], unresolved: Mapping[tuple[str, str], int]
                ) -> tuple[dict[tuple[str, str], VersionWindow], dict[str, float]]:
        """Per version its window numbers, and per model its load (requests/s arriving at any of
        its versions, failures that named no loaded version included)."""
        un: dict[str, int] = {}
        for (model, _code), n in unresolved.items():
            if model:
                un[model] = un.get(model, 0) + n
        snap = Snapshot(now, {k: point_of(t) for k, t in totals.items()}, un)
        ring = self.ring
        while len(ring) >= 2 and ring[1].t <= now - self.window_s:
            ring.popleft()
        base = ring[0]
        if now - ring[-1].t >= self.window_s / 30:
            ring.append(snap)
        dt = now - base.t
        versions: dict[tuple[str, str], VersionWindow] = {}
        load: dict[str, float] = {}
        if dt <= 0:
            return versions, load
        for key, p in snap.versions.items():
            d = _delta(p, base.versions.get(key))
            rps = d.requests / dt
            versions[key] = VersionWindow(rps, quantile(LATENCY_BUCKETS, d.queue, 0.95),
                                          d.rows / d.batches if d.batches else 0.0)
            load[key[0]] = load.get(key[0], 0.0) + rps
        for model, n in un.items():
            then = base.unresolved.get(model, 0)
            load[model] = load.get(model, 0.0) + (n - then if n >= then else n) / dt
        return versions, load


def desired_replicas(load_rps: float, capacity_rps: float, headroom: float) -> int:
    """max(1, ceil(load / (capacity x headroom))); a tiny epsilon keeps 300 / 100.0000001 at 3."""
    return max(1, math.ceil(load_rps / (capacity_rps * headroom) - 1e-9))
