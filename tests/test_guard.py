"""Rollback guards: windows from cumulative counters, the verdict rule, stepwise promotion."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.observe.stats import LATENCY_BUCKETS
from gateway.pipeline.guard import (
    GuardConfig,
    Rollout,
    Sample,
    Verdict,
    Window,
    WindowTracker,
    _binom_sf,
    _fisher_sf,
    judge,
)

NB = len(LATENCY_BUCKETS) + 1  # + the +Inf bucket
OK, INSUFFICIENT = Verdict("ok"), Verdict("insufficient")


def hist(**at: int) -> tuple[int, ...]:
    """Per-bucket counts: hist(b5=10, inf=2) puts 10 in bucket 5 and 2 in +Inf."""
    out = [0] * NB
    for k, n in at.items():
        out[NB - 1 if k == "inf" else int(k[1:])] += n
    return tuple(out)


def win(requests: int, errors: int = 0, buckets: tuple[int, ...] | None = None) -> Window:
    """A window whose successes all sit in bucket 5 (<= 2.5 ms) unless told otherwise."""
    return Window(requests, errors, hist(b5=requests - errors) if buckets is None else buckets)


# ---- windows --------------------------------------------------------------------------------------

def test_window_is_newest_minus_oldest_inside() -> None:
    t = WindowTracker(10.0)
    t.push("1", 0.0, Sample(100, 1, hist(b3=99)))
    t.push("1", 5.0, Sample(150, 2, hist(b3=140, b4=8)))
    t.push("1", 10.0, Sample(300, 5, hist(b3=280, b4=15)))
    assert t.window("1", 10.0) == Window(200, 4, hist(b3=181, b4=15))  # t=0 is still inside (>=)
    t.push("1", 15.0, Sample(400, 5, hist(b3=370, b4=25)))
    assert t.window("1", 15.0) == Window(250, 3, hist(b3=230, b4=17))  # t=0 fell out: base t=5
    assert t.window("1", 20.0) == Window(100, 0, hist(b3=90, b4=10))  # t=5 fell out: base t=10
    assert t.window("1", 25.0) == Window(0, 0, ())  # one sample left: nothing to difference
    assert t.window("1", 26.0).requests == 0 and t.window("2", 26.0) == Window(0, 0, ())


def test_counter_reset_starts_the_window_over() -> None:
    t = WindowTracker(60.0)
    t.push("2", 0.0, Sample(1000, 10, hist(b2=990)))
    t.push("2", 1.0, Sample(1100, 12, hist(b2=1088)))
    t.push("2", 2.0, Sample(40, 1, hist(b2=39)))  # reloaded: counts from zero again
    assert t.window("2", 2.0) == Window(0, 0, ())  # never negative, the reset sample is the new base
    t.push("2", 3.0, Sample(90, 1, hist(b2=89)))
    assert t.window("2", 3.0) == Window(50, 0, hist(b2=50))


def test_a_decrease_in_any_counter_is_a_reset() -> None:
    t = WindowTracker(60.0)
    t.push("1", 0.0, Sample(100, 5, hist(b2=95)))
    t.push("1", 1.0, Sample(200, 4, hist(b2=196)))  # errors went down
    t.push("1", 2.0, Sample(300, 4, hist(b2=296)))
    assert t.window("1", 2.0) == Window(100, 0, hist(b2=100))
    t.push("1", 3.0, Sample(400, 4, hist(b2=300, b3=96)))
    t.push("1", 4.0, Sample(500, 4, hist(b2=299, b3=197)))  # one bucket went down
    assert t.window("1", 4.0) == Window(0, 0, ())


def test_forget_and_independent_arms() -> None:
    t = WindowTracker(60.0)
    for arm in ("1", "2"):
        t.push(arm, 0.0, Sample(0, 0, ()))
        t.push(arm, 1.0, Sample(10, 1, ()))
    t.forget("1")
    t.forget("nope")
    assert t.window("1", 1.0) == Window(0, 0, ()) and t.window("2", 1.0) == Window(10, 1, ())


def test_bucket_count_is_checked() -> None:
    with pytest.raises(ValueError, match="buckets"):
        Sample(1, 0, (1,) * len(LATENCY_BUCKETS))  # the +Inf bucket is missing
    with pytest.raises(ValueError):
        WindowTracker(0.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 5.0), st.integers(0, 50), st.integers(0, 5), st.booleans()),
                min_size=1, max_size=40), st.floats(1.0, 30.0))
def test_windows_match_a_reference_and_are_never_negative(steps, window_s) -> None:
    """Random ticks with random resets, against a brute-force reading of the rule."""
    t = WindowTracker(window_s)
    now, req, err = 0.0, 0, 0
    pushed: list[tuple[float, int, int, bool]] = []  # time, requests, errors, was a reset
    for dt, dreq, derr, reset in steps:
        now += dt
        if reset:
            req, err = 0, 0
        req, err = req + dreq, err + min(derr, dreq)
        was_reset = bool(pushed) and (req < pushed[-1][1] or err < pushed[-1][2]
                                      or req - err < pushed[-1][1] - pushed[-1][2])  # the timed bucket
        pushed.append((now, req, err, was_reset))
        t.push("1", now, Sample(req, err, hist(b0=req - err)))
        w = t.window("1", now)
        start = max(i for i, p in enumerate(pushed) if i == 0 or p[3])
        inside = [p for p in pushed[start:] if p[0] >= now - window_s]
        expect = (inside[-1][1] - inside[0][1], inside[-1][2] - inside[0][2]) if len(inside) >= 2 else (0, 0)
        assert (w.requests, w.errors) == expect
        assert w.requests >= 0 and w.errors >= 0 and all(b >= 0 for b in w.buckets)


# ---- p99 from buckets ---------------------------------------------------------------------------

def test_p99_is_the_upper_edge_of_its_bucket() -> None:
    assert Window(100, 0, hist(b3=100)).p99_s() == LATENCY_BUCKETS[3]
    assert Window(100, 0, hist(b0=99, b7=1)).p99_s() == LATENCY_BUCKETS[0]  # rank 99 of 100 in bucket 0
    assert Window(100, 0, hist(b0=98, b7=2)).p99_s() == LATENCY_BUCKETS[7]
    assert Window(1, 0, hist(b9=1)).p99_s() == LATENCY_BUCKETS[9]
    assert Window(5, 0, hist(b15=5)).p99_s() == 10.0  # the last finite edge
    assert Window(5, 0, hist(inf=5)).p99_s() == math.inf  # slower than every edge
    assert Window(0, 0, hist()).p99_s() is None and Window(3, 3, ()).p99_s() is None


def test_error_rate() -> None:
    assert Window(200, 3, ()).error_rate() == 0.015 and Window(0, 0, ()).error_rate() == 0.0


# ---- the verdict ----------------------------------------------------------------------------------

CFG = GuardConfig()


def test_insufficient_below_min_requests_even_at_every_request_failing() -> None:
    v = judge(CFG, win(199, 199), win(10_000, 0))
    assert v.state == "insufficient" and "199" in v.reasons[0] and "200" in v.reasons[0]


def test_error_breach_with_reasons() -> None:
    v = judge(CFG, win(1000, 100), win(10_000, 10))
    assert v.state == "breach"
    (reason,) = v.reasons
    assert "10.00% (100/1000)" in reason and "above 1.00%" in reason and "stable 0.10% (10/10000" in reason


def test_without_a_comparable_stable_arm_the_bound_alone_decides() -> None:
    for stable in (None, win(150, 0)):
        v = judge(CFG, win(1000, 100), stable)
        assert v.state == "breach" and "too few to compare" in v.reasons[0]


def test_a_bound_never_trips_on_a_handful() -> None:
    """The module docstring's figure: 200 requests against a 1 % bound take 11 errors."""
    assert judge(CFG, win(200, 3), None) == OK  # 1.5 % observed, well within noise
    assert judge(CFG, win(200, 10), None) == OK
    assert judge(CFG, win(200, 11), None).state == "breach"
    # With a stable p99 to compare with, 189 timed requests are too few for the ratio check.
    assert judge(CFG, win(200, 10), win(10_000)).state == "insufficient"


