"""The admit + batch stages with an injectable clock and a scripted backend (no model, no sleeps).

The backend here is a stand-in for the Backend interface so that the driver's decisions
(when to release, what to drop, what to fail) are observable; the real onnxruntime path is
covered end to end in the HTTP tests.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.errors import Code, GatewayError
from gateway.model_config import ModelConfig
from gateway.observe.stats import ModelStats
from gateway.pipeline.admit import Admit, InflightCap
from gateway.pipeline.batcher import Batcher
from gateway.pipeline.validate import Signature
from gateway.types import InferRequest, TensorSpec


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ScriptedBackend:
    """Doubles its input; records every batch it ran. ``rows_delta`` makes it return wrong rows."""

    platform = "test"
    capacity = 1
    inline = True
    device = "cpu"

    def __init__(self, rows_delta: int = 0) -> None:
        self.inputs = [TensorSpec("X", "FP32", (-1, 2))]
        self.outputs = [TensorSpec("Y", "FP32", (-1, 2))]
        self.batches: list[int] = []
        self.rows_delta = rows_delta

    def run_inline(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["X"]
        self.batches.append(x.shape[0])
        y = x * 2
        if self.rows_delta:
            y = np.concatenate([y, y[: self.rows_delta]])
        return {"Y": y}

    def ready(self) -> bool:
        return True

    async def close(self) -> None:
        pass


def make(delay_us: int = 0, max_batch: int = 4, rows_delta: int = 0) -> tuple[Admit, ScriptedBackend, FakeClock]:
    """A version's admit + batch stages over the scripted backend (what the router hands requests to)."""
    backend = ScriptedBackend(rows_delta)
    cfg = ModelConfig(name="m", max_batch_size=max_batch, max_queue_delay_us=delay_us, max_queue_size=64)
    sig = Signature.build("m", backend.inputs, backend.outputs, True)
    clock = FakeClock()
    stats = ModelStats()
    batcher = Batcher("m", "1", cfg, backend, sig, stats, clock)  # type: ignore[arg-type]
    return Admit("m", "1", cfg, sig, batcher, stats, clock), backend, clock


def req(value: float, rows: int = 1, timeout_us: int = 0) -> InferRequest:
    return InferRequest("m", "", {"X": np.full((rows, 2), value, np.float32)}, timeout_us=timeout_us)


