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

from gateway._native.hist import BatchRecorder

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
    """Accumulators for one model version. Mutated on the loop thread only.

    Successful batches go through one native call (``BatchRecorder.record``); failures, rarer,
    stay in Python.
    """

    def __init__(self) -> None:
        self.rec = BatchRecorder(LATENCY_BUCKETS, BATCH_BUCKETS)
        self.fail = Duration()
        self.fail_by_code: dict[str, int] = {}
        self.latency = {"queue": self.rec.queue, "pack": self.rec.pack, "compute": self.rec.compute,
                        "scatter": self.rec.scatter, "total": self.rec.total}
        self.batch_rows = self.rec.rows
        self.release = dict.fromkeys(RELEASE_REASONS, 0)
        self.queue_rows = 0  # gauge, set by the batcher
        self.last_inference_ms = 0

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
        self.fail.add(n, total_ns)
        self.fail_by_code[code] = self.fail_by_code.get(code, 0) + n

    def snapshot(self) -> StatsSnapshot:
        r = self.rec
        return StatsSnapshot(
            Duration(r.success_count, r.success_ns), Duration(self.fail.count, self.fail.ns),
            Duration(r.queue_count, r.queue_ns), Duration(r.input_count, r.input_ns),
            Duration(r.infer_count, r.infer_ns), Duration(r.output_count, r.output_ns),
            r.inference_count, r.execution_count, self.last_inference_ms,
            {k: BatchStat(Duration(v[0], v[1]), Duration(v[0], v[2]), Duration(v[0], v[3]))
             for k, v in r.batch_sizes.items()},
            dict(self.fail_by_code),
        )
