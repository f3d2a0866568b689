"""Statistics of ``--workers N`` summed in every scrape: each worker shares a snapshot file.

With SO_REUSEPORT the kernel spreads connections over N processes that share nothing, so a
scrape reaches one of them. To make every scrape (``/metrics``, the statistics extension over
HTTP and gRPC) show the sum over all workers:

- the parent creates a private directory (``mkdtemp``: mode 0700) and removes it once every
  worker has exited;
- each worker writes its own counters there every ``worker_stats_interval_s`` from a loop timer
  (never per request; the numbers are read on the loop, the file written from a thread): JSON to
  a temporary name, then ``os.replace``, so a reader sees a whole old or a whole new file, never a
  torn one; and once more after it has drained at shutdown;
- the worker that answers a scrape adds its live numbers to the other workers' latest files.

Staleness: the other workers' part of a scrape is at most one interval old, plus the time their
loop takes to reach the timer when busy (``gateway_worker_snapshot_age_seconds`` shows it). A
file that cannot be read or parsed is skipped for that scrape. A worker that died keeps its last
snapshot in the sum, so counters never go backwards while the others serve.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

_PREFIX = "worker-"
_SUFFIX = ".json"


class WorkerStats:
    """One worker's side: writes its snapshot periodically, reads its peers' at scrape time."""

    def __init__(self, directory: str | os.PathLike[str], index: int, interval_s: float,
                 export: Callable[[], dict[str, Any]]) -> None:
        self.directory = Path(directory)
        self.index = index
        self.interval_s = interval_s
        self.export = export
        self.path = self.directory / f"{_PREFIX}{index}{_SUFFIX}"
        self._tmp = self.directory / f".{_PREFIX}{index}{_SUFFIX}.tmp"
        self._timer: asyncio.TimerHandle | None = None
        self._pending: asyncio.Future[None] | None = None
        self._lock = threading.Lock()
        self._seq = 0  # snapshots taken
        self._written = 0  # the newest one written

    # ---- writing ---------------------------------------------------------------------------
    def _doc(self) -> tuple[int, bytes]:
        self._seq += 1
        doc = self.export()  # on the loop thread: the numbers are only consistent there
        doc["worker"] = self.index
        doc["pid"] = os.getpid()
        doc["written_at"] = time.time()
        return self._seq, orjson.dumps(doc)

    def _write(self, snapshot: tuple[int, bytes]) -> None:
        seq, data = snapshot
        with self._lock:  # the final write at stop may meet a periodic one still in its thread
            if seq <= self._written:
                return  # a newer snapshot is already there
            self._written = seq
            try:
                self._tmp.write_bytes(data)
                os.replace(self._tmp, self.path)
            except OSError as exc:  # a full or vanished directory must not stop the worker serving
                log.warning("cannot write the worker statistics snapshot %s: %s", self.path, exc)

    def start(self) -> None:
        self._write(self._doc())
        self._schedule()

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._tick)

    def _tick(self) -> None:
        # The file I/O (most of a write's ~1 ms) goes to a thread, off the loop; a tick that finds
        # the previous write still running skips a turn rather than queueing writes up.
        if self._pending is None or self._pending.done():
            self._pending = asyncio.get_running_loop().run_in_executor(None, self._write, self._doc())
        self._schedule()

    def stop(self) -> None:
        """Stop the timer and write the final numbers (call after draining)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._write(self._doc())

    # ---- reading ---------------------------------------------------------------------------
    def peers(self) -> list[dict[str, Any]]:
        """The other workers' latest snapshots."""
        out: list[dict[str, Any]] = []
        try:
            names = os.listdir(self.directory)
        except OSError:
            return out
        for name in names:
            if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)) or name == self.path.name:
                continue
            try:
                doc = orjson.loads((self.directory / name).read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return out


REPOSITORY_LOCKED = (
    "model load/unload is refused while the server runs {n} worker processes: each holds its own "
    "copy of the models, so a change would reach only the worker that answered. Change the repository "
    "and restart, or run one worker (workers = 1) to load and unload at run time"
)
TRAFFIC_LOCKED = (
    "traffic policy changes are refused while the server runs {n} worker processes: each routes on its "
    "own, so a change would reach only the worker that answered. Set [traffic] in the model's config.toml "
    "and reload, or run one worker (workers = 1) to change policies at run time"
)
