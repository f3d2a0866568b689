"""The coalesce stage: identical in-flight requests share one computation (single-flight), and an
opt-in response cache answers repeats without queueing.

It sits after routing, per model version, so different arms (versions) never merge, and before
admission, so a follower takes no queue space. Two requests are identical when they ask the same
version for the same outputs with inputs of equal names, datatypes, shapes and bytes; the bytes are
compared by their xxh3-128 (``flight_key``).

Single-flight rules (Go's singleflight bugs as the checklist):

- The first request (the leader) is admitted and batched as usual; followers wait for its answer
  and each gets its own response (its own id). An error reaches every waiter and is never cached.
- A waiter that cancels leaves only itself: a cancelled leader does not cancel the computation while
  followers wait, and a cancelled follower does not let a duplicate run. When every waiter has gone
  the queued work is cancelled before dispatch.
- Each waiter keeps its own deadline: one whose deadline passed by the time the shared answer comes
  gets DEADLINE_EXCEEDED. A computation that fails because the *leader's* deadline passed in the
  queue is started again for the waiters whose own deadlines still allow it.
- At most ``coalesce_max_waiters`` share one computation; a model opts out with ``coalesce = false``.

Cache: bounded by the bytes of outputs held (copies, read-only, so a batch's buffer is not pinned),
LRU, with a TTL. It belongs to the version object: a reloaded version (new weights) starts empty, and
a version the reload kept unchanged keeps its cache. Hits are answered on the next loop pass (never
inside ``submit``: the fronts record the ticket after ``submit`` returns).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
from xxhash import xxh3_128_intdigest

from gateway._native.lane import flight_key as native_flight_key
from gateway.errors import Code, GatewayError
from gateway.model_config import ModelConfig
from gateway.observe.stats import ModelStats
from gateway.pipeline.batch_queue import INF
from gateway.pipeline.target import Done, Target, Ticket
from gateway.types import InferRequest, InferResponse

ENTRY_OVERHEAD = 600
"""Bytes a cache entry costs besides its outputs (key tuple, dict, array headers; measured with
tracemalloc for a one-output entry), counted against ``response_cache_bytes`` so that the bound is
the memory held, not only the tensors'."""


def _digest(arr: np.ndarray) -> int:
    if arr.dtype.kind == "O":  # BYTES: length-prefixed elements, so ["ab","c"] != ["a","bc"]
        parts = []
        for item in arr.flat:
            b = item if isinstance(item, bytes) else str(item).encode()
            parts.append(len(b).to_bytes(8, "little"))
            parts.append(b)
        return xxh3_128_intdigest(b"".join(parts))
    try:
        return xxh3_128_intdigest(arr)  # type: ignore[arg-type]  # any C-contiguous buffer
    except (BufferError, ValueError, TypeError):
        return xxh3_128_intdigest(np.ascontiguousarray(arr))  # type: ignore[arg-type]


def flight_key(request: InferRequest) -> tuple[Any, ...]:
    """What makes two requests to one version identical: requested outputs, and per input (in name
    order) its name, dtype, shape and a 128-bit hash of its bytes."""
    inputs = request.inputs
    outputs = tuple(request.outputs) if request.outputs is not None else None
    if len(inputs) == 1:  # the common case, without the loop
        for name, a in inputs.items():
            return (outputs, name, a.dtype, a.shape, _digest(a))
    out: list[Any] = [outputs]
    for name in sorted(inputs):
        a = inputs[name]
        out += (name, a.dtype, a.shape, _digest(a))
    return tuple(out)


_AT_PRIORITY = object()  # marks a flight key that carries the request's priority


def answer_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """The cache key of a flight's key: an answer does not depend on the priority it ran at."""
    return key[:-2] if len(key) > 2 and key[-2] is _AT_PRIORITY else key


class _Waiter:
    """A request waiting on a computation another request started."""

    __slots__ = ("flight", "done", "request", "deadline", "arrival", "gone")

    def __init__(self, flight: _Flight, done: Done, request: InferRequest, deadline: float, arrival: float) -> None:
        self.flight = flight
        self.done = done
        self.request = request
        self.deadline = deadline
        self.arrival = arrival
        self.gone = False

    def cancel(self) -> None:
        if not self.gone:
            self.gone = True
            self.flight.left()


