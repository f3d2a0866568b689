"""Per model-version statistics, aggregated once per batch (never one call per request per stage).

One ``ModelStats`` feeds both the Triton statistics extension (``/v2/models/{m}/stats``,
ModelStatistics RPC) and ``/metrics``. At tens of thousands of requests per second a per-request
``observe`` per stage costs more than parsing the request, so the batcher hands over whole
batches and the native histograms read each request's arrival time directly
(``gateway._native.hist``). Failures are rarer and stay in Python: the batcher records those
after queueing, the data plane those it rejects before (``record_failures`` either way).

What a scrape shows is a ``Totals``: plain numbers (counters, gauges, histogram buckets) read off
a live ``ModelStats`` at scrape time, or parsed from another worker's snapshot. Totals of the
same version add up: counters and gauges sum, histograms sum bucket by bucket (every worker runs
this code, so the bucket bounds agree), ``last_inference`` takes the latest.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway._native.hist import BatchRecorder

# Latency bucket upper bounds in seconds (Prometheus `le`), 50 µs .. 10 s.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
RELEASE_REASONS = ("full", "preferred", "delay", "deadline")
STAGES = ("queue", "pack", "compute", "scatter", "total")
# histogram name -> its bucket bounds ("rows": rows per executed batch)
HISTOGRAMS: dict[str, tuple[float, ...]] = {**dict.fromkeys(STAGES, LATENCY_BUCKETS), "rows": BATCH_BUCKETS}

# The summed integer fields of Totals (``last_inference_ms`` is a maximum, the dicts merge).
_SUMMED = ("success_count", "success_ns", "fail_count", "fail_ns", "queue_count", "queue_ns",
           "input_count", "input_ns", "infer_count", "infer_ns", "output_count", "output_ns",
           "inference_count", "execution_count", "queue_rows", "pending", "executing",
           "cache_hit_count", "cache_hit_ns", "cache_miss_count", "cache_miss_ns", "cache_evictions", "cache_bytes",
           "coalesced_count", "shared_flights")


def _add_counts(into: dict[Any, int], other: dict[Any, int]) -> None:
    for k, n in other.items():
        into[k] = into.get(k, 0) + n


def cumulative_buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, int]]:
    """Prometheus buckets, ``[(le, cumulative count), ..., ("+Inf", n)]``, from per-bucket counts
    (one more than ``bounds``: the last is +Inf), as ``Histogram.bucket_counts`` gives them."""
    out, c = [], 0
    for le, n in zip((*map(repr, map(float, bounds)), "+Inf"), counts, strict=True):
        c += n
        out.append((le, c))
    return out


@dataclass(slots=True)
class Totals:
    """Everything a scrape shows of one model version, as plain numbers.

    ``pending`` (requests queued, not yet executing) and ``executing`` are gauges read from the
    batcher at scrape time; ``queue_rows`` is the batcher's gauge of queued rows.
    """

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_count: int = 0
    queue_ns: int = 0
    input_count: int = 0
    input_ns: int = 0
    infer_count: int = 0
    infer_ns: int = 0
    output_count: int = 0
    output_ns: int = 0
    inference_count: int = 0
    execution_count: int = 0
    queue_rows: int = 0
    pending: int = 0
    executing: int = 0
    last_inference_ms: int = 0
    cache_hit_count: int = 0
    cache_hit_ns: int = 0
    cache_miss_count: int = 0
    cache_miss_ns: int = 0
    cache_evictions: int = 0
    cache_bytes: int = 0  # gauge: output bytes the response cache holds
    coalesced_count: int = 0  # requests answered from another request's computation
    shared_flights: int = 0  # computations that answered more than one request
    batch_sizes: dict[int, list[int]] = field(default_factory=dict)  # rows -> [executions, in, infer, out ns]
    fail_by_code: dict[str, int] = field(default_factory=dict)  # Code name -> failed requests
    release: dict[str, int] = field(default_factory=dict)  # release reason -> batches
    hists: dict[str, tuple[list[int], float]] = field(default_factory=dict)  # name -> (bucket counts, sum)

    def merge(self, other: Totals) -> None:
        """Add another worker's totals of the same version into these."""
        for name in _SUMMED:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.last_inference_ms = max(self.last_inference_ms, other.last_inference_ms)
        for rows, b in other.batch_sizes.items():
            mine = self.batch_sizes.get(rows)
            self.batch_sizes[rows] = list(b) if mine is None else [x + y for x, y in zip(mine, b, strict=True)]
        _add_counts(self.fail_by_code, other.fail_by_code)
        _add_counts(self.release, other.release)
        for name, (counts, total) in other.hists.items():
            mine_h = self.hists.get(name)
            if mine_h is None:
                self.hists[name] = (list(counts), total)
            else:
                self.hists[name] = ([x + y for x, y in zip(mine_h[0], counts, strict=True)], mine_h[1] + total)

    def cumulative(self, name: str) -> tuple[list[tuple[str, int]], float]:
        """Prometheus buckets of one histogram: ([(le, cumulative count), ..., ("+Inf", n)], sum)."""
        bounds = HISTOGRAMS[name]
        counts, total = self.hists.get(name) or ([0] * (len(bounds) + 1), 0.0)
        return cumulative_buckets(bounds, counts), total

    # ---- a snapshot file's form (JSON: dict keys become strings) ------------------------------
    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {name: getattr(self, name) for name in _SUMMED}
        doc["last_inference_ms"] = self.last_inference_ms
        doc["batch_sizes"] = [[rows, *b] for rows, b in self.batch_sizes.items()]
        doc["fail_by_code"] = self.fail_by_code
        doc["release"] = self.release
        doc["hists"] = {name: [counts, total] for name, (counts, total) in self.hists.items()}
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Totals:
        summed: dict[str, Any] = {name: int(doc.get(name, 0)) for name in _SUMMED}
        t = cls(**summed, last_inference_ms=int(doc["last_inference_ms"]))
        t.batch_sizes = {int(b[0]): [int(x) for x in b[1:]] for b in doc["batch_sizes"]}
        t.fail_by_code = {str(k): int(n) for k, n in doc["fail_by_code"].items()}
        t.release = {str(k): int(n) for k, n in doc["release"].items()}
        for name, (counts, total) in doc["hists"].items():
            if name in HISTOGRAMS and len(counts) == len(HISTOGRAMS[name]) + 1:
                t.hists[name] = ([int(n) for n in counts], float(total))
        return t


