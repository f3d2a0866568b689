"""The precomputed stage (the hybrid route): answer a keyed request from a stored prediction, or
run it live.

It sits after routing, per version, in front of coalescing, so the version a stored entry must
match is the one this request was routed to (pinned, canary or stable arm): a rollout to version 2
never serves version 1's stored answers for it. A request names its entity by the model's ``key``,
a header / gRPC metadata key (the router hands it over as ``request.entity``) or a parameter.

A stored entry is served when it was computed by this version, is no older than
``max_staleness_s`` (or the request's own ``max_staleness_s`` parameter, which may only tighten
it) and, with ``check_inputs``, was computed from inputs that hash like the request's. Otherwise
the request runs live (``fallback = "live"``) or is answered NOT_FOUND (``"error"``); the reason
is counted (miss, stale, version, inputs_changed, store_error, no_key). A live answer to a keyed
request is stored with ``write_back``. The store being down never fails a request: a lookup
error or timeout runs it live and keeps the store out of the path for ``store_retry_s``; with
``stale_if_error_s`` a failed live run is answered from a stale entry if one was found.

The keyed requests of one loop pass are looked up together at the pass's end, in one query
(SQLite ``IN``, Redis ``MGET``): per request, that costs a fraction of a query of its own
(a hit ~14 -> ~7 us, measured in-process), and a network store costs one round trip per pass.

Every answer says where it came from: the response parameter ``prediction_source``
(``precomputed`` with ``prediction_age_s``, or ``live``). A hit queues nothing and runs nothing: it
counts as a success in the version's statistics (as a response-cache hit does) and as a hit here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway._native.hist import Histogram
from gateway.errors import Code, GatewayError
from gateway.model_config import PrecomputedConfig
from gateway.observe.stats import ModelStats
from gateway.pipeline.target import Done, Target, Ticket
from gateway.stores import Store
from gateway.stores.entry import BadEntry, Entry, decode, encode, fingerprint
from gateway.types import InferRequest, InferResponse

log = logging.getLogger("gateway.precomputed")

REASONS = ("miss", "stale", "version", "inputs_changed", "store_error", "no_key")
AGE_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 86400.0, 2 * 86400.0, 7 * 86400.0)
"""Seconds: bounds of the age histogram of served entries."""
_LIVE = {"prediction_source": "live"}


class PrecomputedStats:
    """This version's numbers for /metrics."""

    __slots__ = ("lookups", "hits", "fallbacks", "age", "stale_served", "store_errors", "write_backs")

    def __init__(self) -> None:
        self.lookups = 0
        self.hits = 0
        self.fallbacks = dict.fromkeys(REASONS, 0)
        self.age = Histogram(AGE_BUCKETS)  # of the entries served, seconds
        self.stale_served = 0  # stale entries answered because the live run failed (stale_if_error_s)
        self.store_errors = 0
        self.write_backs = 0

    def served(self, age: float) -> None:
        self.hits += 1
        self.age.observe(age)


class _Lookup:
    """A keyed request waiting for its pass's store lookup, then the ticket of its live run."""

    __slots__ = ("request", "done", "eager", "key", "max_age", "t0", "inner", "gone")

    def __init__(self, request: InferRequest, done: Done, eager: bool, key: str, max_age: float, t0: float) -> None:
        self.request = request
        self.done = done
        self.eager = eager
        self.key = key
        self.max_age = max_age
        self.t0 = t0
        self.inner: Ticket | None = None
        self.gone = False

    def cancel(self) -> None:
        self.gone = True
        if self.inner is not None:
            self.inner.cancel()


