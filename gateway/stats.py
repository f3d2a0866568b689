"""Per model-version statistics, aggregated once per batch (never one call per request per stage).

One ``ModelStats`` feeds both the Triton statistics extension (``/v2/models/{m}/stats``,
ModelStatistics RPC) and the Prometheus histograms at ``/metrics``. At tens of thousands of
requests per second a per-request ``observe`` per stage costs more than parsing the request,
so the batcher hands over whole batches: per-request latencies arrive as one numpy array.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Latency bucket upper bounds in seconds (Prometheus `le`), 50 µs .. 10 s.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
RELEASE_REASONS = ("full", "preferred", "delay", "deadline")
STAGES = ("queue", "pack", "compute", "scatter", "total")


class Histogram:
    """Fixed-bucket histogram updated from arrays; reads as Prometheus cumulative buckets."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # last: +Inf
        self.sum = 0.0

    def observe_many(self, values: np.ndarray) -> None:
        if values.size:
            idx = np.searchsorted(self.bounds, values, side="left")
            self.counts += np.bincount(idx, minlength=self.counts.size)
            self.sum += float(values.sum())

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[int(np.searchsorted(self.bounds, value, side="left"))] += n
        self.sum += value * n

    def cumulative(self) -> list[tuple[str, int]]:
        c = np.cumsum(self.counts)
        out = [(_fmt(b), int(v)) for b, v in zip(self.bounds, c[:-1], strict=True)]
        out.append(("+Inf", int(c[-1])))
        return out

    @property
    def count(self) -> int:
        return int(self.counts.sum())


def _fmt(b: float) -> str:
    return repr(float(b))


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

    def record_batch(
        self,
        requests: int,
        rows: int,
        queue_s: np.ndarray,
        total_s: np.ndarray,
        pack_s: float,
        compute_s: float,
        scatter_s: float,
    ) -> None:
        """One executed batch: per-request queue and total seconds as arrays, stage times as scalars."""
        ns = 1_000_000_000
        pack_ns, compute_ns, scatter_ns = int(pack_s * ns), int(compute_s * ns), int(scatter_s * ns)
        self.success.add(requests, int(total_s.sum() * ns))
        self.queue.add(requests, int(queue_s.sum() * ns))
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
        lat = self.latency
        lat["queue"].observe_many(queue_s)
        lat["total"].observe_many(total_s)
        lat["pack"].observe(pack_s)
        lat["compute"].observe(compute_s)
        lat["scatter"].observe(scatter_s)
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