def test_no_blame_for_a_shared_incident() -> None:
    assert judge(CFG, win(1000, 50), win(19_000, 950)) == OK  # both 5 %
    assert judge(CFG, win(1000, 60), win(19_000, 950)) == OK  # 6 % vs 5 %: noise
    assert judge(CFG, win(1000, 200), win(19_000, 950)).state == "breach"  # 20 % vs 5 %: the canary's


def test_p99_ratio_breach() -> None:
    stable = win(10_000, 0, hist(b5=10_000))  # p99 <= 2.5 ms
    slow = win(1000, 0, hist(b5=950, b9=50))  # 5 % at (25, 50] ms: p99 <= 50 ms
    v = judge(CFG, slow, stable)
    assert v.state == "breach"
    assert "2x stable's p99 <= 2.5 ms" in v.reasons[0] and "p99 <= 50 ms" in v.reasons[0]
    # One bucket slower is not evidence of 2x (edges are 2-2.5x apart): no breach.
    assert judge(CFG, win(1000, 0, hist(b6=1000)), stable) == OK
    assert judge(GuardConfig(max_p99_ratio=0.0), slow, stable) == OK
    assert judge(CFG, slow, None) == OK  # no stable p99 to compare with


def test_p99_bound_breach_and_shared_slowness() -> None:
    cfg = GuardConfig(max_p99_ms=100.0, max_p99_ratio=0.0)
    slow = win(1000, 0, hist(b5=950, b12=50))  # 5 % in (250, 500] ms
    fast_stable = win(10_000, 0, hist(b5=10_000))
    v = judge(cfg, slow, fast_stable)
    assert v.state == "breach" and "p99 above 100 ms" in v.reasons[0] and "5.00% (50/1000)" in v.reasons[0]
    assert judge(cfg, slow, None).state == "breach"
    assert judge(cfg, slow, win(10_000, 0, hist(b5=9500, b12=500))) == OK  # stable as slow: shared
    # A bound between edges acts as the next edge up: 300 ms is judged at 500 ms.
    assert judge(GuardConfig(max_p99_ms=300.0, max_p99_ratio=0.0), slow, fast_stable) == OK