class _LiveAnswer:
    """``done`` of a request that runs live: marks the source, writes back, serves stale on error."""

    __slots__ = ("stage", "done", "key", "fp", "stale")

    def __init__(self, stage: PrecomputedTarget, done: Done, key: str | None, fp: bytes,
                 stale: Entry | None) -> None:
        self.stage = stage
        self.done = done
        self.key = key
        self.fp = fp
        self.stale = stale

    def __call__(self, resp: InferResponse | None, err: GatewayError | None) -> None:
        stage = self.stage
        if resp is not None:
            resp.parameters = {**resp.parameters, **_LIVE} if resp.parameters else dict(_LIVE)
            if stage.write_back and self.key is not None:
                entry = Entry(stage.version, time.time(), self.fp, resp.outputs)  # encode copies the bytes
                if stage.store.put_later(stage.name, self.key, encode(entry)):
                    stage.pstats.write_backs += 1
        elif err is not None and self.stale is not None and err.code is not Code.CANCELLED:
            age = time.time() - self.stale.computed_at
            if age <= stage.config.stale_if_error_s:
                stage.pstats.stale_served += 1
                log.info("model %s: live run failed (%s); answered a stored entry %.0f s old", stage.name,
                         err.code.name, age)
                resp = stage.response(self.stale, age, None, stale=True)
                err = None
        self.done(resp, err)