class _Flight:
    """One computation: its leader (the request that started it; the flight is the leader's ticket)
    and, only once someone joins, the followers. A flight nobody joined costs one object."""

    __slots__ = ("owner", "key", "lead_done", "lead_gone", "followers", "live", "ticket", "finished")

    def __init__(self, owner: Coalescer, key: tuple[Any, ...], done: Done) -> None:
        self.owner = owner
        self.key = key
        self.lead_done = done
        self.lead_gone = False
        self.followers: list[_Waiter] | None = None
        self.live = 1
        self.ticket: Ticket | None = None
        self.finished = False

    def cancel(self) -> None:
        """The leader went away; the computation goes on while followers wait."""
        if not self.lead_gone:
            self.lead_gone = True
            self.left()

    def left(self) -> None:
        self.live -= 1
        if self.live == 0 and not self.finished:  # nobody wants it any more: drop it before dispatch
            self.finished = True
            self.owner.forget(self)
            ticket, self.ticket, self.followers = self.ticket, None, None
            if ticket is not None:
                ticket.cancel()

    def __call__(self, resp: InferResponse | None, err: GatewayError | None) -> None:
        """The computation's answer (the flight is the ``done`` it was submitted with: no bound
        method to allocate per request)."""
        if self.finished:
            return
        self.finished = True
        self.ticket = None  # the queued work refers back to this flight: no cycle left for the collector
        owner = self.owner
        if owner.flights.get(self.key) is self:
            del owner.flights[self.key]
        if self.followers is None:  # nobody joined: the leader's answer as it came
            if err is None and owner.cache is not None:
                owner.cache_put(answer_key(self.key), resp.outputs)  # type: ignore[union-attr]
            if not self.lead_gone:
                self.lead_done(resp, err)
            return
        if err is not None and err.code is Code.DEADLINE_EXCEEDED and owner.retry(self):
            return
        if err is None and resp is not None and owner.cache is not None:
            owner.cache_put(answer_key(self.key), resp.outputs)
        owner.answer(self, resp, err)
        self.followers = None  # waiters point at their flight: break the cycle once they are answered


def _nobody(resp: InferResponse | None, err: GatewayError | None) -> None:
    """The leader slot of a computation restarted for followers only."""


class _CacheHit:
    """The ticket of an answer already scheduled for the next loop pass."""

    __slots__ = ("handle",)

    def __init__(self, handle: asyncio.Handle) -> None:
        self.handle = handle

    def cancel(self) -> None:
        self.handle.cancel()