def test_p99_needs_timed_requests() -> None:
    cfg = GuardConfig(max_error_rate=0.0, max_p99_ms=100.0)
    v = judge(cfg, win(1000, 1000), win(10_000, 0))  # all failed: nothing timed
    assert v.state == "insufficient" and "0 timed requests" in v.reasons[0]
    assert judge(GuardConfig(), win(1000, 1000), win(10_000, 0)).state == "breach"  # the errors decide


def test_disagreement() -> None:
    cfg = GuardConfig(max_disagreement=0.01)
    v = judge(cfg, win(1000), win(10_000), disagreement=(1000, 100))
    assert v.state == "breach" and "shadow disagreement: 10.00% (100/1000)" in v.reasons[0]
    assert judge(cfg, win(1000), win(10_000), disagreement=(1000, 5)) == OK
    v = judge(cfg, win(1000), win(10_000), disagreement=(100, 100))
    assert v.state == "insufficient" and "shadow compared 100" in v.reasons[0]
    assert judge(GuardConfig(), win(1000), win(10_000), disagreement=(1000, 1000)) == OK  # off


def test_every_breach_is_reported() -> None:
    cfg = GuardConfig(max_p99_ms=100.0, max_disagreement=0.01)
    v = judge(cfg, win(1000, 100, hist(b5=850, b12=50)), win(10_000, 0), disagreement=(1000, 100))
    assert v.state == "breach" and len(v.reasons) == 4  # errors, p99 bound, p99 ratio, disagreement


def test_config_is_checked() -> None:
    for bad in ({"max_p99_ratio": 0.5}, {"alpha": 0.0}, {"min_requests": 0}, {"max_error_rate": 1.0},
                {"window_s": 0.0}):
        with pytest.raises(ValueError):
            GuardConfig(**bad)  # type: ignore[arg-type]


windows = st.builds(
    lambda ok, err, bs: Window(ok + err, err, tuple(bs)),
    st.integers(0, 5000), st.integers(0, 5000), st.lists(st.integers(0, 3000), min_size=NB, max_size=NB),
)
configs = st.builds(
    GuardConfig, min_requests=st.integers(1, 500), max_error_rate=st.sampled_from([0.0, 1e-4, 0.01, 0.2]),
    max_p99_ms=st.sampled_from([0.0, 0.1, 1.0, 30.0, 250.0, 12_000.0]),
    max_p99_ratio=st.sampled_from([0.0, 1.0, 1.5, 2.0, 5.0]), alpha=st.sampled_from([1e-5, 1e-3, 0.05, 0.49]),
)


@settings(max_examples=400, deadline=None)
@given(configs, windows)
def test_identical_arms_never_breach(cfg, w) -> None:
    assert judge(cfg, w, w).state != "breach"


