"""The batching rules, driven with an explicit clock (no sleeps)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline.batch_queue import INF, BatchCost, BatchQueue, Pending


def item(rows: int, t: float, deadline: float = INF, bucket: tuple = ()) -> Pending:
    return Pending(None, {}, rows, t, deadline, lambda *a: None, bucket)


def rows_of(batch: list[Pending]) -> list[int]:
    return [p.rows for p in batch]


def test_zero_delay_releases_everything_queued_at_once() -> None:
    q = BatchQueue(max_batch_size=8, max_queue_delay_s=0.0)
    for _ in range(3):
        q.add(item(1, 0.0))
    batch, reason = q.next_batch(now=0.0)
    assert rows_of(batch) == [1, 1, 1] and reason == "delay"
    assert q.next_batch(now=0.0) is None and q.rows == 0


def test_full_batch_released_before_delay_and_rest_waits() -> None:
    q = BatchQueue(max_batch_size=4, max_queue_delay_s=0.010)
    for _ in range(6):
        q.add(item(1, 0.0))
    batch, reason = q.next_batch(now=0.001)
    assert (len(batch), reason) == (4, "full")
    assert q.next_batch(now=0.005) is None  # 2 rows, delay not over
    assert q.wake_at(now=0.005) == 0.010
    batch, reason = q.next_batch(now=0.010)
    assert (len(batch), reason) == (2, "delay")


def test_batches_never_exceed_max_rows_with_multi_row_items() -> None:
    q = BatchQueue(max_batch_size=5, max_queue_delay_s=0.0)
    for r in (3, 2, 4, 1):
        q.add(item(r, 0.0))
    b1, _ = q.next_batch(0.0)
    b2, _ = q.next_batch(0.0)
    assert rows_of(b1) == [3, 2] and rows_of(b2) == [4, 1]


def test_preferred_size_released_when_reachable() -> None:
    q = BatchQueue(max_batch_size=16, max_queue_delay_s=1.0, preferred=(4, 8))
    for _ in range(5):
        q.add(item(1, 0.0))
    assert q.next_batch(0.001) is None  # 5 rows < largest preferred (8): keep waiting
    for _ in range(4):
        q.add(item(1, 0.001))
    batch, reason = q.next_batch(0.002)
    assert (len(batch), reason) == (8, "preferred")
    assert q.rows == 1


def test_deadline_expiry_removes_before_compute() -> None:
    q = BatchQueue(max_batch_size=8, max_queue_delay_s=1.0)
    a = item(1, 0.0, deadline=0.001)
    b = item(1, 0.0)
    q.add(a)
    q.add(b)
    assert q.wake_at(0.0) == 0.001  # the deadline, not the 1 s delay, is the next look
    assert q.expire(0.0005) == []
    assert q.expire(0.001) == [a]
    assert q.rows == 1
    batch, reason = q.next_batch(1.0)
    assert batch == [b] and reason == "delay"


def test_release_on_deadline_runs_early_when_enabled() -> None:
    q = BatchQueue(max_batch_size=8, max_queue_delay_s=1.0, release_on_deadline=True)
    q.add(item(1, 0.0, deadline=0.010))
    assert q.next_batch(0.001, compute_estimate_s=0.002) is None
    batch, reason = q.next_batch(0.008, compute_estimate_s=0.002)
    assert reason == "deadline" and len(batch) == 1


def test_cancelled_items_leave_silently() -> None:
    q = BatchQueue(max_batch_size=8, max_queue_delay_s=1.0)
    a, b = item(1, 0.0), item(2, 0.0)
    q.add(a)
    q.add(b)
    a.cancel()
    assert q.expire(0.0) == []  # cancelled: removed, not reported as expired
    assert q.rows == 2
    batch, _ = q.next_batch(2.0)
    assert batch == [b]


def test_shape_buckets_are_batched_separately_oldest_first() -> None:
    q = BatchQueue(max_batch_size=8, max_queue_delay_s=0.0)
    q.add(item(1, 0.2, bucket=((5,),)))
    q.add(item(1, 0.1, bucket=((3,),)))
    q.add(item(1, 0.3, bucket=((5,),)))
    b1, _ = q.next_batch(1.0)
    b2, _ = q.next_batch(1.0)
    assert [p.bucket for p in b1] == [((3,),)]
    assert [p.bucket for p in b2] == [((5,),), ((5,),)]


def test_queue_bound_counts_rows() -> None:
    q = BatchQueue(max_batch_size=8, max_queue_rows=4)
    q.add(item(3, 0.0))
    assert q.has_room(1) and not q.has_room(2)


def test_no_batching_runs_one_request_per_batch() -> None:
    q = BatchQueue(max_batch_size=0)
    q.add(item(1, 0.0))
    q.add(item(1, 0.0))
    b1, reason = q.next_batch(0.0)
    assert len(b1) == 1 and reason == "full"
    assert len(q.next_batch(0.0)[0]) == 1


# ---- priorities with aging ------------------------------------------------------------------

def prio(rows: int, t: float, level: int, deadline: float = INF) -> Pending:
    return Pending(None, {}, rows, t, deadline, lambda *a: None, (), level)


def test_higher_priority_is_batched_first_and_fills_before_lower() -> None:
    q = BatchQueue(max_batch_size=4, max_queue_delay_s=0.0, levels=2, aging_s=10.0)
    lows = [prio(1, 0.0 + i * 0.001, 2) for i in range(3)]
    highs = [prio(1, 0.01 + i * 0.001, 1) for i in range(2)]
    for p in lows + highs:
        q.add(p)
    batch, _ = q.next_batch(0.02)
    assert batch == highs + lows[:2]  # both high ones, then the oldest low ones fill the batch
    assert q.next_batch(0.02)[0] == lows[2:]
    assert q.rows == 0 and q.next_batch(0.02) is None


def test_aging_a_lower_level_ranks_as_if_it_arrived_later() -> None:
    q = BatchQueue(max_batch_size=1, levels=3, aging_s=1.0)
    low = prio(1, 0.0, 3)  # ranks as if it had arrived at 2.0
    q.add(low)
    early, late = prio(1, 1.5, 1), prio(1, 2.5, 1)
    q.add(early)
    q.add(late)
    order = [q.next_batch(3.0)[0][0] for _ in range(3)]
    assert order == [early, low, late]


def test_a_saturating_higher_level_cannot_starve_a_lower_one() -> None:
    """Two high-priority arrivals per ms, one batch (1 row) served per ms: the high level alone is
    twice the capacity. The low request is still served, about one aging step (plus the high work
    that ranked ahead of it) after it arrived; without aging it would wait for ever."""
    q = BatchQueue(max_batch_size=1, levels=2, aging_s=0.050)
    low = prio(1, 0.0, 2)
    q.add(low)
    served_at = None
    for ms in range(1, 1000):
        now = ms / 1000
        q.add(prio(1, now, 1))
        q.add(prio(1, now, 1))
        batch, _ = q.next_batch(now)
        if batch[0] is low:
            served_at = now
            break
    assert served_at is not None and 0.050 <= served_at <= 0.2


def test_rows_ahead_counts_own_and_higher_levels_and_aged_lower_rows() -> None:
    q = BatchQueue(max_batch_size=8, max_queue_delay_s=10.0, levels=3, aging_s=1.0)
    q.add(prio(2, 0.0, 1))
    for t, r in ((0.0, 1), (0.5, 2), (2.0, 4)):
        q.add(prio(r, t, 2))
    q.add(prio(3, 0.0, 3))
    # level 1 at 2.2: its 2 rows, level 2 arrived by 1.2 (1 + 2 rows), level 3 arrived by 0.2 (3 rows)
    assert q.rows_ahead(1, 2.2) == 2 + 3 + 3
    assert q.rows_ahead(2, 2.2) == 2 + 7 + 3  # level 3 arrived by 1.2
    assert q.rows_ahead(3, 2.2) == q.rows == 12
    assert q.rows_ahead(1, 0.1) == 2


def test_level_limits_bound_each_level_within_the_total() -> None:
    q = BatchQueue(max_batch_size=8, max_queue_delay_s=10.0, max_queue_rows=6, levels=2, level_limits={2: 2})
    q.add(prio(2, 0.0, 2))
    assert not q.has_room(1, 2) and q.has_room(4, 1) and not q.has_room(5, 1)
    q.next_batch(20.0)
    assert q.has_room(2, 2) and q.level_rows == {2: 0}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "batch", "cancel", "expire"]), st.integers(1, 3),
                          st.integers(1, 3), st.booleans()), max_size=60))
def test_model_of_priority_order_and_rows_ahead(ops: list[tuple[str, int, int, bool]]) -> None:
    """Against a brute-force model: each batch is a prefix of the queued items sorted by rank, and
    rows_ahead(level, now) is the rows of the items that rank at or before a newcomer of that level."""
    aging = 0.004
    q = BatchQueue(max_batch_size=4, max_queue_delay_s=0.0, levels=3, aging_s=aging)
    now = 0.0
    live: list[Pending] = []
    for op, rows, level, flag in ops:
        now += 0.001
        if op == "add":
            p = prio(rows, now, level, deadline=now + 0.003 if flag else INF)
            q.add(p)
            live.append(p)
        elif op == "cancel" and live:
            live[rows % len(live)].cancel()  # its rows leave the count now; the driver's next pass drops it
            assert q.rows == sum(p.rows for p in live if not p.cancelled)
            q.expire(now)
            live = [p for p in live if p.queue is not None]
        elif op == "expire":
            gone = q.expire(now)
            assert all(p.deadline <= now for p in gone)
            live = [p for p in live if p.queue is not None]
        else:
            q.expire(now)
            live = [p for p in live if p.queue is not None]
            want = sorted(live, key=lambda p: (p.rank, p.arrival))
            got = q.next_batch(now)
            if not want:
                assert got is None
                continue
            assert got is not None
            batch = got[0]
            assert [p.rank for p in batch] == [p.rank for p in want[: len(batch)]]
            assert sum(p.rows for p in batch) <= 4
            assert len(batch) == len(want) or sum(p.rows for p in batch) + want[len(batch)].rows > 4
            live = [p for p in live if p not in batch]
        for lv in (1, 2, 3):
            brute = sum(p.rows for p in live if p.rank <= now + (lv - 1) * aging)
            assert q.rows_ahead(lv, now) == brute
        assert q.rows == sum(p.rows for p in live)


# ---- the measured batch cost --------------------------------------------------------------

def test_batch_cost_recovers_a_fixed_and_a_per_row_part() -> None:
    c = BatchCost()
    assert not c.known
    for n in [1, 8, 64, 3, 32, 64, 1, 16] * 4:
        c.observe(n, 0.002 + 0.0001 * n)
    assert abs(c.fixed - 0.002) < 1e-9 and abs(c.per_row - 0.0001) < 1e-9
    assert abs(c.seconds(64) - 0.0084) < 1e-9


def test_batch_cost_of_one_size_is_proportional_and_never_negative() -> None:
    c = BatchCost()
    for _ in range(5):
        c.observe(64, 0.0064)
    assert c.fixed == 0.0 and abs(c.seconds(32) - 0.0032) < 1e-12
    d = BatchCost(decay=1.0)
    for n, t in ((1, 0.010), (64, 0.002), (1, 0.010), (64, 0.002)):  # bigger batches faster: per batch
        d.observe(n, t)
    assert d.per_row == 0.0 and abs(d.seconds(10) - 0.006) < 1e-9


def test_batch_cost_forgets_old_batches() -> None:
    c = BatchCost(decay=0.5)
    for _ in range(10):
        c.observe(4, 0.004)
    for _ in range(20):
        c.observe(4, 0.040)  # the model got ten times slower
    assert abs(c.seconds(4) - 0.040) < 0.001
