"""Search serving configurations for the highest throughput at the SLO, within a time budget.

Strategy: coordinate descent (hill climbing), as Triton's model_analyzer does for its quick search.
Start from ``base``; for each knob in a fixed order (the order of ``GRID``) try its other grid values
with the other knobs held at the best so far, and keep a change when it raises the throughput. One
pass over the knobs, then a second one if budget remains and the first changed something (the knobs
interact: ``instances`` only pays once ``execution = "thread"``). A full grid is 2^5 = 32 points of
tens of seconds each; the descent measures at most 11.

Decisions:
- A config is never measured twice (results are remembered by their key/value set); a knee measured
  once is what the search believes, noise included.
- Throughputs within ``tie_tolerance`` (relative) of each other are a tie, because a knee is only as
  exact as its measurement; a tie keeps the cheaper config (fewer threads x instances: they are
  cores a replica needs), and a dearer one must win by more than the tolerance.
- ``execution = "inline"`` with ``instances > 1`` is skipped: inline runs every batch on the event
  loop thread, so extra sessions only cost memory (model_config accepts it; it is pointless).
- Budget: each point gets ``min(remaining, budget / expected points)`` (expected: the base plus two
  passes over the grid's other values), at least ``min_point_s`` (a knee needs a few steps); the
  search stops when less than ``min_point_s`` remains. The measure function is trusted to return
  within the time it was given (``measure_point`` does, plus its server's shutdown).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gateway.tune.measure import Point

__all__ = ["GRID", "DEFAULT_BASE", "PASSES", "search", "best_point", "valid", "cost", "expected_points"]

GRID: dict[str, list[Any]] = {
    "execution": ["inline", "thread"],
    "intra_op_threads": [1, 2],
    "instances": [1, 2],
    "max_batch_size": [8, 64],
    "max_queue_delay_us": [0, 500],
}
"""The coarse grid, in the order the descent visits the knobs (execution first: it gates instances)."""

DEFAULT_BASE: dict[str, Any] = {"intra_op_threads": 1, "instances": 1, "max_batch_size": 64,
                                "max_queue_delay_us": 0, "execution": "inline"}
PASSES = 2


def valid(config: dict[str, Any]) -> bool:
    """Worth measuring: inline execution has one session at work whatever ``instances`` says."""
    return not (config.get("execution") == "inline" and int(config.get("instances", 1)) > 1)


def cost(config: dict[str, Any]) -> tuple[int, int, int]:
    """Cores a replica of this config asks for (threads x instances), then instances, then threads."""
    threads, inst = int(config.get("intra_op_threads", 1)), int(config.get("instances", 1))
    return threads * inst, inst, threads


def expected_points(grid: dict[str, list[Any]], passes: int = PASSES) -> int:
    return 1 + passes * sum(max(0, len(values) - 1) for values in grid.values())


def _key(config: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(config.items()))


def _better(p: Point, best: Point, tolerance: float) -> bool:
    if p.error is not None:
        return False
    if best.error is not None:
        return True
    if p.throughput_rps > best.throughput_rps * (1 + tolerance):
        return True
    return p.throughput_rps >= best.throughput_rps * (1 - tolerance) and cost(p.config) < cost(best.config)


def search(measure: Callable[[dict[str, Any], float], Point], *, budget_s: float,
           base: dict[str, Any] | None = None, on_point: Callable[[Point], None] | None = None,
           clock: Callable[[], float] = time.monotonic, grid: dict[str, list[Any]] | None = None,
           min_point_s: float = 6.0, tie_tolerance: float = 0.02) -> list[Point]:
    """Every measured point, in order (failed ones too, with their error). ``measure(config,
    seconds)`` measures one config in at most ``seconds``; ``min_point_s`` is about 3 load steps.
    The best is ``best_point(points)``."""
    grid = GRID if grid is None else grid
    deadline = clock() + budget_s
    per_point = max(min_point_s, budget_s / expected_points(grid))
    seen: dict[tuple[tuple[str, Any], ...], Point] = {}
    points: list[Point] = []

    def run(config: dict[str, Any]) -> Point | None:
        """The point for ``config`` (measured now, or remembered); None: out of budget."""
        if (k := _key(config)) in seen:
            return seen[k]
        remaining = deadline - clock()
        if remaining < min_point_s:
            return None
        p = measure(dict(config), min(remaining, per_point))
        seen[k] = p
        points.append(p)
        if on_point is not None:
            on_point(p)
        return p

    best_cfg = {**DEFAULT_BASE, **(base or {})}
    best = run(best_cfg)
    if best is None:
        return points
    for _ in range(PASSES):
        changed = False
        for knob, values in grid.items():
            for value in values:
                cand = {**best_cfg, knob: value}
                if value == best_cfg.get(knob) or not valid(cand):
                    continue
                p = run(cand)
                if p is None:
                    return points
                if _better(p, best, tie_tolerance):
                    best_cfg, best, changed = cand, p, True
        if not changed:
            break
    return points


def best_point(points: list[Point], tie_tolerance: float = 0.02) -> Point | None:
    """The point the search settles on: the best measured, by the same rule (None if all failed)."""
    best: Point | None = None
    for p in points:
        if p.error is None and (best is None or _better(p, best, tie_tolerance)):
            best = p
    return best
