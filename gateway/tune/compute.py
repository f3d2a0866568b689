"""Each variant's compute per row, in process: onnxruntime alone, measured in interleaved rounds.

Why: on a small model the end-to-end knee is bounded by the HTTP path or by the load generator,
not by compute (the demo mlp computes a row in ~2 us at 64 rows), so the knee cannot show what a
cheaper precision buys. Compute per row can, and it is steady enough to measure on a shared host:
every round runs each variant's session on the same rows, in an order that reverses each round,
and a variant's figure is the median of its rounds. One intra-op thread, the CPU provider: what
one core does, at one row and at a full batch.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.tune.accuracy import cpu_session
from gateway.tune.sample import Sample, fixed_batch

__all__ = ["compute_per_row", "BATCHES"]

BATCHES = (1, 64)
"""Rows per run: one request alone, and a full batch (the demo's max_batch_size)."""
WARMUP_RUNS = 3


def _time_runs(sess: Any, feeds: dict[str, Any], runs: int) -> float:
    t = time.perf_counter()
    for _ in range(runs):
        sess.run(None, feeds)
    return time.perf_counter() - t


def compute_per_row(models: Mapping[str, Path], sample: Sample, *, rounds: int = 5, run_s: float = 0.04,
                    batches: tuple[int, ...] = BATCHES, deadline: float | None = None) -> dict[str, dict[str, Any]]:
    """Per model name: ``{"us_per_row": {rows: median}, "range": {rows: [least, most]}, "rounds": n}``
    (rows as a string key, for JSON). A model with a fixed first dimension is timed at that size only.
    Each timing runs at least ``run_s``; a round that would pass ``deadline`` is not started."""
    names = list(models)
    if not names:
        return {}
    sessions = {n: cpu_session(models[n]) for n in names}
    fixed = fixed_batch(models[names[0]])
    sizes = [fixed] if fixed else [b for b in batches if b <= sample.rows] or [sample.rows]
    feeds = {b: next(sample.batches(b)) for b in sizes}
    runs: dict[tuple[str, int], int] = {}
    for n in names:
        for b in sizes:
            for _ in range(WARMUP_RUNS):
                sessions[n].run(None, feeds[b])
            one = max(_time_runs(sessions[n], feeds[b], 1), 1e-6)
            runs[n, b] = max(1, int(run_s / one))
    got: dict[tuple[str, int], list[float]] = {k: [] for k in runs}
    per_round = 1.5 * run_s * len(runs)  # the timings, plus the interpreter around them
    done = 0
    for r in range(rounds):
        if deadline is not None and time.monotonic() + per_round > deadline:
            break
        for n in names if r % 2 == 0 else names[::-1]:
            for b in sizes:
                k = (n, b)
                got[k].append(_time_runs(sessions[n], feeds[b], runs[k]) / (runs[k] * b) * 1e6)
        done += 1
    out: dict[str, dict[str, Any]] = {}
    for n in names:
        vals = {b: got[n, b] for b in sizes if got[n, b]}
        out[n] = {"us_per_row": {str(b): round(statistics.median(v), 3) for b, v in vals.items()},
                  "range": {str(b): [round(min(v), 3), round(max(v), 3)] for b, v in vals.items()},
                  "rounds": done}
    return out