class ModelStats:
    """Accumulators for one model version. Mutated on the loop thread only.

    Successful batches go through one native call (``BatchRecorder.record``); failures, rarer,
    stay in Python.
    """

    def __init__(self) -> None:
        self.rec = BatchRecorder(LATENCY_BUCKETS, BATCH_BUCKETS)
        self.fail_count = 0
        self.fail_ns = 0
        self.fail_by_code: dict[str, int] = {}
        self.latency = {"queue": self.rec.queue, "pack": self.rec.pack, "compute": self.rec.compute,
                        "scatter": self.rec.scatter, "total": self.rec.total}
        self.batch_rows = self.rec.rows
        self.release = dict.fromkeys(RELEASE_REASONS, 0)
        self.queue_rows = 0  # gauge, set by the batcher
        self.last_inference_ms = 0
        # the coalesce stage's numbers (requests it answered count as successes too, as in Triton)
        self.extra_success_count = 0
        self.extra_success_ns = 0
        self.cache_hit_count = 0
        self.cache_hit_ns = 0
        self.cache_miss_count = 0
        self.cache_miss_ns = 0
        self.cache_evictions = 0
        self.cache_bytes = 0
        self.coalesced_count = 0
        self.shared_flights = 0

    def record_batch(self, items: list, rows: int, t0: float, t1: float, t2: float, t3: float, t4: float) -> None:
        """One executed batch. ``items`` carry ``arrival``; t0 pack start, t1 compute start, t2 compute
        end, t3 scatter end, t4 callbacks done (seconds, the batcher's clock)."""
        self.rec.record(items, rows, t0, t1, t2, t3, t4)
        self.last_inference_ms = int(time.time() * 1000)

    @property
    def execution_count(self) -> int:
        return self.rec.execution_count

    @property
    def success_count(self) -> int:
        return self.rec.success_count

    def record_failures(self, code: str, n: int, total_ns: int = 0) -> None:
        """``n`` requests answered with an error of ``code`` (a ``Code`` name); ``total_ns`` their time
        from arrival to the answer (0 for those rejected before they were queued)."""
        self.fail_count += n
        self.fail_ns += total_ns
        self.fail_by_code[code] = self.fail_by_code.get(code, 0) + n

    def totals(self, pending: int = 0, executing: int = 0) -> Totals:
        """A copy of the current numbers; ``pending``/``executing``: the batcher's gauges now."""
        r = self.rec
        hists = {name: (h.bucket_counts(), h.sum) for name, h in self.latency.items()}
        hists["rows"] = (self.batch_rows.bucket_counts(), self.batch_rows.sum)
        return Totals(
            r.success_count + self.extra_success_count, r.success_ns + self.extra_success_ns, self.fail_count,
            self.fail_ns, r.queue_count, r.queue_ns,
            r.input_count, r.input_ns, r.infer_count, r.infer_ns, r.output_count, r.output_ns,
            r.inference_count, r.execution_count, self.queue_rows, pending, executing, self.last_inference_ms,
            self.cache_hit_count, self.cache_hit_ns, self.cache_miss_count, self.cache_miss_ns,
            self.cache_evictions, self.cache_bytes, self.coalesced_count, self.shared_flights,
            {k: list(v) for k, v in r.batch_sizes.items()}, dict(self.fail_by_code), dict(self.release), hists,
        )
