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
from gateway.pipeline.admit import Admit
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
