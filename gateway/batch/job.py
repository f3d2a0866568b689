"""`gateway batch`: score files of records with a model from the repository, offline.

Pipelined in three threads joined by bounded queues, across parts (no drain between files):
a reader (pyarrow, in chunks of up to 64k rows) converts each chunk to the model's input tensors
(``columns``, zero-copy where Arrow allows), the compute thread cuts a chunk into ``batch_size``
batches and runs them on the model (the server's own backend, loaded by the server's repository
code: one instance inline, several through ``run_async`` so every instance is busy, in order), a
writer appends one row group per chunk to the part's output. onnxruntime and pyarrow release the
GIL, so reading and writing run on another core while the model computes. At most ``in_flight``
chunks (of 8 MiB of input each, at most) wait between the stages: memory is bounded whatever the
input size.

Output: a directory with one file per input part (``part-00000.parquet``, in input order). A part is
written under a temporary name and renamed when complete, so an output file is never half-written,
and a part whose output exists is skipped: a job killed at any point resumes where it stopped and
computes no part twice. ``_SUCCESS`` marks a finished job. Bad rows (nulls, wrong widths) fail the
job naming their row numbers, or with ``on_error = "skip"`` go to ``rejects/`` with their number.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from gateway.batch.columns import MappingError, Source, output_columns, plan, tensors
from gateway.batch.sink import StoreSink
from gateway.compose import build_pipeline
from gateway.types import DATATYPE_TO_NUMPY

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json",
           ".ndjson": "json"}


class BadRows(Exception):
    """Rows that cannot be fed (``on_error = "fail"``); the message lists their numbers."""


@dataclass
class Summary:
    rows: int = 0
    rejected: int = 0
    parts_done: int = 0
    parts_skipped: int = 0
    seconds: float = 0.0
    output: str = ""
    stored: int = 0  # rows written to the precomputed store (--to-store)
    null_keys: int = 0  # rows not stored: their key was null

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Job:
    repository: Path
    model: str
    input: str
    output: Path
    version: str = ""
    keep: tuple[str, ...] = ()
    mapping: Mapping[str, str] = field(default_factory=dict)
    batch_size: int = 1024
    on_error: str = "fail"
    out_format: str = "parquet"
    in_flight: int = 4
    quiet: bool = False
    progress: Callable[[str], None] | None = None
    to_store: str = ""
    """A precomputed store's URL (sqlite://, redis://), or "model" for the one the model's
    ``[precomputed]`` names: every scored row is stored there too."""
    store_key: str = ""
    """The column naming each row's entity in the store (default: the first ``keep`` column)."""


def parts_of(spec: str) -> list[Path]:
    """The input files: one file, every data file of a directory (sorted), or a glob (sorted)."""
    p = Path(spec)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in FORMATS and f.is_file())
    elif any(ch in spec for ch in "*?["):
        files = sorted(Path(f) for f in glob.glob(spec) if Path(f).suffix.lower() in FORMATS)
    else:
        files = [p] if p.exists() else []
    if not files:
        raise FileNotFoundError(f"no input files at {spec} (Parquet, CSV or JSON lines)")
    return files


def read_batches(path: Path, batch_size: int) -> Iterator[pa.RecordBatch]:
    """The file's records, ``batch_size`` rows at most at a time, streamed (never the whole file)."""
    kind = FORMATS[path.suffix.lower()]
    if kind == "parquet":
        # one decoding thread: the second core is the reader's and the writer's, the first the model's
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, use_threads=False)
        return
    stream = pacsv.open_csv(path) if kind == "csv" else pajson.open_json(path)  # 1 MiB blocks
    for b in stream:
        for start in range(0, b.num_rows, batch_size):
            yield b.slice(start, batch_size)