class Coalescer:
    """A version's target behind this stage: single-flight, and the cache when configured."""

    def __init__(self, inner: Target, name: str, version: str, config: ModelConfig, stats: ModelStats,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.inner = inner
        self.name = name
        self.version = version
        self.stats = stats
        self.clock = clock
        self.timeout_us = config.timeout_us
        self.coalescing = config.coalesce
        """False: a cache without single-flight (a model that opted out but caches)."""
        self.max_waiters = config.coalesce_max_waiters
        self.flights: dict[tuple[Any, ...], _Flight] = {}
        self.cache: OrderedDict[tuple[Any, ...], tuple[float, dict[str, np.ndarray], int]] | None = (
            OrderedDict() if config.response_cache_bytes > 0 else None)
        self.cache_max_bytes = config.response_cache_bytes
        self.cache_ttl_s = config.response_cache_ttl_s
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, request: InferRequest, done: Done, eager: bool = False) -> Ticket:
        key = native_flight_key(request, flight_key)  # the common case in C, shared with the native lane
        if self.cache is not None:
            hit = self._lookup(key)
            if hit is not None:
                return hit(request, done)
        params = request.parameters
        if params and "priority" in params:  # a flight runs at its leader's priority: never join another level's
            key = (*key, _AT_PRIORITY, params["priority"])
        if self.coalescing:
            flight = self.flights.get(key)
            if flight is not None and flight.live < self.max_waiters:
                return self._join(flight, request, done)
        flight = _Flight(self, key, done)
        flight.ticket = self.inner.submit(request, flight, eager)  # a refusal raises: nothing kept
        if self.coalescing and not flight.finished:  # (an eager backend may have answered inside submit)
            self.flights[key] = flight
        return flight

    def _join(self, flight: _Flight, request: InferRequest, done: Done) -> _Waiter:
        now = self.clock()
        timeout_us = request.timeout_us or self.timeout_us
        w = _Waiter(flight, done, request, now + timeout_us * 1e-6 if timeout_us > 0 else INF, now)
        if flight.followers is None:
            flight.followers = [w]
        else:
            flight.followers.append(w)
        flight.live += 1
        return w

    def _lookup(self, key: tuple[Any, ...]) -> Callable[[InferRequest, Done], Ticket] | None:
        """A cache hit: a function that schedules its answer; None on a miss (counted either way)."""
        t0 = self.clock()
        stats = self.stats
        outputs = self.cache_get(key, t0)
        if outputs is None:
            stats.cache_miss_count += 1
            stats.cache_miss_ns += int((self.clock() - t0) * 1e9)
            return None
        stats.cache_hit_count += 1
        stats.cache_hit_ns += int((self.clock() - t0) * 1e9)
        found = outputs

        def answer(request: InferRequest, done: Done) -> Ticket:
            loop = self._loop or asyncio.get_running_loop()
            self._loop = loop
            return _CacheHit(loop.call_soon(self._answer_hit, request, done, found, t0))

        return answer

    # ---- flights -------------------------------------------------------------------------------
    def forget(self, flight: _Flight) -> None:
        """The flight takes no more followers (it is answered, or nobody wants it)."""
        if self.flights.get(flight.key) is flight:
            del self.flights[flight.key]

    def retry(self, flight: _Flight) -> bool:
        """The leader's deadline passed while queued: start again for the followers whose own
        deadlines have not. False: none left (the error goes to everyone)."""
        now = self.clock()
        alive = [w for w in flight.followers or () if not w.gone and w.deadline > now]
        if not alive:
            return False
        late = GatewayError(Code.DEADLINE_EXCEEDED, f"deadline exceeded while queued for model '{self.name}'")
        if not flight.lead_gone:
            flight.lead_done(None, late)  # the batch stage counted it
        for w in flight.followers or ():
            if not w.gone and w.deadline <= now:
                self.stats.record_failures(late.code.name, 1, int((now - w.arrival) * 1e9))
                w.done(None, late)
        # The new computation has no leader of its own: every waiter is a follower of it (their
        # tickets are their _Waiter objects), and it lives while one of them does.
        lead = max(alive, key=lambda w: w.deadline)
        again = _Flight(self, flight.key, _nobody)
        again.lead_gone = True
        again.followers = alive
        again.live = len(alive)
        for w in alive:
            w.flight = again
        remaining_us = int((lead.deadline - now) * 1e6) if lead.deadline < INF else 0
        r = lead.request
        request = InferRequest(r.model_name, r.model_version, r.inputs, r.outputs, r.id, r.parameters,
                               max(1, remaining_us) if remaining_us else 0)
        try:
            again.ticket = self.inner.submit(request, again)
        except GatewayError as exc:
            again.finished = True
            self.answer(again, None, exc)
            return True
        if not again.finished:
            self.flights[again.key] = again
        return True

    def answer(self, flight: _Flight, resp: InferResponse | None, err: GatewayError | None) -> None:
        """The leader and each follower get their own response (own id), or the error. The batch
        stage counted one request for the computation (the leader's): the others are counted here."""
        now = self.clock()
        stats = self.stats
        ok = 0
        if not flight.lead_gone:
            if err is None:
                ok += 1
            flight.lead_done(resp, err)
        late: GatewayError | None = None
        for w in flight.followers or ():
            if w.gone:
                continue
            if err is not None:
                stats.record_failures(err.code.name, 1, int((now - w.arrival) * 1e9))
                w.done(None, err)
                continue
            assert resp is not None
            if w.deadline <= now:  # its own deadline passed while the shared work ran
                late = late or GatewayError(Code.DEADLINE_EXCEEDED,
                                            f"deadline exceeded waiting for model '{self.name}'")
                stats.record_failures(late.code.name, 1, int((now - w.arrival) * 1e9))
                w.done(None, late)
                continue
            ok += 1
            stats.extra_success_ns += int((now - w.arrival) * 1e9)
            w.done(InferResponse(resp.model_name, resp.model_version, resp.outputs, w.request.id), None)
        if ok > 1:
            stats.extra_success_count += ok - 1
            stats.coalesced_count += ok - 1
            stats.shared_flights += 1

    # ---- the cache -----------------------------------------------------------------------------
    def cache_get(self, key: tuple[Any, ...], now: float) -> dict[str, np.ndarray] | None:
        cache = self.cache
        assert cache is not None
        entry = cache.get(key)
        if entry is None:
            return None
        expires, outputs, nbytes = entry
        if expires < now:
            del cache[key]
            self.stats.cache_bytes -= nbytes
            return None
        cache.move_to_end(key)
        return outputs

    def cache_put(self, key: tuple[Any, ...], outputs: dict[str, np.ndarray]) -> None:
        cache = self.cache
        assert cache is not None
        held: dict[str, np.ndarray] = {}
        nbytes = ENTRY_OVERHEAD
        for name, arr in outputs.items():
            c = np.array(arr, copy=True)  # a copy: a view would pin its whole batch's buffer
            c.flags.writeable = False
            held[name] = c
            nbytes += c.nbytes if c.dtype.kind != "O" else sum(len(x) for x in c.flat) + 8 * c.size
        if nbytes > self.cache_max_bytes:
            return
        old = cache.pop(key, None)
        stats = self.stats
        if old is not None:
            stats.cache_bytes -= old[2]
        while cache and stats.cache_bytes + nbytes > self.cache_max_bytes:
            _, (_, _, n) = cache.popitem(last=False)
            stats.cache_bytes -= n
            stats.cache_evictions += 1
        ttl = self.cache_ttl_s
        cache[key] = (self.clock() + ttl if ttl > 0 else INF, held, nbytes)
        stats.cache_bytes += nbytes

    def _answer_hit(self, request: InferRequest, done: Done, outputs: dict[str, np.ndarray], t0: float) -> None:
        self.stats.extra_success_count += 1
        self.stats.extra_success_ns += int((self.clock() - t0) * 1e9)
        done(InferResponse(self.name, self.version, outputs, request.id), None)


def wrap(target: Target, name: str, version: str, config: ModelConfig, stats: ModelStats,
         clock: Callable[[], float] = time.perf_counter) -> Target:
    """The version's target behind this stage: the coalescer, or the target itself when the model
    opted out of coalescing and has no cache (then the stage costs nothing)."""
    if not config.coalesce and config.response_cache_bytes <= 0:
        return target
    return Coalescer(target, name, version, config, stats, clock)
