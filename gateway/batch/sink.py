"""`gateway batch --to-store`: a job's predictions written into a precomputed store, keyed by a column.

Each input part is one store transaction, committed before the part's output file is renamed into
place: a part whose output exists is in the store, and a job killed mid-part leaves none of that
part in the store (SQLite rolls back; Redis never received the MULTI's EXEC), so the rerun that
recomputes the part writes it whole. Entries carry the model's version, the part's computed-at time
and each row's input fingerprint (``gateway.stores.entry``), so the server can tell a stale, other-
version or changed-context entry. Rows whose key is null are not stored, and are counted.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa

from gateway.stores import BulkWriter, open_writer
from gateway.stores.entry import encode_rows, row_fingerprints


class StoreSink:
    def __init__(self, url: str, model: str, version: str, key_column: str, base: Path | None = None) -> None:
        self.writer: BulkWriter = open_writer(url, base or Path.cwd())
        self.model = model
        self.version = version
        self.key_column = key_column
        self.stored = 0
        self.null_keys = 0
        self.open = False
        self._at = 0.0

    def begin(self) -> None:
        self.writer.begin()
        self.open = True
        self._at = time.time()

    def add(self, keys: pa.Array | pa.ChunkedArray, feeds: Mapping[str, np.ndarray],
            outputs: Mapping[str, np.ndarray]) -> None:
        """One scored batch: ``keys``, ``feeds`` and ``outputs`` row-aligned (bad rows already out)."""
        valid = keys.is_valid()
        ok = np.asarray(valid.to_numpy(zero_copy_only=False), dtype=bool)
        if not ok.all():
            self.null_keys += int((~ok).sum())
            idx = np.flatnonzero(ok)
            keys = keys.take(pa.array(idx))
            feeds = {k: v[idx] for k, v in feeds.items()}
            outputs = {k: v[idx] for k, v in outputs.items()}
        names = [str(k) for k in keys.to_pylist()]
        values = encode_rows(self.version, self._at, row_fingerprints(feeds), outputs)
        self.stored += self.writer.add(self.model, zip(names, values, strict=True))

    def commit(self) -> None:
        self.writer.commit()
        self.open = False

    def abort(self) -> None:
        if self.open:
            self.writer.abort()
            self.open = False

    def close(self) -> None:
        self.abort()
        self.writer.close()