class PrecomputedTarget:
    def __init__(self, inner: Target, name: str, version: str, config: PrecomputedConfig, store: Store,
                 stats: ModelStats, clock: Callable[[], float] = time.perf_counter) -> None:
        self.inner = inner
        self.name = name
        self.version = version
        self.config = config
        self.store = store
        self.stats = stats
        self.clock = clock
        self.pstats = PrecomputedStats()
        self.key_name = config.key
        self.write_back = config.write_back
        self._broken_until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[_Lookup] = []
        self._fetches: set[asyncio.Task[None]] = set()

    # ---- the stage -------------------------------------------------------------------------
    def submit(self, request: InferRequest, done: Done, eager: bool = False) -> Ticket:
        key = request.entity
        params = request.parameters
        if key is None and params:
            key = params.get(self.key_name)
        if key is None:
            return self.live(request, done, eager, "no_key", None, None)
        key = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        max_age = self.config.max_staleness_s
        if params and "max_staleness_s" in params:
            v = params["max_staleness_s"]
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise GatewayError(Code.INVALID_ARGUMENT, f"parameter 'max_staleness_s' must be a non-negative "
                                   f"number of seconds, got {v!r}")
            max_age = min(max_age, float(v))
        t0 = self.clock()
        if t0 < self._broken_until:  # the store failed lately: do not ask it for every request
            return self.live(request, done, eager, "store_error", key, None)
        self.pstats.lookups += 1
        w = _Lookup(request, done, eager, key, max_age, t0)
        pending = self._pending
        pending.append(w)
        if len(pending) == 1:  # the first of this pass: look them all up in one query at the pass's end
            loop = self._loop or asyncio.get_running_loop()
            self._loop = loop
            loop.call_soon(self._flush)
        return w

    def _flush(self) -> None:
        """Every keyed request of the pass in one store query (SQLite: one SELECT ... IN; Redis: one
        MGET, one round trip), which costs each far less than a query of its own."""
        batch, self._pending = self._pending, []
        keys = list({w.key: None for w in batch if not w.gone})
        if not keys:
            return
        store = self.store
        if store.inline:
            try:
                found: dict[str, bytes] | None = store.get_many_now(self.name, keys)
            except Exception as exc:
                self.store_failed(exc)
                found = None
            self._settle(batch, found)
            return
        loop = self._loop or asyncio.get_running_loop()
        task = loop.create_task(self._fetch(batch, keys))
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)

    async def _fetch(self, batch: list[_Lookup], keys: list[str]) -> None:
        try:
            found: dict[str, bytes] | None = await asyncio.wait_for(self.store.get_many(self.name, keys),
                                                                    self.config.store_timeout_s or None)
        except Exception as exc:  # down, slow (TimeoutError), refused: the requests run live
            self.store_failed(exc)
            found = None
        self._settle(batch, found)

    def _settle(self, batch: list[_Lookup], found: dict[str, bytes] | None) -> None:
        for w in batch:
            if w.gone:
                continue
            try:
                if found is None:
                    w.inner = self.live(w.request, w.done, w.eager, "store_error", w.key, None)
                else:
                    w.inner = self.decide(w, found.get(w.key))
            except GatewayError as exc:  # refused (queue full, fallback = "error"): answered here, counted
                self.stats.record_failures(exc.code.name, 1)
                w.done(None, exc)
            except Exception as exc:
                log.exception("model %s: precomputed lookup failed", self.name)
                self.stats.record_failures(Code.INTERNAL.name, 1)
                w.done(None, GatewayError(Code.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"))

    def decide(self, w: _Lookup, raw: bytes | None) -> Ticket | None:
        """Answer ``w`` from ``raw`` (None: answered here), or run it live (its ticket)."""
        request, key = w.request, w.key
        if raw is None:
            return self.live(request, w.done, w.eager, "miss", key, None)
        try:
            entry = decode(raw)
        except BadEntry as exc:
            self.pstats.store_errors += 1
            log.warning("model %s: stored entry for key %r is unreadable (%s): running live", self.name, key[:100], exc)
            return self.live(request, w.done, w.eager, "store_error", key, None)
        if entry.version != self.version:
            return self.live(request, w.done, w.eager, "version", key, None)
        age = time.time() - entry.computed_at
        if age > w.max_age:
            return self.live(request, w.done, w.eager, "stale", key, entry)
        if self.config.check_inputs and entry.fingerprint and entry.fingerprint != fingerprint(request.inputs):
            return self.live(request, w.done, w.eager, "inputs_changed", key, entry)
        wanted = request.outputs
        if wanted is not None and any(n not in entry.outputs for n in wanted):
            return self.live(request, w.done, w.eager, "miss", key, None)
        age = max(0.0, age)
        self.pstats.served(age)
        stats = self.stats
        stats.extra_success_count += 1
        stats.extra_success_ns += int((self.clock() - w.t0) * 1e9)
        w.done(self.response(entry, age, request), None)
        return None

    def response(self, entry: Entry, age: float, request: InferRequest | None, stale: bool = False) -> InferResponse:
        outputs = entry.outputs
        if request is not None and request.outputs is not None:
            outputs = {n: outputs[n] for n in request.outputs}
        params: dict[str, Any] = {"prediction_source": "precomputed", "prediction_age_s": round(age, 3)}
        if stale:
            params["prediction_stale"] = True
        return InferResponse(self.name, self.version, outputs, request.id if request is not None else "", params)

    def live(self, request: InferRequest, done: Done, eager: bool, reason: str, key: str | None,
             stale: Entry | None) -> Ticket:
        self.pstats.fallbacks[reason] += 1
        if self.config.fallback == "error":
            why = "no key" if key is None else f"{reason.replace('_', ' ')} for key {key[:100]!r}"
            raise GatewayError(Code.NOT_FOUND, f"model '{self.name}': no stored prediction to serve ({why}) and "
                               "its precomputed route does not fall back to live inference")
        fp = fingerprint(request.inputs) if self.write_back and key is not None else b""
        return self.inner.submit(request, _LiveAnswer(self, done, key, fp, stale), eager)

    def store_failed(self, exc: BaseException) -> None:
        self.pstats.store_errors += 1
        retry = self.config.store_retry_s
        if self.clock() >= self._broken_until:  # one line per outage, not one per request
            log.warning("model %s: precomputed store failed (%s: %s); answering live for %.1f s", self.name,
                        type(exc).__name__, exc, retry)
        self._broken_until = self.clock() + retry

    def settle_pending(self) -> None:
        """Look up the requests of the current pass now (a retiring version: before its queue closes)."""
        if self._pending:
            self._flush()

    async def close(self) -> None:
        self.settle_pending()
        if self._fetches:  # lookups in flight are answered (live, if the store does not answer in time)
            await asyncio.wait(list(self._fetches), timeout=max(1.0, self.config.store_timeout_s))
        await self.store.close()


def wrap(target: Target, name: str, version: str, config: PrecomputedConfig | None, store: Store | None,
         stats: ModelStats, clock: Callable[[], float] = time.perf_counter) -> Target:
    """The version's target behind this stage, or the target itself when the model has no
    ``[precomputed]`` section (then the stage costs nothing)."""
    if config is None or store is None:
        return target
    return PrecomputedTarget(target, name, version, config, store, stats, clock)