async def passes(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


class Collector:
    def __init__(self) -> None:
        self.results: dict[float, object] = {}

    def cb(self, key: float):  # noqa: ANN201
        def done(resp, err):  # noqa: ANN001, ANN202
            assert key not in self.results, "called back twice"
            self.results[key] = err if err is not None else resp.outputs["Y"]
        return done


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_full_batch_goes_before_the_delay(loop_kind: str) -> None:
    async def main() -> None:
        b, backend, clock = make(delay_us=10_000_000)
        c = Collector()
        for v in (1.0, 2.0, 3.0):
            b.submit(req(v), c.cb(v))
        await passes()
        assert backend.batches == []  # 3 rows < 4, and the (fake) 10 s delay has not passed
        b.submit(req(4.0), c.cb(4.0))
        await passes()
        assert backend.batches == [4]
        assert {k: float(v[0, 0]) for k, v in c.results.items()} == {1.0: 2.0, 2.0: 4.0, 3.0: 6.0, 4.0: 8.0}
        b.submit(req(5.0), c.cb(5.0))
        await passes()
        assert backend.batches == [4]
        clock.now += 10.0  # the delay passes; the next look releases it
        b.submit(req(6.0), c.cb(6.0))
        await passes()
        assert backend.batches == [4, 2]
        assert b.stats.release["full"] == 1 and b.stats.release["delay"] == 1

    run(main(), loop_kind)


def run(coro, loop_kind: str) -> None:  # noqa: ANN001
    if loop_kind == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


def test_deadline_expires_in_queue_without_compute() -> None:
    async def main() -> None:
        b, backend, clock = make(delay_us=10_000_000)
        c = Collector()
        b.submit(req(1.0, timeout_us=1000), c.cb(1.0))
        b.submit(req(2.0), c.cb(2.0))
        await passes()
        assert c.results == {}
        clock.now += 0.002
        b.submit(req(3.0), c.cb(3.0))  # any look at the queue after the deadline expires it
        await passes()
        err = c.results[1.0]
        assert isinstance(err, GatewayError) and err.code is Code.DEADLINE_EXCEEDED
        assert backend.batches == []
        assert b.stats.fail_by_code == {"DEADLINE_EXCEEDED": 1}

    asyncio.run(main())


def test_cancelled_request_is_dropped_and_never_called_back() -> None:
    async def main() -> None:
        b, backend, clock = make(delay_us=10_000_000)
        c = Collector()
        t1 = b.submit(req(1.0), c.cb(1.0))
        b.submit(req(2.0), c.cb(2.0))
        t1.cancel()
        clock.now += 11
        b.submit(req(3.0), c.cb(3.0))
        await passes()
        assert backend.batches == [2]  # 2.0 and 3.0 only
        assert set(c.results) == {2.0, 3.0}

    asyncio.run(main())


def test_oversize_request_split_and_reassembled_in_order() -> None:
    async def main() -> None:
        b, backend, _ = make(max_batch=4)
        c = Collector()
        x = InferRequest("m", "", {"X": np.arange(20, dtype=np.float32).reshape(10, 2)})
        b.submit(x, c.cb(0.0))
        await passes(6)
        assert backend.batches == [4, 4, 2]
        np.testing.assert_array_equal(c.results[0.0], np.arange(20, dtype=np.float32).reshape(10, 2) * 2)

    asyncio.run(main())


def test_wrong_output_rows_fail_the_whole_batch() -> None:
    async def main() -> None:
        b, backend, clock = make(delay_us=10_000_000, rows_delta=1)
        c = Collector()
        for v in (1.0, 2.0, 3.0, 4.0):
            b.submit(req(v), c.cb(v))
        await passes()
        assert backend.batches == [4]
        assert all(isinstance(e, GatewayError) and e.code is Code.INTERNAL and "rows" in e.message
                   for e in c.results.values())
        assert len(c.results) == 4

    asyncio.run(main())


def test_queue_bound_rejects_at_once() -> None:
    async def main() -> None:
        b, _, _ = make(delay_us=10_000_000, max_batch=64)
        b.queue.max_queue_rows = 3
        b.submit(req(1.0, rows=3), Collector().cb(1.0))
        with pytest.raises(GatewayError) as e:
            b.submit(req(2.0), Collector().cb(2.0))
        assert e.value.code is Code.RESOURCE_EXHAUSTED and e.value.retry_after_s == 1

    asyncio.run(main())


def test_more_rows_than_the_queue_holds_is_invalid_not_retryable() -> None:
    """Even an idle queue could never take it: INVALID_ARGUMENT naming the limit, not a 429."""
    async def main() -> None:
        b, _, _ = make(delay_us=10_000_000, max_batch=2)
        b.queue.max_queue_rows = 3
        with pytest.raises(GatewayError) as e:
            b.submit(req(1.0, rows=4), Collector().cb(1.0))
        assert e.value.code is Code.INVALID_ARGUMENT and e.value.retry_after_s is None
        assert "queues at most 3" in e.value.message
        assert b.queue.rows == 0
        b.submit(req(1.0, rows=3), Collector().cb(1.0))  # split into chunks of 2: fits

    asyncio.run(main())


def test_eager_submit_runs_at_once_only_when_idle() -> None:
    async def main() -> None:
        b, backend, _ = make()
        c = Collector()
        b.submit(req(1.0), c.cb(1.0), eager=True)
        assert backend.batches == [1] and 1.0 in c.results  # computed inside submit, no loop pass
        b.submit(req(2.0), c.cb(2.0))  # queued for the next pass...
        b.submit(req(3.0), c.cb(3.0), eager=True)  # ...so this one joins it instead of jumping ahead
        assert backend.batches == [1]
        await passes()
        assert backend.batches == [1, 2]
        slow, slow_backend, _ = make(delay_us=1000)
        slow.submit(req(4.0), Collector().cb(4.0), eager=True)  # a configured delay is honoured
        assert slow_backend.batches == []

    asyncio.run(main())


# ---- admission: priorities, expected wait, server-wide caps -----------------------------------

class TimedBackend(ScriptedBackend):
    """Each batch takes ``fixed + per_row * rows`` seconds of the fake clock; records what it ran."""

    def __init__(self, clock: FakeClock, fixed: float = 0.004, per_row: float = 0.001) -> None:
        super().__init__()
        self.clock, self.fixed, self.per_row = clock, fixed, per_row
        self.values: list[list[float]] = []

    def run_inline(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["X"]
        self.values.append([float(v) for v in x[:, 0]])
        self.clock.now += self.fixed + self.per_row * x.shape[0]
        return super().run_inline(feeds)


def admitting(**cfg: object) -> tuple[Admit, TimedBackend, FakeClock]:
    clock = FakeClock()
    backend = TimedBackend(clock)
    config = ModelConfig(name="m", **{"max_batch_size": 4, "max_queue_size": 64, **cfg})  # type: ignore[arg-type]
    sig = Signature.build("m", backend.inputs, backend.outputs, True)
    stats = ModelStats()
    batcher = Batcher("m", "1", config, backend, sig, stats, clock)  # type: ignore[arg-type]
    return Admit("m", "1", config, sig, batcher, stats, clock), backend, clock


async def measure(a: Admit) -> None:
    """A batch of 4 rows, then one of 1: the batch cost is then known exactly (fixed + per row)."""
    c = Collector()
    for v in range(4):
        a.submit(req(100.0 + v), c.cb(100.0 + v))
    await passes()
    a.submit(req(104.0), c.cb(104.0))
    await passes()
    assert len(c.results) == 5


def prio_req(value: float, priority: object = None, timeout_us: int = 0) -> InferRequest:
    r = req(value, timeout_us=timeout_us)
    if priority is not None:
        r.parameters = {"priority": priority}
    return r


def test_expected_wait_refuses_at_once_what_would_miss_its_deadline() -> None:
    async def main() -> None:
        a, backend, clock = admitting()
        c = Collector()
        await measure(a)
        assert backend.batches == [4, 1] and abs(a.batcher.cost.seconds(4) - 0.008) < 1e-9
        for v in range(10, 18):  # 8 rows queued (not yet flushed): two full batches ahead, 16 ms
            a.submit(req(float(v)), c.cb(float(v)))
        with pytest.raises(GatewayError) as e:
            a.submit(req(1.0, timeout_us=20_000), c.cb(1.0))  # starts at 16 ms, answered at 21 ms
        assert e.value.code is Code.RESOURCE_EXHAUSTED and e.value.retry_after_s == 1
        assert "16.0 ms" in e.value.message and "deadline" in e.value.message
        a.submit(req(2.0, timeout_us=22_000), c.cb(2.0))  # answered at 21 ms: in time
        assert a.stats.fail_by_code == {"RESOURCE_EXHAUSTED": 1}
        await passes()
        assert not isinstance(c.results[2.0], GatewayError) and 1.0 not in c.results

    asyncio.run(main())


def test_max_queue_wait_is_an_slo_for_requests_without_a_deadline() -> None:
    async def main() -> None:
        a, _, _ = admitting(max_queue_wait_us=10_000)
        c = Collector()
        await measure(a)
        for v in range(10, 14):  # one full batch ahead: 8 ms, within the 10 ms SLO
            a.submit(req(float(v)), c.cb(float(v)))
        a.submit(req(1.0), c.cb(1.0))
        for v in range(20, 23):  # 5, 6, 7 rows ahead: still one full batch
            a.submit(req(float(v)), c.cb(float(v)))
        with pytest.raises(GatewayError) as e:  # 8 rows ahead: two full batches, 16 ms
            a.submit(req(2.0), c.cb(2.0))
        assert e.value.code is Code.RESOURCE_EXHAUSTED and "max_queue_wait_us (10000)" in e.value.message

    asyncio.run(main())


def test_retry_after_is_the_estimated_excess_in_whole_seconds() -> None:
    async def main() -> None:
        a, backend, _ = admitting()
        backend.fixed = 1.0  # a batch takes a second
        c = Collector()
        await measure(a)
        for v in range(1, 13):  # 12 rows: 3 full batches of ~1 s ahead
            a.submit(req(float(v)), c.cb(float(v)))
        with pytest.raises(GatewayError) as e:
            a.submit(req(99.0, timeout_us=1000), c.cb(99.0))
        assert e.value.retry_after_s == 5  # answered after 3 x 1.004 s + 1.001 s: ceil of that - 1 ms

    asyncio.run(main())


def test_priority_counts_only_the_work_ahead_and_is_batched_first() -> None:
    async def main() -> None:
        a, backend, _ = admitting(priority_levels=2, default_priority_level=2, priority_aging_us=10_000_000)
        c = Collector()
        await measure(a)
        for v in range(10, 18):  # 8 low (default level) rows queued: 16 ms of work
            a.submit(prio_req(float(v)), c.cb(float(v)))
        with pytest.raises(GatewayError):
            a.submit(prio_req(1.0, 0, timeout_us=15_000), c.cb(1.0))  # 0 = the default level: behind them
        a.submit(prio_req(2.0, 1, timeout_us=15_000), c.cb(2.0))  # level 1: nothing ahead of it
        await passes()
        assert backend.values[2] == [2.0, 10.0, 11.0, 12.0]  # batched first, the low ones fill the batch
        assert len(c.results) == 8 + 1 and not any(isinstance(v, GatewayError) for v in c.results.values())

    asyncio.run(main())


@pytest.mark.parametrize("bad", [3, -1, "1", 1.0, True])
def test_priority_outside_the_levels_is_invalid_naming_the_parameter(bad: object) -> None:
    a, _, _ = admitting(priority_levels=2)
    with pytest.raises(GatewayError) as e:
        a.submit(prio_req(1.0, bad), Collector().cb(1.0))
    assert e.value.code is Code.INVALID_ARGUMENT and "parameter 'priority'" in e.value.message
    assert "1 (highest) to 2" in e.value.message
    assert a.stats.fail_by_code == {"INVALID_ARGUMENT": 1}


def test_priority_is_ignored_without_levels_and_defaults_to_the_lowest() -> None:
    async def main() -> None:
        plain, _, _ = admitting()
        plain.submit(prio_req(1.0, 7), Collector().cb(1.0))  # no levels: the parameter is not read (as Triton)
        a, _, _ = admitting(priority_levels=3, max_queue_delay_us=10_000_000)
        a.submit(prio_req(1.0), Collector().cb(1.0))
        a.submit(prio_req(2.0, 0), Collector().cb(2.0))
        assert [p.level for p in a.queue.items()] == [3, 3]

    asyncio.run(main())


def test_priority_queue_size_refuses_per_level() -> None:
    async def main() -> None:
        a, _, _ = admitting(priority_levels=2, priority_queue_size=((2, 2),), max_queue_delay_us=10_000_000)
        a.submit(prio_req(1.0, 2), Collector().cb(1.0))
        a.submit(prio_req(2.0, 2), Collector().cb(2.0))
        with pytest.raises(GatewayError) as e:
            a.submit(prio_req(3.0, 2), Collector().cb(3.0))
        assert e.value.code is Code.RESOURCE_EXHAUSTED and "priority 2" in e.value.message
        assert e.value.retry_after_s == 1
        a.submit(prio_req(4.0, 1), Collector().cb(4.0))  # level 1 is bounded by max_queue_size only
        with pytest.raises(GatewayError) as e:
            a.submit(InferRequest("m", "", {"X": np.ones((3, 2), np.float32)}, parameters={"priority": 2}),
                     Collector().cb(5.0))
        assert e.value.code is Code.INVALID_ARGUMENT and "at most 2 at priority 2" in e.value.message

    asyncio.run(main())


def test_inflight_cap_claims_and_releases_exactly_once() -> None:
    cap = InflightCap(max_requests=2, max_bytes=100)
    answers: list = []
    x = req(1.0)  # 8 bytes
    h1 = cap.hold(x, lambda r, e: answers.append(e))
    h2 = cap.hold(x, lambda r, e: answers.append(e))
    assert (cap.requests, cap.bytes) == (2, 16)
    with pytest.raises(GatewayError) as e:
        cap.hold(x, lambda r, e: None)
    assert e.value.code is Code.RESOURCE_EXHAUSTED and "max_inflight_requests" in e.value.message
    h1(None, None)  # the answer releases...
    h1.cancel()  # ...and a late cancel releases nothing more
    h2.cancel()  # a cancel releases; no answer follows
    assert (cap.requests, cap.bytes) == (0, 0) and answers == [None]
    big = InferRequest("m", "", {"X": np.ones((20, 2), np.float32)})  # 160 bytes: alone, it gets in
    h3 = cap.hold(big, lambda r, e: None)
    with pytest.raises(GatewayError) as e:
        cap.hold(x, lambda r, e: None)
    assert "max_inflight_bytes" in e.value.message
    h3(None, None)
    assert (cap.requests, cap.bytes) == (0, 0)