# ---- the exact tests against brute force ------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60), st.data(), st.sampled_from([0.01, 0.1, 0.3, 0.5, 0.9]))
def test_binomial_tail_is_exact(n, data, p) -> None:
    k = data.draw(st.integers(0, n))
    fp = Fraction(p)
    exact = float(sum(math.comb(n, j) * fp**j * (1 - fp) ** (n - j) for j in range(k, n + 1)))
    got = _binom_sf(k, n, p, alpha=1.0)
    assert got == 1.0 if k <= n * p else got == pytest.approx(exact, rel=1e-9, abs=1e-300)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.data())
def test_fisher_tail_is_exact(n1, n2, data) -> None:
    k1, k2 = data.draw(st.integers(0, n1)), data.draw(st.integers(0, n2))
    n, k = n1 + n2, k1 + k2
    ways = sum(math.comb(k, j) * math.comb(n - k, n1 - j) for j in range(k1, min(k, n1) + 1))
    exact = ways / math.comb(n, n1)
    got = _fisher_sf(k1, n1, k2, n2, alpha=1.0)
    assert got == 1.0 if k1 * n <= k * n1 else got == pytest.approx(exact, rel=1e-9)


def test_tails_stop_early_once_not_significant() -> None:
    assert 1e-3 <= _binom_sf(120, 10_000, 0.01, 1e-3) < 0.5  # just above the mean: cut short
    assert _binom_sf(10_000, 10_000, 0.01, 1e-3) == 0.0  # underflows to 0, still "significant"


# ---- stepwise promotion ---------------------------------------------------------------------------

def test_rollout_steps_only_on_ok_after_the_interval() -> None:
    r = Rollout([5, 25, 50, 100], step_interval_s=60.0, start=0.0)
    assert r.weight() == 5 and not r.done
    assert r.advance(30.0, OK) is None  # too soon
    assert r.advance(61.0, INSUFFICIENT) is None  # no verdict: hold
    assert r.advance(62.0, Verdict("breach", ("x",))) is None
    assert r.advance(63.0, OK) == 25 and r.weight() == 25
    assert r.advance(100.0, OK) is None  # the interval counts from the last step
    assert r.advance(123.0, OK) == 50
    assert r.advance(183.0, OK) == 100 and r.done
    assert r.advance(10_000.0, OK) is None and r.weight() == 100


def test_rollout_steps_are_checked() -> None:
    for bad in ([], [5, 50], [50, 25, 100], [0, 100], [5, 5, 100], [5, 150]):
        with pytest.raises(ValueError):
            Rollout(bad, 1.0, 0.0)
    assert Rollout([100], 1.0, 0.0).done


# ---- per-second judging, simulated (the module docstring's "Repeated looks") ----------------------

def simulate(cfg: GuardConfig, seconds: int, canary: tuple[float, float], stable: tuple[float, float],
             seed: int) -> list[int]:
    """Poisson traffic (requests/s, error rate) per arm, judged every second; the ticks at which a
    breach begins."""
    rng = np.random.default_rng(seed)
    tracker = WindowTracker(cfg.window_s)
    cum = {}
    for arm, (rate, p) in (("c", canary), ("s", stable)):
        n = rng.poisson(rate, seconds)
        cum[arm] = (np.cumsum(n).tolist(), np.cumsum(rng.binomial(n, p)).tolist())
    starts, before = [], False
    for t in range(seconds):
        for arm, (req, err) in cum.items():
            tracker.push(arm, t, Sample(req[t], err[t], hist(b5=req[t] - err[t])))
        now = judge(cfg, tracker.window("c", t), tracker.window("s", t)).state == "breach"
        if now and not before:
            starts.append(t)
        before = now
    return starts


def test_per_second_judging_of_a_shared_incident_rarely_blames_the_canary() -> None:
    hours = 20 * 3600
    assert len(simulate(GuardConfig(), hours, (50, 0.02), (50, 0.02), seed=1)) <= 1
    # What a per-look alpha of 1e-3 would do on the same traffic: a false rollback every few hours.
    assert len(simulate(GuardConfig(alpha=1e-3), hours, (50, 0.02), (50, 0.02), seed=1)) >= 5


def test_per_second_judging_catches_a_bad_canary_quickly() -> None:
    starts = simulate(GuardConfig(), 600, (5, 0.5), (95, 0.005), seed=2)
    assert starts and starts[0] <= 60  # as soon as ~200 requests are in the window (40 s)
    starts = simulate(GuardConfig(), 1200, (5, 0.03), (95, 0.005), seed=3)
    assert starts and starts[0] <= 900  # a marginal one: minutes
