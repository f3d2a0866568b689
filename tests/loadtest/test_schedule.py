"""Arrival schedules and the send loop's timing logic, on an injectable clock (no real time)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.loadtest import schedule
from gateway.loadtest.runner import Clock, drive_schedule, due_until


def test_constant_rate_is_evenly_spaced():
    t = schedule.arrival_times(schedule.constant(1000, 5))
    assert len(t) == 5000
    np.testing.assert_allclose(np.diff(t), 0.001)
    assert t[0] == 0 and t[-1] < 5


def test_ramp_follows_the_integral_of_the_rate():
    p = schedule.ramp(1000, 20000, 60)
    t = schedule.arrival_times(p)
    assert len(t) == pytest.approx(p.expected_requests, abs=1)
    # L(30) = 1000*30 + 19000 * 30^2 / 120
    assert np.count_nonzero(t < 30) == pytest.approx(172_500, abs=1)
    assert p.rate_at(30) == pytest.approx(10_500)


def test_steps_change_rate_at_the_boundaries():
    t = schedule.arrival_times(schedule.parse_steps("100:1,400:1"))
    assert np.count_nonzero(t < 1) == 100 and np.count_nonzero(t >= 1) == 400
    np.testing.assert_allclose(np.diff(t[t >= 1]), 0.0025)


def test_ramp_from_zero_and_flat_segments_are_exact():
    t = schedule.arrival_times(schedule.ramp(0, 100, 1))
    assert len(t) == 50
    # L(t) = 50 t^2  ->  arrival i at sqrt(i / 50)
    np.testing.assert_allclose(t, np.sqrt(np.arange(50) / 50))


def test_processes_split_the_schedule_exactly():
    p = schedule.ramp(500, 3000, 4)
    full = schedule.arrival_times(p)
    parts = [schedule.arrival_times(p, proc=k, procs=3) for k in range(3)]
    np.testing.assert_allclose(np.sort(np.concatenate(parts)), full)


def test_max_requests_bounds_the_whole_run():
    p = schedule.constant(1000, 10)
    parts = [schedule.arrival_times(p, proc=k, procs=3, max_requests=1000) for k in range(3)]
    assert sum(len(x) for x in parts) == 1000


def test_poisson_has_the_intended_rate_and_exponential_gaps():
    t = schedule.arrival_times(schedule.constant(2000, 20), poisson=True, seed=3)
    assert len(t) == pytest.approx(40_000, rel=0.03)
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(1 / 2000, rel=0.03)
    assert gaps.std() == pytest.approx(1 / 2000, rel=0.05)  # exponential: std == mean
    two = [schedule.arrival_times(schedule.constant(2000, 20), poisson=True, seed=3, proc=k, procs=2) for k in (0, 1)]
    assert sum(len(x) for x in two) == pytest.approx(40_000, rel=0.03)


def test_poisson_ramp_tracks_the_rate_profile():
    t = schedule.arrival_times(schedule.ramp(1000, 5000, 10), poisson=True, seed=1)
    first, last = np.count_nonzero(t < 1), np.count_nonzero(t >= 9)
    assert first == pytest.approx(1200, rel=0.12) and last == pytest.approx(4800, rel=0.08)


def test_due_until_respects_burst_cap():
    times = np.arange(1000) * 0.001
    assert due_until(times, 0, 0.0105) == 11
    assert due_until(times, 0, 10.0, burst=64) == 64
    assert due_until(times, 990, 10.0) == 1000


class FakeClock:
    """Virtual time: sleep advances it (plus a fixed oversleep, like a coarse timer)."""

    def __init__(self, oversleep: float = 0.0) -> None:
        self.t = 100.0
        self.oversleep = oversleep
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, d: float) -> None:
        self.sleeps.append(d)
        self.t += d + (self.oversleep if d > 0 else 0.0)


def test_drive_schedule_never_sends_early_and_catches_up_after_oversleep():
    clock = FakeClock(oversleep=0.0007)
    times = 100.0 + np.arange(200) * 0.0002  # 5000 req/s: faster than the 1 ms tick
    sent: list[tuple[int, float]] = []
    asyncio.run(drive_schedule(times, lambda i: sent.append((i, clock.now())), Clock(clock.now, clock.sleep)))
    assert [i for i, _ in sent] == list(range(200))
    lateness = np.array([t for _, t in sent]) - times
    assert lateness.min() >= 0  # never before the intended time
    assert lateness.max() <= 0.001 + 0.0007 + 1e-9  # at most one minimum sleep plus the oversleep
    assert min(s for s in clock.sleeps if s > 0) >= 0.001  # never sleeps below a timer tick (no spinning)


def test_drive_schedule_yields_during_a_backlog():
    clock = FakeClock()
    clock.t = 200.0  # far behind: everything is due at once
    times = 100.0 + np.arange(2000) * 0.001
    n = []
    asyncio.run(drive_schedule(times, n.append, Clock(clock.now, clock.sleep)))
    assert len(n) == 2000
    assert clock.sleeps.count(0.0) >= 2000 // 512  # yielded between bursts so responses can be read
