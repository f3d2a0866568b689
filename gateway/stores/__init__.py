"""Stores of precomputed predictions (the hybrid route): SQLite (embedded, the default) and Redis.

Two faces per store: a serving one (``Store``: lookups and buffered write-back, on the event loop)
and a bulk one (``BulkWriter``: ``gateway batch --to-store``, one transaction per input part). Both
hold ``entry.encode``d values under (model, key), so any writer and any reader agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol


class Store(Protocol):
    inline: bool
    """True: ``get_many_now`` answers on the caller's thread in microseconds (an embedded file);
    False: ``get_many`` is awaited (a network store)."""

    def get_many_now(self, model: str, keys: list[str]) -> dict[str, bytes]:
        """The stored values of those of ``keys`` that have one."""
        ...

    async def get_many(self, model: str, keys: list[str]) -> dict[str, bytes]: ...

    def put_later(self, model: str, key: str, value: bytes) -> bool:
        """Buffer a write-back, written off the request path; False when the buffer is full (dropped)."""
        ...

    async def close(self) -> None: ...


class BulkWriter(Protocol):
    """One transaction at a time: ``begin``, ``add`` any number of times, ``commit`` (all of it is
    stored) or ``abort`` (none of it is)."""

    def begin(self) -> None: ...

    def add(self, model: str, items: Iterable[tuple[str, bytes]]) -> int: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


def write_all(writer: BulkWriter, model: str, items: Iterable[tuple[str, bytes]]) -> int:
    """(key, value) pairs in one transaction; returns how many."""
    writer.begin()
    try:
        n = writer.add(model, items)
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    return n


def _is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "unix://"))


def sqlite_path(url: str, base: Path) -> Path:
    """``sqlite:///abs.db`` is /abs.db; ``sqlite://rel.db`` and ``sqlite:rel.db`` are relative to ``base``."""
    rest = url.removeprefix("sqlite:")
    if rest.startswith("//"):
        rest = rest[2:]
    if not rest:
        raise ValueError(f"{url!r} names no file")
    p = Path(rest)
    return p if p.is_absolute() else base / p


def open_store(url: str, base: Path, timeout_s: float, pending: int) -> Store:
    """The serving store for ``url``; connects lazily (on first use, on the event loop)."""
    if _is_redis(url):
        from gateway.stores.redis import RedisStore

        return RedisStore(url, timeout_s, pending)
    if url.startswith("sqlite:"):
        from gateway.stores.sqlite import SqliteStore

        return SqliteStore(sqlite_path(url, base), pending)
    raise ValueError(f"unknown store URL {url!r} (sqlite:// or redis://)")


def open_writer(url: str, base: Path) -> BulkWriter:
    if _is_redis(url):
        from gateway.stores.redis import RedisWriter

        return RedisWriter(url)
    if url.startswith("sqlite:"):
        from gateway.stores.sqlite import SqliteWriter

        return SqliteWriter(sqlite_path(url, base))
    raise ValueError(f"unknown store URL {url!r} (sqlite:// or redis://)")
