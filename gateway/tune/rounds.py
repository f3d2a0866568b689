"""Measure the search's picks again in interleaved rounds, so that candidates are ranked alike.

Why: the search measures each candidate's configurations once, minutes apart, and on a shared host
the drift between those minutes is larger than the difference between variants (the same run gave
fp32 >= 5.5k and >= 16.8k req/s on two days: bench/README.md). Here each candidate's chosen
configuration is measured again in rounds; every round measures every candidate once, in an order
that reverses each round (A B C, C B A, A B C), so a slow minute falls on all of them alike, and a
candidate's figure is the median of its rounds, with their range. Each measurement starts its ramp
just below the knee the search found (``measure_point(hint_rps=...)``), so it reaches a failing rate
and is a knee rather than a lower bound.

Two candidates whose ranges overlap are not told apart by the run (``overlaps``); the
recommendation then prefers the one with fewer cores, then the more accurate (``report.recommend``).

Budget: ``plan`` says how many rounds fit in a share of what is left; a round that the deadline
would cut is not started, so every candidate has the same number of rounds.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.tune.measure import Point

__all__ = ["Candidate", "plan", "run_rounds", "overlaps"]


@dataclass
class Candidate:
    """One candidate to confirm: a label, its configuration and the search's knee for it."""

    label: str
    config: dict[str, Any]
    hint_rps: float
    hint_is_lower_bound: bool = False
    points: list[Point] = field(default_factory=list)

    def _good(self) -> list[Point]:
        return [p for p in self.points if p.error is None and p.throughput_rps > 0]

    @property
    def throughputs(self) -> list[float]:
        return [p.throughput_rps for p in self._good()]

    def median(self) -> tuple[float, float] | None:
        """(median throughput, median p99) over the rounds that met the SLO; None if none did."""
        good = self._good()
        if not good:
            return None
        return statistics.median(p.throughput_rps for p in good), statistics.median(p.p99_ms for p in good)

    def spread(self) -> tuple[float, float] | None:
        """(least, most) throughput over the rounds; most is infinite where a round's knee is only a
        lower bound (its budget cut it short, or the generator fell behind): the run does not
        know how far above it the knee lies."""
        good = self._good()
        if not good:
            return None
        return (min(p.throughput_rps for p in good),
                max(math.inf if p.lower_bound else p.throughput_rps for p in good))

    def all_bounded(self) -> bool:
        """Every round's knee was cut short by its budget."""
        good = self._good()
        return bool(good) and all(p.bounded for p in good)

    def generator_bound(self) -> bool:
        """The generator fell behind in most rounds: the figure is what it could drive."""
        good = self._good()
        return bool(good) and 2 * sum(p.generator_bound for p in good) > len(good)


def plan(candidates: int, left_s: float, round_point_s: float, want: int, share: float = 0.5) -> int:
    """How many rounds of ``candidates`` points of ``round_point_s`` fit in ``share`` of ``left_s``:
    at most ``want``; 0 when there is nothing to tell apart or not one round fits."""
    if candidates < 1 or want < 1 or round_point_s <= 0:
        return 0
    return max(0, min(want, int(share * left_s // (candidates * round_point_s))))


def run_rounds(candidates: Sequence[Candidate], measure: Callable[[Candidate, float], Point], *, rounds: int,
               point_s: float, deadline: float, clock: Callable[[], float] = time.monotonic,
               on_point: Callable[[int, Candidate, Point], None] | None = None) -> int:
    """Measure every candidate ``rounds`` times, interleaved; each point gets ``point_s``. Returns the
    rounds completed (a round that would not fit before ``deadline`` is not started)."""
    done = 0
    for r in range(rounds):
        if deadline - clock() < len(candidates) * point_s:
            break
        order = list(candidates) if r % 2 == 0 else list(candidates)[::-1]
        for c in order:
            p = measure(c, point_s)
            c.points.append(p)
            if on_point is not None:
                on_point(r + 1, c, p)
        done += 1
    return done


def overlaps(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    """The two ranges share a value: this run does not tell their candidates apart."""
    return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]
