"""Per model-version statistics, aggregated once per batch (never one call per request per stage).

One ``ModelStats`` feeds both the Triton statistics extension (``/v2/models/{m}/stats``,
ModelStatistics RPC) and the Prometheus histograms at ``/metrics``. At tens of thousands of
requests per second a per-request ``observe`` per stage costs more than parsing the request,
so the batcher hands over whole batches and the native histograms read each request's arrival
time directly (``gateway._native.hist``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gateway._native.hist import Histogram, observe_arrivals

# Latency bucket upper bounds in seconds (Prometheus `le`), 50 µs .. 10 s.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
RELEASE_REASONS = ("full", "preferred", "delay", "deadline")
STAGES = ("queue", "pack", "compute", "scatter", "total")


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, count: int, ns: int) -> None:
        self.count += count
        self.ns += ns

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStat:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class StatsSnapshot:
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration
    inference_count: int
    execution_count: int
    last_inference_ms: int
    batch_stats: dict[int, BatchStat]
    fail_by_code: dict[str, int]

    def to_json(self, name: str, version: str) -> dict[str, Any]:
        """Triton statistics extension shape for one model version."""
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_json(),
                "fail": self.fail.to_json(),
                "queue": self.queue.to_json(),
                "compute_input": self.compute_input.to_json(),
                "compute_infer": self.compute_infer.to_json(),
                "compute_output": self.compute_output.to_json(),
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.to_json(),
                    "compute_infer": b.compute_infer.to_json(),
                    "compute_output": b.compute_output.to_json(),
                }
                for size, b in sorted(self.batch_stats.items())
            ],
        }


class ModelStats:
    """Accumulators for one model version. Mutated on the loop thread only."""

    def __init__(self) -> None:
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.batch_stats: dict[int, BatchStat] = {}
        self.fail_by_code: dict[str, int] = {}
        self.latency = {stage: Histogram(LATENCY_BUCKETS) for stage in STAGES}
        self.batch_rows = Histogram(BATCH_BUCKETS)
        self.release = dict.fromkeys(RELEASE_REASONS, 0)
        self.queue_rows = 0  # gauge, set by the batcher

    def record_batch(self, items: list, rows: int, t0: float, t1: float, t2: float, t3: float, t4: float) -> None:
        """One executed batch. ``items`` carry ``arrival``; t0 pack start, t1 compute start, t2 compute
        end, t3 scatter end, t4 callbacks done (seconds, the batcher's clock)."""
        ns = 1_000_000_000
        requests = len(items)
        lat = self.latency
        queue_s, total_s = observe_arrivals(items, t0, t4, lat["queue"], lat["total"])
        pack_ns, compute_ns, scatter_ns = int((t1 - t0) * ns), int((t2 - t1) * ns), int((t3 - t2) * ns)
        self.success.add(requests, int(total_s * ns))
        self.queue.add(requests, int(queue_s * ns))
        # Triton charges every request of a batch the batch's compute times.
        self.compute_input.add(requests, pack_ns * requests)
        self.compute_infer.add(requests, compute_ns * requests)
        self.compute_output.add(requests, scatter_ns * requests)
        self.inference_count += rows
        self.execution_count += 1
        self.last_inference_ms = int(time.time() * 1000)
        b = self.batch_stats.get(rows)
        if b is None:
            b = self.batch_stats[rows] = BatchStat()
        b.compute_input.add(1, pack_ns)
        b.compute_infer.add(1, compute_ns)
        b.compute_output.add(1, scatter_ns)
        lat["pack"].observe(t1 - t0)
        lat["compute"].observe(t2 - t1)
        lat["scatter"].observe(t3 - t2)
        self.batch_rows.observe(rows)

    def record_failures(self, code: str, n: int, total_ns: int = 0) -> None:
        self.fail.add(n, total_ns)
        self.fail_by_code[code] = self.fail_by_code.get(code, 0) + n

    def snapshot(self) -> StatsSnapshot:
        def d(x: Duration) -> Duration:
            return Duration(x.count, x.ns)

        return StatsSnapshot(
            d(self.success), d(self.fail), d(self.queue), d(self.compute_input), d(self.compute_infer),
            d(self.compute_output), self.inference_count, self.execution_count, self.last_inference_ms,
            {k: BatchStat(d(v.compute_input), d(v.compute_infer), d(v.compute_output))
             for k, v in self.batch_stats.items()},
            dict(self.fail_by_code),
        )
