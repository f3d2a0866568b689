"""The batching rules, driven with an explicit clock (no sleeps)."""

from __future__ import annotations

from gateway.pipeline.batch_queue import INF, BatchQueue, Pending


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