def _writer(path: Path, fmt: str, schema: pa.Schema) -> Any:
    if fmt == "csv":
        return pacsv.CSVWriter(str(path), schema)
    # Dictionary pages only for string-like key columns (user ids, labels repeat): float predictions
    # and numeric row ids almost never do, and trying (Parquet's default) cost ~15 % of the job's
    # rows/s for the outputs and ~20 % of the writer's time for an int64 id, for a bigger file.
    # Snappy (the default) kept: none wrote more bytes no faster, lz4 and zstd were slower (1M rows).
    keys = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
            or pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) or pa.types.is_dictionary(f.type)]
    return pq.ParquetWriter(str(path), schema, use_dictionary=keys)


def run(job: Job) -> Summary:
    return asyncio.run(_run(job))


async def _run(job: Job) -> Summary:
    if job.on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be fail or skip, got {job.on_error!r}")
    # pyarrow imports pandas on its first numpy conversion (~0.2-0.3 s here): a start-up cost, like
    # the imports and the model load, paid before the scoring clock starts rather than by the first chunk
    pa.array(np.zeros(1, np.float32)).to_numpy()
    pipeline = build_pipeline(job.repository)
    registry = pipeline.registry
    await registry.load(job.model)
    stop = threading.Event()
    sink: StoreSink | None = None
    try:
        mv = registry.get(job.model, job.version)
        runner = _Runner(mv.backend, asyncio.get_running_loop(), stop)
        if job.to_store:
            job = _with_store_key(job)
            url, base = job.to_store, Path.cwd()
            if url == "model":  # the store the model's own [precomputed] section names, found as the server does
                if mv.config.precomputed is None:
                    raise MappingError(f"--to-store model: model '{job.model}' has no [precomputed] section")
                url, base = mv.config.precomputed.store, job.repository / job.model
            sink = StoreSink(url, job.model, mv.version, job.store_key, base)
        # scored off the loop thread: the loop stays free to complete run_async batches (and a remote
        # backend's health checks) while the job's threads work
        summary = await asyncio.to_thread(_score, job, runner, list(mv.signature.inputs), stop, sink)
        if sink is not None:
            summary.stored, summary.null_keys = sink.stored, sink.null_keys
        return summary
    finally:
        stop.set()  # a cancelled job (Ctrl-C) stops its threads; the unfinished part is removed
        if sink is not None:
            sink.close()
        await registry.close()


def _with_store_key(job: Job) -> Job:
    """The store's key column is one of the kept columns (the first by default; added if not kept)."""
    key = job.store_key or (job.keep[0] if job.keep else "")
    if not key:
        raise MappingError("--to-store needs the column that names each row's entity: --store-key COLUMN "
                           "(or a --keep column, the first of which is the default)")
    keep = job.keep if key in job.keep else (*job.keep, key)
    return replace(job, store_key=key, keep=keep)


class _Stopped(Exception):
    """The job was cancelled from outside (its event loop stopped)."""


