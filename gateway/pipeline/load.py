"""How busy the event loop thread is: the signal that sheds optional work (shadow copies) first.

Queue depth is no saturation signal here: with inline backends every loop pass empties the queues,
so a loop that is 100 % busy parsing requests still shows empty queues. What saturates is the loop
thread's CPU, so that is what is measured: every ``interval_s`` the thread's CPU time
(``time.thread_time``, read on the loop thread itself) over the wall time since the last look. One
timer callback per interval; the request path reads a bool.

``saturated`` turns on at ``high`` and off again only below ``low`` (hysteresis), so optional work
that itself pushes the loop over the line does not flap on and off every interval.
"""

from __future__ import annotations

import asyncio
import time


class LoopLoad:
    def __init__(self, interval_s: float = 0.1, high: float = 0.85, low: float = 0.7) -> None:
        self.interval_s = interval_s
        self.high = high
        self.low = low
        self.busy = 0.0
        """The loop thread's CPU share over the last interval, 0..1."""
        self.saturated = False
        self._timer: asyncio.TimerHandle | None = None
        self._wall = 0.0
        self._cpu = 0.0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._wall, self._cpu = time.perf_counter(), time.thread_time()

        def look() -> None:
            self.sample(time.perf_counter(), time.thread_time())
            self._timer = loop.call_later(self.interval_s, look)

        self._timer = loop.call_later(self.interval_s, look)

    def sample(self, wall: float, cpu: float) -> None:
        dw = wall - self._wall
        if dw <= 0:
            return
        self.busy = min(1.0, max(0.0, (cpu - self._cpu) / dw))
        self._wall, self._cpu = wall, cpu
        if self.saturated:
            self.saturated = self.busy >= self.low
        else:
            self.saturated = self.busy >= self.high

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
