"""Live progress (rich) while a run goes, fed by the generators' once-per-interval ticks.

Ticks arrive per generator process; the display keeps the latest one of each and shows the sums
(sent, answered, errors, in flight, connections) and the worst recent p99. ``Quiet`` drops them.
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["Quiet", "LiveDisplay", "summary_table"]


class Quiet:
    def start(self, label: str, seconds: float) -> None:
        pass

    def tick(self, snap: dict[str, Any]) -> None:
        pass

    def stop(self) -> None:
        pass

    def print(self, *args: Any) -> None:
        pass


class LiveDisplay(Quiet):
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.snaps: dict[int, dict[str, Any]] = {}

    def start(self, label: str, seconds: float) -> None:
        self.snaps = {}
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), TimeElapsedColumn(),
                                 TextColumn("{task.fields[stats]}"), console=self.console,
                                 refresh_per_second=4, transient=False)
        self.progress.start()
        self.task = self.progress.add_task(label, total=max(seconds, 1e-3), stats="starting")

    def tick(self, snap: dict[str, Any]) -> None:
        if self.progress is None or self.task is None:
            return
        self.snaps[snap["proc"]] = snap
        s = list(self.snaps.values())

        def tot(k: str) -> int:
            return sum(int(x[k]) for x in s)

        p99 = max((x["p99_ms"] for x in s if not math.isnan(x["p99_ms"])), default=float("nan"))
        t = max(x["t"] for x in s)
        stats = (f"sent {tot('sent'):,}  answered {tot('done'):,}  rate {tot('done') / max(t, 1e-9):,.0f}/s  "
                 f"err {tot('errors'):,}  late {tot('late'):,}  in-flight {tot('in_flight'):,}  "
                 f"conns {tot('conns'):,}  p99 {p99:,.1f} ms")
        self.progress.update(self.task, completed=t, stats=stats)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def print(self, *args: Any) -> None:
        self.console.print(*args)


def summary_table(s: dict[str, Any], title: str) -> Table:
    t = Table(title=title, show_header=True)
    for col in ("intended/s", "answered/s", "ok", "errors", "late", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms",
                "max ms", "gen CPU"):
        t.add_column(col, justify="right")
    lat = s["latency_ms"]
    t.add_row("-" if s.get("intended_rps") is None else f"{s['intended_rps']:,.0f}", f"{s['achieved_rps']:,.0f}",
              f"{s['requests']['ok']:,}", f"{s['requests']['errors']:,}", f"{s['requests']['late']:,}",
              *(f"{lat[k]:,.2f}" for k in ("p50", "p90", "p99", "p99_9", "max")),
              f"{s['generator']['cpu_cores_used']:.2f}")
    return t
