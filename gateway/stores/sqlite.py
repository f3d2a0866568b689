"""The embedded store: one SQLite file, in WAL mode so that readers never wait for a writer.

Serving reads run inline on the event loop, one query per loop pass for all its keyed requests: a
primary-key lookup in a file the page cache holds takes microseconds, less than handing it to a
thread would. Nothing on the loop ever waits
for a lock: reads in WAL mode take none, and write-back (buffered, flushed in one transaction per
``FLUSH_S``) uses a zero busy timeout, so a batch job holding the write lock makes a flush fail
(its entries are dropped and counted) rather than stall requests.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("gateway.stores")

SCHEMA = ("CREATE TABLE IF NOT EXISTS predictions (model TEXT NOT NULL, key TEXT NOT NULL, "
          "value BLOB NOT NULL, written_at REAL NOT NULL, PRIMARY KEY (model, key)) WITHOUT ROWID")
_GET_IN: dict[int, str] = {}  # SELECT ... key IN (?, ...) by the number of keys (sqlite3 caches each prepared)
_IN_MAX = 256  # keys per query, at most
_PUT = "INSERT OR REPLACE INTO predictions (model, key, value, written_at) VALUES (?, ?, ?, ?)"
FLUSH_S = 0.01


def connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across a crash of ours, not of the OS
    conn.execute(SCHEMA)
    return conn


class SqliteStore:
    inline = True

    def __init__(self, path: Path, pending: int) -> None:
        self.path = path
        self.max_pending = pending
        self.pending: dict[tuple[str, str], bytes] = {}
        self.dropped = 0
        self._conn: sqlite3.Connection | None = None
        self._cur: sqlite3.Cursor | None = None
        self._flush: asyncio.TimerHandle | None = None

    def _db(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            # a lookup never waits for a lock (reads take none in WAL; the schema step may, once)
            conn = self._conn = connect(self.path, 100)
            conn.execute("PRAGMA busy_timeout = 0")
        return conn

    def get_many_now(self, model: str, keys: list[str]) -> dict[str, bytes]:
        cur = self._cur
        if cur is None:
            cur = self._cur = self._db().cursor()
        out: dict[str, bytes] = {}
        for i in range(0, len(keys), _IN_MAX):
            part = keys[i:i + _IN_MAX]
            n = len(part)
            sql = _GET_IN.get(n)
            if sql is None:
                sql = _GET_IN[n] = f"SELECT key, value FROM predictions WHERE model = ? AND key IN ({','.join('?' * n)})"
            out.update(cur.execute(sql, (model, *part)).fetchall())
        return out

    async def get_many(self, model: str, keys: list[str]) -> dict[str, bytes]:
        return self.get_many_now(model, keys)

    def put_later(self, model: str, key: str, value: bytes) -> bool:
        if len(self.pending) >= self.max_pending:
            self.dropped += 1
            return False
        self.pending[(model, key)] = value
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)
        return True

    def flush(self) -> None:
        """Write the buffered write-backs in one transaction (on the loop: a WAL commit without fsync)."""
        self._flush = None
        items, self.pending = self.pending, {}
        if not items:
            return
        now = time.time()
        try:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(_PUT, [(m, k, v, now) for (m, k), v in items.items()])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self.dropped += len(items)
            log.warning("precomputed store %s: %d write-back(s) dropped: %s", self.path, len(items), exc)

    async def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self.flush()
        if self._conn is not None:
            self._conn.close()
            self._conn = self._cur = None


class SqliteWriter:
    """Bulk writes (``gateway batch --to-store``): one transaction per part, waiting up to 30 s for
    a write-back flush that holds the lock. While a part's transaction is open, the servers'
    write-backs to this file fail fast and are dropped (counted); their reads go on."""

    def __init__(self, path: Path) -> None:
        self.conn = connect(path, 30_000)
        self.now = 0.0

    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self.now = time.time()

    def add(self, model: str, items: Iterable[tuple[str, bytes]]) -> int:
        rows = [(model, k, v, self.now) for k, v in items]
        self.conn.executemany(_PUT, rows)
        return len(rows)

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def abort(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()
