"""Shedding at the door: refuse infer requests before decoding them while the event loop is late.

Why here and not in the admit stage: with inline backends (and with any backend once the HTTP and
JSON work alone fills the loop thread) the backlog does not build in a batch queue, which every loop
pass empties, but in the sockets, before a request is even read. Admission by expected wait never
sees it, and refusing a request after its decode costs most of what serving it would. The door
refuses before the decode: an HTTP 429 costs the head parse and a write (~5 % of serving a batch-64
JSON request), so most of the loop's time keeps going to requests that are answered in time.

The signal is the loop's lag, CoDel-style (a target on time-in-queue rather than on queue length):
a timer due every ``tick_s`` measures how late it fires. Two readings drive one bool:

- the tick: when it fired more than ``target_s`` late and more than one infer request asked since
  the last tick, the loop is behind, and the door stays shut until the next tick (``tick_s`` later,
  or as soon as the loop gets back to its timers);
- within a pass: when the tick is overdue by more than ``target_s`` now, the pass has run that long
  without reaching its timers, and the requests still unread in it have waited at least that long;
  the door shuts at once for every request after the first since the tick, without waiting for the
  tick. This is what bounds one long pass (a burst of a thousand ready connections) instead of
  serving all of it late.

Lag with a single request in it is that request's own cost (the protobuf parse of a 60 MiB gRPC
message holds the loop ~100 ms), not time anyone waited: the lone request is served, never shed.

Admitted requests therefore wait at most about two passes of ``target_s``; refusals are answered in
microseconds of server time. Why not adaptive LIFO: the order in which ready sockets are read is the
kernel's and libuv's, not ours, and a connection's pipelined requests must be answered in order.
Health, readiness, metadata and /metrics never pass the door: they are cheap, and they are how an
operator sees the overload. ``target_s = 0`` turns the door off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gateway._native.door import DoorState
from gateway.errors import Code, GatewayError


class Door(DoorState):
    """The door: ``refuse`` (in C, ``_native.door``) is asked by every infer request."""

    __slots__ = ("_timer",)

    def __init__(self, target_s: float, tick_s: float = 0.005,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.target_s = target_s
        self.tick_s = tick_s
        self.clock = clock
        self.shut = False
        """Infer requests are refused while this is set (read by the fronts through ``refuse``)."""
        self.refused = 0
        """Infer requests refused at the door, since start."""
        self.asked = 0
        """Infer requests that asked since the last tick."""
        self.lag_s = 0.0
        """How late the last tick fired."""
        self.max_lag_s = 0.0
        """The largest lag since the last ``take_max_lag`` (the metrics gauge resets it per scrape)."""
        self._overdue = float("inf")  # clock reading past which a pass has outlived the target
        self._timer: asyncio.TimerHandle | None = None

    @property
    def enabled(self) -> bool:
        return self.target_s > 0

    def start(self) -> None:
        if not self.enabled or self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        due = self.clock() + self.tick_s

        def tick() -> None:
            nonlocal due
            now = self.clock()
            self.observe(now, due)
            due = now + self.tick_s
            self._timer = loop.call_later(self.tick_s, tick)

        self._overdue = due + self.target_s
        self._timer = loop.call_later(self.tick_s, tick)

    def observe(self, now: float, due: float) -> None:
        """The tick meant for ``due`` fired at ``now``; the next is due ``tick_s`` from now."""
        lag = max(0.0, now - due)
        self.lag_s = lag
        if lag > self.max_lag_s:
            self.max_lag_s = lag
        self.shut = lag > self.target_s and self.asked > 1
        self.asked = 0
        self._overdue = now + self.tick_s + self.target_s

    def error(self) -> GatewayError:
        """What a refused request is told (the fronts build their answer from it once)."""
        return GatewayError(Code.RESOURCE_EXHAUSTED,
                            f"server is overloaded: its event loop runs more than {self.target_s * 1000:g} ms late "
                            "(shed_loop_lag_ms); retry later", retry_after_s=1)

    def take_max_lag(self) -> float:
        lag, self.max_lag_s = self.max_lag_s, self.lag_s
        return lag

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.shut = False
        self._overdue = float("inf")
