"""Outcome attribution and the always-valid arm comparisons, with fixed seeds and a fake clock."""

from __future__ import annotations

import json
import math
import tracemalloc
import uuid
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from gateway.errors import Code, GatewayError
from gateway.pipeline.outcomes import (
    MAX_ITEMS,
    TARGET_N,
    OutcomeBook,
    OutcomeError,
    confidence_sequence,
    diff_sequence,
    mean_var,
    rho_for,
    summarize,
)

ARMS = ("1", "2")


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def no_keys(key: str) -> str | None:
    return None


def split_by_hash(key: str) -> str | None:
    """A sticky two-way split, the same on every replica."""
    return ARMS[zlib.crc32(key.encode()) % 2]


def rate_items(arm: str, values: Any, metric: str = "conversion") -> list[dict[str, Any]]:
    return [{"arm": arm, "metric": metric, "value": int(v)} for v in values]


# --- the boundary itself ---------------------------------------------------------------------------


def test_rho_makes_the_boundary_narrowest_at_the_target_n() -> None:
    for alpha in (0.01, 0.05, 0.1):
        rho = rho_for(TARGET_N, alpha)
        width = confidence_sequence(TARGET_N, 0.0, 1.0, alpha, rho)[1]
        for f in np.linspace(0.3, 3.0, 28):
            assert confidence_sequence(TARGET_N, 0.0, 1.0, alpha, rho * f)[1] >= width * (1 - 1e-9)
        # ... and the tuned boundary at n is narrowest, among n's, near the target.
        widths = {n: confidence_sequence(n, 0, 1, alpha, rho)[1] * math.sqrt(n) for n in (500, 5000, 50_000)}
        assert widths[5000] < widths[500] and widths[5000] < widths[50_000]


def test_sequence_is_wider_than_a_fixed_n_interval_and_shrinks() -> None:
    prev = math.inf
    for n in (10, 100, 1000, 5000, 20_000, 10**6):
        lo, hi = confidence_sequence(n, 0.5, 0.25, 0.05)
        assert lo == pytest.approx(-(hi - 1.0))  # symmetric around the mean
        half = hi - 0.5
        assert half > 1.96 * math.sqrt(0.25 / n) * 1.4  # the price of peeking, paid everywhere
        assert half < prev
        prev = half
    # At n = 200 (the A/B test's "early" point) it is ~2.6x the fixed-n interval; the docstring says so.
    assert confidence_sequence(200, 0, 1, 0.05)[1] / (1.96 / math.sqrt(200)) == pytest.approx(2.57, abs=0.02)


def test_small_samples_and_zero_spread_give_unbounded_intervals() -> None:
    inf = (-math.inf, math.inf)
    assert confidence_sequence(1, 0.3, 0.0, 0.05) == inf
    assert confidence_sequence(0, math.nan, math.inf, 0.05) == inf
    assert confidence_sequence(50, 1.0, 0.0, 0.05) == inf
    # Equal values whose float sums leave a rounding residue still read as zero variance.
    n = 1000
    assert mean_var((n, 0.1 * n, sum([0.1 * 0.1] * n)))[1] == 0.0
    assert mean_var((1, 3.0, 9.0)) == (3.0, math.inf)
    assert diff_sequence((1, 1.0, 1.0), (500, 50.0, 50.0), 0.05) == inf
    assert diff_sequence((100, 0.0, 0.0), (100, 100.0, 100.0), 0.05) == inf  # both constant
    lo, hi = diff_sequence((100, 0.0, 0.0), (100, 10.0, 10.0), 0.05)  # one constant arm is fine
    assert math.isfinite(lo) and math.isfinite(hi) and lo < -0.1 < hi
    with pytest.raises(ValueError):
        confidence_sequence(10, 0, 1, 1.5)


