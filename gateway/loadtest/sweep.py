"""Find the knee (the highest offered rate that still meets the SLO) and size a deployment from it.

The search steps the offered rate up geometrically until a step breaks the SLO (p99 above the
bound, errors above the budget, or the server answering clearly less than it was offered), then
bisects between the last passing and the first failing rate. Each step is a fresh open-loop run, so
every step is measured free of the previous step's backlog (``cooldown`` lets the server drain).

The search logic takes the measurement as a function (``measure(rate) -> summary``), so it is tested
against synthetic servers without sockets; the CLI passes a real run.

Capacity model: a replica is planned at ``headroom`` of its knee (0.7 leaves 30% for bursts, failover
and noisy neighbours), so ``replicas = ceil(target / (knee * headroom))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Slo", "Step", "SweepResult", "judge", "find_knee", "replicas_needed", "capacity_plan"]


@dataclass(frozen=True, slots=True)
class Slo:
    p99_ms: float
    error_budget: float = 0.001  # fraction of requests allowed to fail
    min_delivery: float = 0.95  # achieved/intended below this fails the step (server fell behind)
    percentile: str = "p99"  # which latency_ms key the bound applies to


@dataclass(slots=True)
class Step:
    rate: float
    passed: bool
    reasons: list[str]
    summary: dict[str, Any] = field(repr=False)
    phase: str = "ramp"  # "ramp" or "refine"
    attempts: int = 1


@dataclass(slots=True)
class SweepResult:
    slo: Slo
    steps: list[Step]
    knee_rps: float  # highest passing offered rate (0 if even the first step failed)
    knee_achieved_rps: float
    bracket: tuple[float, float | None]  # (last pass, first fail); fail None = never broke
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"slo": asdict(self.slo), "knee_rps": self.knee_rps, "knee_achieved_rps": self.knee_achieved_rps,
                "bracket": list(self.bracket), "warnings": self.warnings,
                "steps": [{"rate": s.rate, "passed": s.passed, "reasons": s.reasons, "phase": s.phase,
                           "attempts": s.attempts,
                           "summary": s.summary} for s in self.steps]}


def judge(rate: float, summary: dict[str, Any], slo: Slo) -> Step:
    """Does one step meet the SLO? Reasons name every bound it broke."""
    reasons = []
    lat = summary["latency_ms"].get(slo.percentile, math.inf)
    if summary["latency_ms"].get("count", 0) == 0:
        reasons.append("no successful responses")
    elif lat > slo.p99_ms:
        reasons.append(f"{slo.percentile} {lat:.1f} ms > {slo.p99_ms:g} ms")
    if summary["error_rate"] > slo.error_budget:
        reasons.append(f"error rate {summary['error_rate']:.2%} > {slo.error_budget:.2%}")
    intended = summary.get("intended_rps") or rate
    if intended and summary["achieved_rps"] < slo.min_delivery * intended:
        reasons.append(f"achieved {summary['achieved_rps']:.0f}/s < {slo.min_delivery:.0%} of {intended:.0f}/s")
    return Step(rate, not reasons, reasons, summary)


def find_knee(measure: Callable[[float], dict[str, Any]], slo: Slo, *, start_rps: float, max_rps: float,
              factor: float = 1.5, refine: int = 3, retries: int = 0,
              on_step: Callable[[Step], None] | None = None) -> SweepResult:
    """Ramp, then bisect. ``retries`` re-measures a failing step (a host shared with other load can
    stall a run for reasons that are not the server's); the step passes if any attempt passes, and
    ``attempts`` records how many it took."""
    if start_rps <= 0 or factor <= 1 or max_rps < start_rps:
        raise ValueError("need 0 < start_rps <= max_rps and factor > 1")
    steps: list[Step] = []

    def run(rate: float, phase: str) -> Step:
        for attempt in range(1 + max(0, retries)):
            step = judge(rate, measure(rate), slo)
            step.attempts = attempt + 1
            if step.passed:
                break
        step.phase = phase
        steps.append(step)
        if on_step:
            on_step(step)
        return step

    last_pass: Step | None = None
    first_fail: Step | None = None
    rate = start_rps
    while True:
        step = run(rate, "ramp")
        if not step.passed:
            first_fail = step
            break
        last_pass = step
        if rate >= max_rps:
            break
        rate = min(rate * factor, max_rps)
    if last_pass is not None and first_fail is not None:
        lo, hi = last_pass, first_fail
        for _ in range(refine):
            step = run((lo.rate + hi.rate) / 2, "refine")
            if step.passed:
                lo = step
            else:
                hi = step
        last_pass, first_fail = lo, hi
    warnings = []
    if first_fail is None:
        warnings.append(f"never broke the SLO up to {max_rps:g} req/s: the knee is above that")
    if last_pass is None:
        warnings.append(f"the first step ({start_rps:g} req/s) already broke the SLO; lower --start-rps")
    late = [s.rate for s in steps if s.summary.get("late_fraction", 0) > 0.05]
    if late:
        warnings.append("more than 5% of sends were late at " + ", ".join(f"{r:.0f}" for r in late)
                        + " req/s: the generator (or its connection bound) may be limiting; add --procs")
    return SweepResult(slo, steps, last_pass.rate if last_pass else 0.0,
                       last_pass.summary["achieved_rps"] if last_pass else 0.0,
                       (last_pass.rate if last_pass else 0.0, first_fail.rate if first_fail else None), warnings)


def replicas_needed(target_rps: float, knee_rps: float, headroom: float = 0.7) -> int:
    if not 0 < headroom <= 1:
        raise ValueError("headroom must be in (0, 1]")
    if knee_rps <= 0:
        raise ValueError("knee must be positive")
    return max(1, math.ceil(target_rps / (knee_rps * headroom) - 1e-9))


def capacity_plan(target_rps: float, knee_rps: float, headroom: float = 0.7) -> dict[str, float]:
    n = replicas_needed(target_rps, knee_rps, headroom)
    return {"target_rps": target_rps, "knee_rps_per_replica": knee_rps, "headroom": headroom,
            "planned_rps_per_replica": knee_rps * headroom, "replicas": n,
            "utilisation_at_target": target_rps / (n * knee_rps)}