class _Runner:
    """Runs one chunk's batches on the model and returns their outputs in order.

    One instance whose batches are cheap (``inline``): ``run_inline`` on the calling thread, as the
    server does on its loop, since a hand-off would cost more than it saves. Otherwise the server's
    other path: ``run_async`` from the event loop, with as many batches in flight as the backend's
    ``capacity`` (its instances), so that every instance of the model computes."""

    def __init__(self, backend: Any, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
        self.backend = backend
        self.loop = loop
        self.stop = stop

    def __call__(self, batches: list[dict[str, np.ndarray]]) -> list[Mapping[str, np.ndarray]]:
        b = self.backend
        if b.inline and b.capacity <= 1:
            return [b.run_inline(f) for f in batches]
        fut = asyncio.run_coroutine_threadsafe(self._all(batches), self.loop)
        while True:
            try:
                return fut.result(timeout=0.25)
            except concurrent.futures.TimeoutError:
                if self.stop.is_set():
                    fut.cancel()
                    raise _Stopped from None

    async def _all(self, batches: list[dict[str, np.ndarray]]) -> list[Mapping[str, np.ndarray]]:
        loop = asyncio.get_running_loop()
        out: list[Any] = [None] * len(batches)
        slots = asyncio.Semaphore(max(1, self.backend.capacity))

        async def one(i: int, feeds: dict[str, np.ndarray]) -> None:
            async with slots:
                fut: asyncio.Future[Any] = loop.create_future()

                def done(result: Any, exc: BaseException | None) -> None:
                    if fut.done():
                        return
                    if exc is not None:
                        fut.set_exception(exc)
                    else:
                        fut.set_result(result)

                self.backend.run_async(feeds, done)
                out[i] = await fut

        await asyncio.gather(*(one(i, f) for i, f in enumerate(batches)))
        return out


@dataclass
class _Part:
    index: int
    path: Path
    target: Path
    skip: bool  # its output exists: finished by an earlier run, never computed twice

    @property
    def tmp(self) -> Path:
        return self.target.with_name(f".{self.target.name}.tmp")

    @property
    def rejects_tmp(self) -> Path:
        return self.target.parent / "rejects" / f".{self.target.stem}.parquet.tmp"


@dataclass
class _Chunk:
    """Up to ``chunk_rows`` rows of one part, on their way from the reader to the writer."""

    part: _Part
    read: int  # rows read, bad ones included
    feeds: dict[str, np.ndarray]  # the good rows' input tensors
    kept: dict[str, Any]  # the --keep columns of the good rows
    rejected: pa.Table | None  # the bad rows: their numbers and --keep columns
    outputs: dict[str, np.ndarray] | None = None  # filled by the compute thread


@dataclass
class _PartEnd:
    part: _Part


_END = object()  # the reader read every part
_CHUNK_ROWS = 65536  # rows read (and written as one row group) at a time, at most...
_CHUNK_BYTES = 8 << 20  # ...and input bytes per chunk, at most (memory: in_flight chunks per queue)


def chunk_rows(sources_width: int, batch_size: int) -> int:
    """Rows per chunk for rows of ``sources_width`` bytes: a whole number of model batches."""
    rows = min(_CHUNK_ROWS, _CHUNK_BYTES // max(1, sources_width))
    return max(batch_size, rows // batch_size * batch_size)


def _row_bytes(inputs: Sequence[Any]) -> int:
    total = 0
    for spec in inputs:
        width = Source(spec, (spec.name,)).width
        total += width * np.dtype(DATATYPE_TO_NUMPY[spec.datatype]).itemsize
    return total


class _Pipe:
    """Bounded hand-offs that give up when the job stops, so no stage waits forever on a dead one."""

    def __init__(self, size: int, stop: threading.Event) -> None:
        self.q: queue.Queue[Any] = queue.Queue(size)
        self.stop = stop

    def put(self, item: Any) -> bool:
        while not self.stop.is_set():
            with contextlib.suppress(queue.Full):
                self.q.put(item, timeout=0.1)
                return True
        return False

    def get(self) -> Any:
        while True:
            try:
                return self.q.get(timeout=0.1)
            except queue.Empty:
                if self.stop.is_set():
                    return _END


def _score(job: Job, runner: _Runner, inputs: Sequence[Any], stop: threading.Event,
           sink: StoreSink | None = None) -> Summary:
    """Read, score and write every part not done yet: reader and writer threads, compute here."""
    t0 = time.perf_counter()
    files = parts_of(job.input)
    out = job.output
    out.mkdir(parents=True, exist_ok=True)
    (out / "_SUCCESS").unlink(missing_ok=True)
    summary = Summary(output=str(out))
    ext = ".csv" if job.out_format == "csv" else ".parquet"
    parts = [_Part(i, f, out / f"part-{i:05d}{ext}", (out / f"part-{i:05d}{ext}").exists())
             for i, f in enumerate(files)]
    summary.parts_skipped = sum(p.skip for p in parts)
    rows_per_chunk = chunk_rows(_row_bytes(inputs), job.batch_size)
    show = job.progress if not job.quiet else None
    total = _total_rows([p.path for p in parts if not p.skip]) if show is not None else None
    read_q, write_q = _Pipe(job.in_flight, stop), _Pipe(job.in_flight, stop)
    failure: list[BaseException] = []

    def reader() -> None:
        try:
            row_base = 0  # row numbers count from the input's first row, across parts
            for part in parts:
                if part.skip:
                    row_base += _count_rows(part.path)
                    continue
                sources: list[Source] | None = None
                for b in read_batches(part.path, rows_per_chunk):
                    if sources is None:  # per part: CSV parts may infer different types
                        sources = plan(inputs, b.schema, job.mapping)
                        missing = [k for k in job.keep if k not in b.schema.names]
                        if missing:
                            raise MappingError(f"--keep names column(s) {', '.join(missing)}, "
                                               "which the data lacks")
                    chunk = _convert(job, part, b, sources, row_base)
                    row_base += b.num_rows
                    if not read_q.put(chunk):
                        return
                if not read_q.put(_PartEnd(part)):
                    return
        except BaseException as exc:  # passed on in order: the parts before it still complete
            read_q.put(exc)
        finally:
            read_q.put(_END)

    def writer() -> None:
        try:
            _write(job, write_q, summary, sink)
        except BaseException as exc:
            failure.append(exc)
            stop.set()

    threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=writer, daemon=True)]
    for t in threads:
        t.start()
    done = 0
    try:
        while not stop.is_set() and (item := read_q.get()) is not _END:
            if isinstance(item, _Chunk):
                _compute(item, runner, job.batch_size, sink is not None)
                done += item.read
                if show is not None:
                    show(progress_line(item.part.index, len(parts), done, total, time.perf_counter() - t0))
            if not write_q.put(item):
                break
            if isinstance(item, BaseException):
                failure.append(item)
                break
        if stop.is_set() and not failure:
            failure.append(_Stopped())
    except BaseException as exc:
        failure.append(exc)
        write_q.put(exc)  # the writer completes what came before, then drops the unfinished part
    finally:
        if failure:
            stop.set()  # the reader stops at its next chunk; the writer still takes what is queued
        write_q.put(_END)
        for t in threads:
            t.join()
    if failure:
        raise failure[0]
    (out / "_SUCCESS").write_text("")
    summary.seconds = time.perf_counter() - t0
    return summary


def _convert(job: Job, part: _Part, b: pa.RecordBatch, sources: list[Source], offset: int) -> _Chunk:
    feeds, bad = tensors(b, sources)
    bad_idx = np.flatnonzero(bad)
    rejected = None
    if bad_idx.size:
        if job.on_error == "fail":
            numbers = ", ".join(str(offset + int(k)) for k in bad_idx[:20])
            more = f" (and {bad_idx.size - 20} more)" if bad_idx.size > 20 else ""
            raise BadRows(f"{part.path}: {bad_idx.size} bad row(s) (a null, or a list of the wrong width): "
                          f"row {numbers}{more}; --on-error skip writes them to rejects/ instead")
        rej = b.take(pa.array(bad_idx))
        rejected = pa.table({"row": pa.array(offset + bad_idx), **{c: rej.column(c) for c in job.keep}})
        good = b.filter(pa.array(~bad))
    else:
        good = b
    return _Chunk(part, b.num_rows, feeds, {c: good.column(c) for c in job.keep}, rejected)


def _compute(chunk: _Chunk, runner: _Runner, batch_size: int, keep_feeds: bool = False) -> None:
    feeds = chunk.feeds
    if not keep_feeds:  # the inputs are not held past the model (a store sink fingerprints them)
        chunk.feeds = {}
    n = next(iter(feeds.values())).shape[0] if feeds else 0
    if not n:
        return
    results = runner([{k: v[s:s + batch_size] for k, v in feeds.items()} for s in range(0, n, batch_size)])
    chunk.outputs = {name: np.concatenate([r[name] for r in results]) if len(results) > 1 else results[0][name]
                     for name in results[0]}


def _write(job: Job, write_q: _Pipe, summary: Summary, sink: StoreSink | None = None) -> None:
    """Append each chunk's rows to its part's output; a part's end renames it into place. Anything
    else (the end, a failure upstream, a stop) leaves the unfinished part behind, removed.
    ``sink``: the part's rows also go into a store, in one transaction committed before the rename
    (so a part whose output exists is stored whole, and an unfinished one not at all)."""
    part: _Part | None = None
    out_w: Any = None
    rej_w: Any = None
    rows = rejected = 0
    try:
        while True:
            item = write_q.get()
            if isinstance(item, _Chunk):
                if sink is not None and part is None:
                    sink.begin()
                part = item.part
                if sink is not None and item.outputs is not None:
                    sink.add(item.kept[job.store_key], item.feeds, item.outputs)
                    item.feeds = {}
                if item.outputs is not None:
                    table = pa.table({**item.kept, **output_columns(item.outputs, job.out_format == "csv")})
                    if out_w is None:
                        out_w = _writer(part.tmp, job.out_format, table.schema)
                    out_w.write_table(table)
                    rows += table.num_rows
                if item.rejected is not None:
                    if rej_w is None:
                        part.rejects_tmp.parent.mkdir(exist_ok=True)
                        rej_w = pq.ParquetWriter(str(part.rejects_tmp), item.rejected.schema)
                    rej_w.write_table(item.rejected)
                    rejected += item.rejected.num_rows
            elif isinstance(item, _PartEnd):
                part = item.part
                if out_w is None:  # every row rejected, or an empty part: still a (header-only) output
                    schema = pa.schema([*(pa.field(c, pa.null()) for c in job.keep)])
                    out_w = _writer(part.tmp, job.out_format, schema)
                out_w.close()
                out_w = None
                if rej_w is not None:
                    rej_w.close()
                    rej_w = None
                    os.replace(part.rejects_tmp, part.rejects_tmp.with_name(f"{part.target.stem}.parquet"))
                if sink is not None:
                    if not sink.open:  # a part with no rows at all
                        sink.begin()
                    sink.commit()
                os.replace(part.tmp, part.target)  # the checkpoint: this part is complete
                summary.rows += rows
                summary.rejected += rejected
                summary.parts_done += 1
                part, rows, rejected = None, 0, 0
            else:
                return
    finally:
        for w in (out_w, rej_w):
            if w is not None:
                w.close()
        if sink is not None:
            sink.abort()  # an unfinished part: none of it stored
        if part is not None:
            part.tmp.unlink(missing_ok=True)
            part.rejects_tmp.unlink(missing_ok=True)


def _count_rows(path: Path) -> int:
    if FORMATS[path.suffix.lower()] == "parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    return sum(b.num_rows for b in read_batches(path, 1 << 20))


def _total_rows(paths: Sequence[Path]) -> int | None:
    """Rows to score, from the Parquet footers (cheap); None when a part is CSV or JSON (unknown)."""
    if any(FORMATS[p.suffix.lower()] != "parquet" for p in paths):
        return None
    return sum(_count_rows(p) for p in paths)


def progress_line(index: int, parts: int, done: int, total: int | None, seconds: float) -> str:
    rate = done / seconds if seconds > 0 else 0.0
    line = f"part {index + 1}/{parts}: {done:,}"
    if total:
        line += f"/{total:,} rows ({100 * done / total:.0f} %)"
    else:
        line += " rows"
    line += f", {rate:,.0f} rows/s"
    if total and rate > 0:
        line += f", ETA {_duration(max(0, total - done) / rate)}"
    return line


def _duration(s: float) -> str:
    s = round(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


_last = [0.0]


def print_progress(line: str) -> None:
    """One status line on stderr, rewritten at most 4 times a second."""
    now = time.monotonic()
    if now - _last[0] < 0.25:
        return
    _last[0] = now
    sys.stderr.write("\r" + line[:120].ljust(60))
    sys.stderr.flush()