def test_difference_with_equal_arms_is_the_mean_sequence_on_the_summed_variance() -> None:
    n = 3000
    a = (n, 400.0, 400.0)
    b = (n, 300.0, 300.0)
    (ma, va), (mb, vb) = mean_var(a), mean_var(b)
    assert diff_sequence(a, b, 0.05) == pytest.approx(confidence_sequence(n, ma - mb, va + vb, 0.05))
    # With unequal arms it sits between the two equal-size answers.
    small = diff_sequence((n // 2, 200.0, 200.0), b, 0.05)
    big = diff_sequence((2 * n, 800.0, 800.0), b, 0.05)
    mid = diff_sequence(a, b, 0.05)
    assert small[1] - small[0] > mid[1] - mid[0] > big[1] - big[0]


def test_single_mean_sequence_covers_under_continuous_peeking() -> None:
    rng = np.random.default_rng(11)
    reps, peeks, step, misses = 200, 50, 20, 0
    for _ in range(reps):
        x = rng.exponential(2.0, peeks * step)  # skewed, true mean 2
        c, c2 = np.cumsum(x), np.cumsum(x * x)
        for k in range(peeks):
            n = (k + 1) * step
            mean, var = mean_var((n, c[n - 1], c2[n - 1]))
            lo, hi = confidence_sequence(n, mean, var, 0.05, rho_for(peeks * step, 0.05))
            if not lo <= 2.0 <= hi:
                misses += 1
                break
    assert misses / reps <= 0.05


# --- A/B and A/A, through the book -----------------------------------------------------------------


def test_ab_rates_converge_cover_and_the_verdict_flips_to_better() -> None:
    rng = np.random.default_rng(2024)
    clock = FakeClock()
    book = OutcomeBook(clock=clock)
    true = {"1": 0.10, "2": 0.13}
    checkpoints: list[dict[str, Any]] = []
    user = 0
    while True:
        batch = []
        for _ in range(500):
            key = f"user-{user}"
            arm = split_by_hash(key)
            assert arm is not None
            rid = f"req-{user}"
            book.remember(rid, arm)  # the gateway answered this request with `arm`
            ref: dict[str, str] = [{"request_id": rid}, {"key": key}, {"arm": arm}][user % 3]
            batch.append({**ref, "metric": "conversion", "value": int(rng.random() < true[arm])})
            user += 1
        clock.t += 1.0
        assert book.record(batch, ARMS, split_by_hash) == {"accepted": 500, "unattributed": 0}
        rep = book.report("1")["metrics"]["conversion"]
        checkpoints.append(rep)
        if min(a["n"] for a in rep["arms"].values()) >= 20_000:
            break

    def covered(rep: dict[str, Any]) -> bool:
        arms_ok = all(rep["arms"][a]["ci"][0] <= true[a] <= rep["arms"][a]["ci"][1] for a in ARMS)
        lo, hi = rep["vs_stable"]["2"]["ci"]
        return arms_ok and lo <= true["2"] - true["1"] <= hi

    coverage = [covered(r) for r in checkpoints if min(a["n"] for a in r["arms"].values()) >= 2]
    assert len(coverage) >= 70 and sum(coverage) >= 0.95 * len(coverage) and coverage[-1]
    final = checkpoints[-1]
    for a in ARMS:
        assert abs(final["arms"][a]["mean"] - true[a]) < 0.008
    early = next(r for r in checkpoints if min(a["n"] for a in r["arms"].values()) >= 200)
    assert early["vs_stable"]["2"]["verdict"] == "inconclusive"
    assert final["vs_stable"]["2"]["verdict"] == "better"
    assert final["vs_stable"]["2"]["diff"] == pytest.approx(0.03, abs=0.01)
    assert all(r["vs_stable"]["2"]["verdict"] != "worse" for r in checkpoints)
    assert book.unattributed == 0


def test_aa_book_almost_never_calls_a_winner_under_continuous_peeking() -> None:
    rng = np.random.default_rng(5)
    book = OutcomeBook()
    significant = 0
    for _ in range(200):  # 200 peeks, 100 outcomes per arm between them
        for arm in ARMS:
            book.record(rate_items(arm, rng.random(100) < 0.10), ARMS, no_keys)
        significant += (
            book.report("1")["metrics"]["conversion"]["vs_stable"]["2"]["verdict"] != "inconclusive"
        )
    assert significant <= 200 * 0.05


def test_aa_monte_carlo_false_positive_rate_stays_below_alpha() -> None:
    """200 A/A experiments, each peeked at 50 times; a winner called at any peek is a false positive."""
    alpha, reps, peeks, step = 0.05, 200, 50, 20
    rho = rho_for(peeks * step, alpha)  # tuned for this horizon: the least conservative fair choice

    def false_positive_rate(
        interval: Callable[[tuple[int, int, int], tuple[int, int, int]], tuple[float, float]],
    ) -> float:
        rng = np.random.default_rng(99)
        hits = 0
        for _ in range(reps):
            conv = np.cumsum(rng.random((2, peeks * step)) < 0.10, axis=1)
            for k in range(peeks):
                n = (k + 1) * step
                a = (n, int(conv[0, n - 1]), int(conv[0, n - 1]))  # 0/1 values: sum == sum of squares
                b = (n, int(conv[1, n - 1]), int(conv[1, n - 1]))
                lo, hi = interval(a, b)
                if lo > 0 or hi < 0:
                    hits += 1
                    break
        return hits / reps

    def fixed_n(a: tuple[int, int, int], b: tuple[int, int, int]) -> tuple[float, float]:
        (ma, va), (mb, vb) = mean_var(a), mean_var(b)
        half = 1.96 * math.sqrt(va / a[0] + vb / b[0])
        return ma - mb - half, ma - mb + half

    assert false_positive_rate(lambda a, b: diff_sequence(a, b, alpha, rho)) <= alpha
    # The same peeking with a classical interval calls far more winners: the test can tell.
    assert false_positive_rate(fixed_n) > 2 * alpha


def test_significantly_below_needs_a_clear_drop_and_enough_data() -> None:
    rng = np.random.default_rng(3)
    book = OutcomeBook()
    book.record(rate_items("1", rng.random(100) < 0.10), ARMS, no_keys)
    book.record(rate_items("2", rng.random(100) < 0.05), ARMS, no_keys)
    assert not book.significantly_below("conversion", "2", "1", 0.01, 0.05)  # too little data
    for _ in range(2):
        book.record(rate_items("1", rng.random(10_000) < 0.10), ARMS, no_keys)
        book.record(rate_items("2", rng.random(10_000) < 0.05), ARMS, no_keys)
    assert book.significantly_below("conversion", "2", "1", 0.01, 0.05)
    assert not book.significantly_below("conversion", "2", "1", 0.08, 0.05)  # drop is ~5 points, not 8
    assert not book.significantly_below("conversion", "1", "2", 0.0, 0.05)  # the other way round
    assert not book.significantly_below("revenue", "2", "1", 0.0, 0.05)  # no such metric
    assert book.report("1")["metrics"]["conversion"]["vs_stable"]["2"]["verdict"] == "worse"


# --- attribution -----------------------------------------------------------------------------------


def test_attribution_by_request_id_key_and_arm_token() -> None:
    book = OutcomeBook()
    book.remember("r-1", "2")
    book.remember("r-2", "1")
    keys = {"alice": "1", "bob": "2", "carol": "9"}  # carol's arm is not one of the model's
    got = book.record(
        [
            {"request_id": "r-1", "metric": "click", "value": 1},
            {"request_id": "r-2", "metric": "click", "value": 0.0},
            {"request_id": "r-1", "metric": "revenue", "value": 2.5},  # an id may carry several outcomes
            {"request_id": "r-unknown", "metric": "click", "value": 1},
            {"key": "alice", "metric": "click", "value": 1},
            {"key": "bob", "metric": "click", "value": 1},
            {"key": "carol", "metric": "click", "value": 1},
            {"key": "dave", "metric": "click", "value": 1},  # arm_of_key has no arm for him
            {"arm": "2", "metric": "revenue", "value": -1},
            {"arm": "7", "metric": "revenue", "value": 5},  # not a known arm token
        ],
        ARMS,
        keys.get,
    )
    assert got == {"accepted": 6, "unattributed": 4}
    assert book.unattributed == 4
    assert book.totals() == {
        ("2", "click"): (2, 2.0, 2.0),
        ("1", "click"): (2, 1.0, 1.0),
        ("2", "revenue"): (2, 1.5, 7.25),
    }
    # An id whose arm has left the policy is unattributed too.
    assert (
        book.record([{"request_id": "r-1", "metric": "click", "value": 1}], ("1",), no_keys)["unattributed"]
        == 1
    )


def test_request_ids_expire_after_ttl() -> None:
    clock = FakeClock()
    book = OutcomeBook(ttl_s=3600.0, clock=clock)
    book.remember("old", "1")
    clock.t = 1800.0
    book.remember("newer", "2")
    item = [{"request_id": "old", "metric": "click", "value": 1}]
    clock.t = 3600.0  # exactly ttl old: still good
    assert book.record(item, ARMS, no_keys) == {"accepted": 1, "unattributed": 0}
    clock.t = 3600.5
    assert book.record(item, ARMS, no_keys) == {"accepted": 0, "unattributed": 1}
    assert book.ids_held == 1  # the expired entry was dropped, the newer one kept
    assert (
        book.record([{"request_id": "newer", "metric": "click", "value": 1}], ARMS, no_keys)["accepted"] == 1
    )
    clock.t = 10_000.0
    book.record([], ARMS, no_keys)
    assert book.ids_held == 0


def test_id_table_stays_bounded_under_a_million_distinct_ids() -> None:
    book = OutcomeBook(max_ids=1000)
    for i in range(1_000_000):
        book.remember(f"id-{i}", ARMS[i & 1])
    assert book.ids_held == 1000 and len(book._order) == 1000
    got = book.record(
        [
            {"request_id": "id-999999", "metric": "m", "value": 1},
            {"request_id": "id-999000", "metric": "m", "value": 1},
            {"request_id": "id-998999", "metric": "m", "value": 1},
            {"request_id": "id-0", "metric": "m", "value": 1},
        ],
        ARMS,
        no_keys,
    )
    assert got == {"accepted": 2, "unattributed": 2}  # the newest 1000 are kept, the oldest evicted
    # Remembering the same id again neither grows the table nor loses it.
    for _ in range(10):
        book.remember("id-999999", "2")
    assert book.ids_held == 1000
    zero = OutcomeBook(max_ids=0)
    zero.remember("x", "1")
    assert zero.ids_held == 0


def test_id_table_memory_per_entry_and_bound() -> None:
    """Measured: ~127 B of table per entry when filled, up to ~165 B while ids churn through (the dict's
    resize slack), CPython 3.11, plus the id string; the OutcomeBook docstring quotes these numbers."""
    n = 100_000  # the default bound
    ids = [str(uuid.UUID(int=i)) for i in range(3 * n)]  # made before tracing: the strings aren't counted
    book = OutcomeBook(max_ids=n)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for rid in ids[:n]:
            book.remember(rid, "2")
        full = tracemalloc.get_traced_memory()[0]
        for rid in ids[n:]:
            book.remember(rid, "1")
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    per_entry = (full - base) / n
    assert 80 < per_entry < 180, per_entry
    assert book.ids_held == n
    assert after - base < 1.5 * (full - base)  # 2n more ids: bounded, only the dict's resize slack


# --- validation: all or nothing --------------------------------------------------------------------

GOOD = {"arm": "1", "metric": "click", "value": 1}
BAD_ITEMS: list[tuple[Any, str]] = [
    ({"arm": "1", "metric": "click", "value": "1"}, "outcomes[3].value: must be a finite number"),
    ({"arm": "1", "metric": "click", "value": math.nan}, "outcomes[3].value: must be a finite number"),
    ({"arm": "1", "metric": "click", "value": -math.inf}, "outcomes[3].value: must be a finite number"),
    ({"arm": "1", "metric": "click", "value": True}, "outcomes[3].value: must be a finite number"),
    ({"arm": "1", "metric": "click", "value": 10**400}, "outcomes[3].value: must be a finite number"),
    ({"arm": "1", "metric": "click"}, "outcomes[3].value: must be a finite number"),
    ({"arm": "1", "metric": "9lives", "value": 1}, "outcomes[3].metric: required, a name matching"),
    ({"arm": "1", "metric": "m" * 65, "value": 1}, "outcomes[3].metric: required, a name matching"),
    ({"arm": "1", "value": 1}, "outcomes[3].metric: required"),
    ({"arm": "1", "request_id": "r", "metric": "click", "value": 1}, "outcomes[3]: needs exactly one of"),
    ({"metric": "click", "value": 1}, "outcomes[3]: needs exactly one of request_id, key, arm (got 0)"),
    ({"key": 5, "metric": "click", "value": 1}, "outcomes[3].key: must be a string"),
    ({"request_id": None, "metric": "click", "value": 1}, "outcomes[3].request_id: must be a string"),
    ({"arm": "1", "metric": "click", "value": 1, "ts": 0}, "outcomes[3]: unknown field 'ts'"),
    (["arm", "1"], "outcomes[3]: must be an object"),
]


def snapshot(book: OutcomeBook) -> tuple[Any, ...]:
    return (book.totals(), book.unattributed, book.metrics, dict(book._ids), json.dumps(book.report("1")))


@pytest.mark.parametrize(("bad", "message"), BAD_ITEMS)
def test_a_bad_item_anywhere_leaves_the_book_unchanged(bad: Any, message: str) -> None:
    book = OutcomeBook()
    book.remember("r", "2")
    book.record([GOOD, {"request_id": "r", "metric": "click", "value": 3}], ARMS, no_keys)
    before = snapshot(book)
    batch = [
        GOOD,
        {"request_id": "r", "metric": "click", "value": 1},
        {"arm": "2", "metric": "new", "value": 1},
        bad,
        GOOD,
    ]
    with pytest.raises(OutcomeError) as err:
        book.record(batch, ARMS, no_keys)
    assert str(err.value).startswith(message)
    assert snapshot(book) == before
    assert "new" not in book.metrics


def test_outcome_error_is_an_invalid_argument_gateway_error() -> None:
    err = OutcomeError("outcomes[0].value: must be a finite number")
    assert isinstance(err, ValueError) and isinstance(err, GatewayError)
    assert err.code is Code.INVALID_ARGUMENT and err.message == str(err)


def test_an_arm_of_key_failure_leaves_the_book_unchanged() -> None:
    book = OutcomeBook()
    book.record([GOOD], ARMS, no_keys)
    before = snapshot(book)

    def broken(key: str) -> str | None:
        raise RuntimeError("hash ring not ready")

    with pytest.raises(RuntimeError):
        book.record([GOOD, {"key": "k", "metric": "other", "value": 1}], ARMS, broken)
    assert snapshot(book) == before


def test_batch_shape_and_size_limits() -> None:
    book = OutcomeBook()
    with pytest.raises(OutcomeError, match=r"^outcomes: must be a list"):
        book.record({"arm": "1"}, ARMS, no_keys)  # type: ignore[arg-type]
    with pytest.raises(
        OutcomeError, match=rf"^outcomes: at most {MAX_ITEMS} items per call, got {MAX_ITEMS + 1}"
    ):
        book.record([GOOD] * (MAX_ITEMS + 1), ARMS, no_keys)
    assert book.record([GOOD] * MAX_ITEMS, ARMS, no_keys)["accepted"] == MAX_ITEMS
    assert book.record([], ARMS, no_keys) == {"accepted": 0, "unattributed": 0}


def test_too_many_metrics_are_refused() -> None:
    book = OutcomeBook(max_metrics=3)
    book.record([{**GOOD, "metric": m} for m in ("a", "b")], ARMS, no_keys)
    before = snapshot(book)
    batch = [{**GOOD, "metric": m} for m in ("a", "c", "b", "d", "a")]
    with pytest.raises(OutcomeError, match=r"^outcomes\[3\]\.metric: 'd' would be a new metric; at most 3"):
        book.record(batch, ARMS, no_keys)
    assert snapshot(book) == before
    # A name counts once it is seen, attributed or not: 'c' from an unknown arm still takes the last slot.
    assert book.record([{"arm": "x", "metric": "c", "value": 1}], ARMS, no_keys)["unattributed"] == 1
    assert book.metrics == ["a", "b", "c"]
    with pytest.raises(OutcomeError, match=r"^outcomes\[0\]\.metric"):
        book.record([{**GOOD, "metric": "d"}], ARMS, no_keys)
    assert book.record([{**GOOD, "metric": m} for m in ("c", "a")], ARMS, no_keys)["accepted"] == 2


# --- the report ------------------------------------------------------------------------------------


def test_report_shape_is_json_ready() -> None:
    book = OutcomeBook()
    book.record(
        [{"arm": "2", "metric": "click", "value": 1}, {"arm": "x", "metric": "ghost", "value": 1}],
        ARMS,
        no_keys,
    )
    rep = book.report("1", alpha=0.1)
    json.dumps(rep, allow_nan=False)  # unbounded ends are None, not inf
    assert rep["alpha"] == 0.1 and rep["unattributed"] == 1 and rep["stable"] == "1"
    assert rep["metrics"]["click"] == {  # one outcome, and none for the stable arm
        "arms": {"2": {"n": 1, "mean": 1.0, "ci": [None, None]}},
        "vs_stable": {"2": {"diff": None, "ci": [None, None], "verdict": "inconclusive"}},
    }
    assert rep["metrics"]["ghost"] == {"arms": {}, "vs_stable": {}}


def test_replicas_totals_summed_give_the_same_report_as_one_book() -> None:
    """What Prometheus does: add each replica's (count, sum, sumsq) counters, then test fleet-wide."""
    rng = np.random.default_rng(8)
    one = OutcomeBook()
    replicas = [OutcomeBook(), OutcomeBook(), OutcomeBook()]
    for i in range(3000):
        arm = ARMS[i % 2]
        rid = f"r{i}"
        one.remember(rid, arm)
        replicas[i % 3].remember(rid, arm)  # the replica that answered
        item = [{"request_id": rid, "metric": "revenue", "value": int(rng.integers(0, 5 + 2 * (arm == "2")))}]
        one.record(item, ARMS, no_keys)
        replicas[i % 3].record(item, ARMS, no_keys)
        replicas[(i + 1) % 3].record(
            [{"request_id": f"r{i}x", "metric": "revenue", "value": 1}], ARMS, no_keys
        )
    fleet: dict[tuple[str, str], tuple[float, float, float]] = {}
    for r in replicas:
        for k, (c, s, ss) in r.totals().items():
            fc, fs, fss = fleet.get(k, (0.0, 0.0, 0.0))
            fleet[k] = (fc + c, fs + s, fss + ss)  # Prometheus counters are floats
    unattributed = sum(r.unattributed for r in replicas)
    assert unattributed == 3000
    assert summarize(fleet, "1", 0.05, 0) == one.report("1", 0.05)
    assert one.report("1")["metrics"]["revenue"]["vs_stable"]["2"]["verdict"] == "better"
