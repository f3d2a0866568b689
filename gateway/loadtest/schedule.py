"""Arrival schedules: when each request of an open-loop run is *meant* to leave.

Every schedule is a piecewise-linear rate profile r(t) (constant, ramp and steps are special cases).
Its cumulative intensity L(t) = integral of r counts the requests due by time t, so the i-th
deterministic arrival is at L^-1(i) and Poisson arrivals are L^-1 of a unit-rate Poisson process
(a time-changed Poisson process has exactly the intensity r(t)). The inversion is closed form per
segment, vectorised with numpy, so a run of millions of requests is planned in milliseconds and the
send loop does nothing but compare the clock with a precomputed array.

Splitting across generator processes keeps the total process intact: process k of P takes the
deterministic arrivals k, k+P, k+2P, ... ; for Poisson each process draws its own Poisson process of
rate r(t)/P (the superposition of independent Poisson processes is Poisson with the summed rate).

Times are seconds from the run's start, sorted ascending; every schedule is bounded by its duration
and by an optional request count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Segment", "RateProfile", "constant", "ramp", "steps", "parse_steps", "arrival_times"]


@dataclass(frozen=True, slots=True)
class Segment:
    """``duration`` seconds during which the rate moves linearly from ``start_rps`` to ``end_rps``."""

    duration: float
    start_rps: float
    end_rps: float

    def __post_init__(self) -> None:
        if self.duration <= 0 or self.start_rps < 0 or self.end_rps < 0:
            raise ValueError(f"invalid segment {self}")

    @property
    def requests(self) -> float:
        return self.duration * (self.start_rps + self.end_rps) / 2


@dataclass(frozen=True, slots=True)
class RateProfile:
    """A sequence of segments; the offered load as a function of time."""

    segments: tuple[Segment, ...]

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.segments)

    @property
    def expected_requests(self) -> float:
        return sum(s.requests for s in self.segments)

    def rate_at(self, t: float) -> float:
        """The intended rate at time ``t`` (0 outside the profile)."""
        t0 = 0.0
        for s in self.segments:
            if t < t0 + s.duration:
                return s.start_rps + (s.end_rps - s.start_rps) * (t - t0) / s.duration if t >= t0 else 0.0
            t0 += s.duration
        return 0.0

    def expected_between(self, a: float, b: float) -> float:
        """Requests the profile intends in ``[a, b)``: L(b) - L(a)."""
        return self._cumulative(b) - self._cumulative(a)

    def _cumulative(self, t: float) -> float:
        total, t0 = 0.0, 0.0
        for s in self.segments:
            if t <= t0:
                break
            tau = min(t - t0, s.duration)
            total += s.start_rps * tau + (s.end_rps - s.start_rps) * tau * tau / (2 * s.duration)
            t0 += s.duration
        return total

    def scaled(self, factor: float) -> RateProfile:
        return RateProfile(tuple(Segment(s.duration, s.start_rps * factor, s.end_rps * factor)
                                 for s in self.segments))

    def describe(self) -> str:
        return ", ".join(f"{s.start_rps:g}" + (f"->{s.end_rps:g}" if s.end_rps != s.start_rps else "")
                         + f" rps for {s.duration:g}s" for s in self.segments)


def constant(rps: float, duration: float) -> RateProfile:
    return RateProfile((Segment(duration, rps, rps),))


def ramp(start_rps: float, end_rps: float, duration: float) -> RateProfile:
    return RateProfile((Segment(duration, start_rps, end_rps),))


def steps(levels: Sequence[tuple[float, float]]) -> RateProfile:
    """``levels`` is ``[(rps, seconds), ...]``: a staircase."""
    return RateProfile(tuple(Segment(d, r, r) for r, d in levels))


def parse_steps(text: str) -> RateProfile:
    """Parse ``"1000:5,2000:5"`` (rate:seconds pairs)."""
    levels = []
    for part in text.split(","):
        rate, _, secs = part.strip().partition(":")
        if not secs:
            raise ValueError(f"step {part!r} is not RATE:SECONDS")
        levels.append((float(rate), float(secs)))
    return steps(levels)


def _invert(profile: RateProfile, u: np.ndarray) -> np.ndarray:
    """Times t with L(t) = u, for sorted ``u`` within [0, L(end)); vectorised closed form per segment."""
    bounds_t = np.cumsum([0.0] + [s.duration for s in profile.segments])
    bounds_l = np.cumsum([0.0] + [s.requests for s in profile.segments])
    seg = np.clip(np.searchsorted(bounds_l, u, side="right") - 1, 0, len(profile.segments) - 1)
    r0 = np.array([s.start_rps for s in profile.segments])[seg]
    r1 = np.array([s.end_rps for s in profile.segments])[seg]
    d = np.array([s.duration for s in profile.segments])[seg]
    x = u - bounds_l[seg]
    a = (r1 - r0) / (2 * d)
    # Solve a*tau^2 + r0*tau = x in the form that stays exact when a == 0 and when r0 == 0.
    disc = np.sqrt(np.maximum(r0 * r0 + 4 * a * x, 0.0))
    denom = r0 + disc
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = np.where(denom > 0, 2 * x / denom, 0.0)
    return bounds_t[seg] + np.minimum(tau, d)


def arrival_times(profile: RateProfile, *, poisson: bool = False, proc: int = 0, procs: int = 1,
                  max_requests: int | None = None, seed: int = 0) -> np.ndarray:
    """Intended send times (seconds from start) for generator ``proc`` of ``procs``.

    ``max_requests`` bounds the whole run (all processes together); each process keeps its share.
    """
    if not 0 <= proc < procs:
        raise ValueError("proc out of range")
    total = profile.expected_requests
    if poisson:
        rng = np.random.default_rng([seed, proc])
        mean = total / procs
        n = int(mean + 8 * math.sqrt(mean) + 16)  # enough unit-rate arrivals to cover L(end)/P
        u = np.cumsum(rng.exponential(float(procs), size=n))
        u = u[u < total]
    else:
        u = np.arange(proc, math.ceil(total - 1e-9), procs, dtype=np.float64)
    if max_requests is not None:
        share = max_requests // procs + (1 if proc < max_requests % procs else 0)
        u = u[:share]
    return _invert(profile, u) if len(u) else np.empty(0)
