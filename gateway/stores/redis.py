"""The production store: Redis (``redis://host:port/db``), through redis-py's asyncio client.

Values live under ``gateway:pred:<model>:<key>``. The keyed requests of one loop pass are looked up
with one MGET (one round trip). Every call has ``store_timeout_s`` as its socket
timeout and no retries: a slow or stopped Redis costs a request at most that long once, after which
the route stops asking for ``store_retry_s`` (see ``gateway.pipeline.precomputed``) and answers live.
Write-backs are buffered and sent as one pipeline per flush, from a task of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("gateway.stores")

PREFIX = "gateway:pred:"
FLUSH_S = 0.01
CONNECTIONS = 64
"""Connections to Redis per model version (lookups in flight at once, each waits for its reply)."""


def redis_key(model: str, key: str) -> str:
    return f"{PREFIX}{model}:{key}"


def _no_retry() -> Any:
    # The asyncio client's own Retry: redis-py 8.2 warns about (and converts) the synchronous one.
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Retry(NoBackoff(), 0)


class RedisStore:
    inline = False

    def __init__(self, url: str, timeout_s: float, pending: int) -> None:
        self.url = url
        self.timeout_s = timeout_s or None
        self.max_pending = pending
        self.pending: dict[str, bytes] = {}
        self.dropped = 0
        self._client: Any = None
        self._flushing: asyncio.Task[None] | None = None

    def _redis(self) -> Any:
        if self._client is None:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(
                self.url, socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s, retry=_no_retry(),
                max_connections=CONNECTIONS, health_check_interval=0)
        return self._client

    def get_many_now(self, model: str, keys: list[str]) -> dict[str, bytes]:
        raise NotImplementedError("a network store is awaited: use get_many()")

    async def get_many(self, model: str, keys: list[str]) -> dict[str, bytes]:
        values = await self._redis().mget([redis_key(model, k) for k in keys])
        return {k: v for k, v in zip(keys, values, strict=True) if v is not None}

    def put_later(self, model: str, key: str, value: bytes) -> bool:
        if len(self.pending) >= self.max_pending:
            self.dropped += 1
            return False
        self.pending[redis_key(model, key)] = value
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())
        return True

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(FLUSH_S)
            while self.pending:
                items, self.pending = self.pending, {}
                try:
                    pipe = self._redis().pipeline(transaction=False)
                    for k, v in items.items():
                        pipe.set(k, v)
                    await pipe.execute()
                except Exception as exc:  # the store is down: write-back is best effort, counted
                    self.dropped += len(items)
                    log.warning("precomputed store %s: %d write-back(s) dropped: %s", self.url, len(items), exc)
        finally:
            self._flushing = None

    async def close(self) -> None:
        if self._flushing is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._flushing), 1.0)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None


class RedisWriter:
    """Bulk writes: each part is one MULTI/EXEC transaction (all of its entries or none). The
    commands are held client-side until ``commit``: a part's entries are in memory once."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=60, socket_connect_timeout=10)
        self.client.ping()
        self.pipe: Any = None

    def begin(self) -> None:
        self.pipe = self.client.pipeline(transaction=True)

    def add(self, model: str, items: Iterable[tuple[str, bytes]]) -> int:
        n = 0
        for k, v in items:
            self.pipe.set(redis_key(model, k), v)
            n += 1
        return n

    def commit(self) -> None:
        self.pipe.execute()
        self.pipe = None

    def abort(self) -> None:
        if self.pipe is not None:
            self.pipe.reset()
            self.pipe = None

    def close(self) -> None:
        self.client.close()
