"""`gateway batch`: score files of records with a model from the repository, offline.

Pipelined in three threads joined by bounded queues: a reader (pyarrow, by row group or block)
feeds record batches, the caller's thread converts them (``columns``) and runs them on the model
(the server's own backend, loaded by the server's repository code; onnxruntime releases the GIL, so
reading and writing overlap the compute), a writer appends to the part's output. At most
``in_flight`` batches are held between the stages, so memory is bounded whatever the input size.

Output: a directory with one file per input part (``part-00000.parquet``, in input order). A part is
written under a temporary name and renamed when complete, so an output file is never half-written,
and a part whose output exists is skipped: a job killed at any point resumes where it stopped and
computes no part twice. ``_SUCCESS`` marks a finished job. Bad rows (nulls, wrong widths) fail the
job naming their row numbers, or with ``on_error = "skip"`` go to ``rejects/`` with their number.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from gateway.batch.columns import MappingError, Source, output_columns, plan, tensors
from gateway.compose import build_pipeline

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
    kind = FORMATS[path.suffix.lower()]
    if kind == "parquet":
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size)
        return
    table = pacsv.read_csv(path) if kind == "csv" else pajson.read_json(path)
    yield from table.to_batches(max_chunksize=batch_size)


def _writer(path: Path, fmt: str, schema: pa.Schema) -> Any:
    if fmt == "csv":
        return pacsv.CSVWriter(str(path), schema)
    # no dictionary pages for the model's outputs: float predictions almost never repeat, and trying
    # (Parquet's default) cost ~15 % of the job's rows/s (bench/batch_bench.py)
    keys = [f.name for f in schema if not (pa.types.is_floating(f.type) or pa.types.is_fixed_size_list(f.type))]
    return pq.ParquetWriter(str(path), schema, use_dictionary=keys)


def run(job: Job) -> Summary:
    return asyncio.run(_run(job))


async def _run(job: Job) -> Summary:
    if job.on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be fail or skip, got {job.on_error!r}")
    pipeline = build_pipeline(job.repository)
    registry = pipeline.registry
    await registry.load(job.model)
    try:
        mv = registry.get(job.model, job.version)
        return _score(job, mv.backend, list(mv.signature.inputs))
    finally:
        await registry.close()


def _score(job: Job, backend: Any, inputs: Sequence[Any]) -> Summary:
    t0 = time.perf_counter()
    files = parts_of(job.input)
    out = job.output
    out.mkdir(parents=True, exist_ok=True)
    (out / "_SUCCESS").unlink(missing_ok=True)
    summary = Summary(output=str(out))
    ext = ".csv" if job.out_format == "csv" else ".parquet"
    row_base = 0
    for i, part in enumerate(files):
        target = out / f"part-{i:05d}{ext}"
        if target.exists():  # finished by an earlier run: never computed twice
            summary.parts_skipped += 1
            row_base += _count_rows(part)  # (row numbers of later parts' rejects count from the input's start)
            continue
        rows, rejected, read = _score_part(job, backend, inputs, part, target, i, row_base, summary, t0)
        summary.rows += rows
        summary.rejected += rejected
        summary.parts_done += 1
        row_base += read
    (out / "_SUCCESS").write_text("")
    summary.seconds = time.perf_counter() - t0
    return summary


def _count_rows(path: Path) -> int:
    if FORMATS[path.suffix.lower()] == "parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    return sum(b.num_rows for b in read_batches(path, 1 << 20))


_END = object()
_READ_ROWS = 65536  # rows per row group written (model batches are gathered to this)


def _score_part(job: Job, backend: Any, inputs: Sequence[Any], part: Path, target: Path, index: int,
                row_base: int, summary: Summary, t0: float) -> tuple[int, int, int]:
    """Read, score and write one input part; returns (rows written, rows rejected, rows read)."""
    tmp = target.with_name(f".{target.name}.tmp")
    rejects_tmp = target.parent / "rejects" / f".{target.stem}.parquet.tmp"
    read_q: queue.Queue[Any] = queue.Queue(job.in_flight)
    write_q: queue.Queue[Any] = queue.Queue(job.in_flight)
    failure: list[BaseException] = []

    def reader() -> None:
        try:
            for b in read_batches(part, job.batch_size):
                read_q.put(b)
        except BaseException as exc:  # reported by the caller's thread
            failure.append(exc)
        finally:
            read_q.put(_END)

    state: dict[str, Any] = {"writer": None, "rejects": None}

    def writer() -> None:
        pending: list[pa.Table] = []  # written in row groups of ~_READ_ROWS, not one per model batch
        held = 0
        try:
            while True:
                item = write_q.get()
                end = item is _END
                table, rejected = (None, None) if end else item
                if table is not None and table.num_rows:
                    pending.append(table)
                    held += table.num_rows
                if pending and (end or held >= _READ_ROWS):
                    whole = pa.concat_tables(pending)
                    if state["writer"] is None:
                        state["writer"] = _writer(tmp, job.out_format, whole.schema)
                    state["writer"].write_table(whole)
                    pending, held = [], 0
                if end:
                    return
                if rejected is not None:
                    if state["rejects"] is None:
                        rejects_tmp.parent.mkdir(exist_ok=True)
                        state["rejects"] = pq.ParquetWriter(str(rejects_tmp), rejected.schema)
                    state["rejects"].write_table(rejected)
        except BaseException as exc:
            failure.append(exc)
            while write_q.get() is not _END:  # keep draining: the compute thread must not block
                pass

    threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=writer, daemon=True)]
    for t in threads:
        t.start()
    rows = rejected_rows = 0
    sources: list[Source] | None = None
    offset = row_base
    try:
        while (b := read_q.get()) is not _END:
            if failure:
                break
            if sources is None:
                sources = plan(inputs, b.schema, job.mapping)
                missing = [k for k in job.keep if k not in b.schema.names]
                if missing:
                    raise MappingError(f"--keep names column(s) {', '.join(missing)}, which the data lacks")
            feeds, bad = tensors(b, sources)
            bad_idx = np.flatnonzero(bad)
            rejected = None
            if bad_idx.size:
                if job.on_error == "fail":
                    numbers = ", ".join(str(offset + int(k)) for k in bad_idx[:20])
                    more = f" (and {bad_idx.size - 20} more)" if bad_idx.size > 20 else ""
                    raise BadRows(f"{part}: {bad_idx.size} bad row(s) (a null, or a list of the wrong width): "
                                  f"row {numbers}{more}; --on-error skip writes them to rejects/ instead")
                rej = b.take(pa.array(bad_idx))
                rejected = pa.table({"row": pa.array(offset + bad_idx), **{c: rej.column(c) for c in job.keep}})
            table = None
            if feeds and next(iter(feeds.values())).shape[0]:
                outputs = backend.run_inline(feeds)
                good = b.filter(pa.array(~bad)) if bad_idx.size else b
                kept = {c: good.column(c) for c in job.keep}
                table = pa.table({**kept, **output_columns(outputs, job.out_format == "csv")})
                rows += table.num_rows
            rejected_rows += int(bad_idx.size)
            offset += b.num_rows
            write_q.put((table, rejected))
            if not job.quiet and job.progress is not None:
                done = summary.rows + rows
                job.progress(f"part {index}: {done} rows, {done / max(1e-9, time.perf_counter() - t0):,.0f} rows/s")
    except BaseException:
        _finish(threads, read_q, write_q, state)
        tmp.unlink(missing_ok=True)
        rejects_tmp.unlink(missing_ok=True)
        raise
    _finish(threads, read_q, write_q, state)
    if failure:
        tmp.unlink(missing_ok=True)
        raise failure[0]
    if state["writer"] is None:  # every row rejected, or an empty part: still a (header-only) output
        schema = pa.schema([*(pa.field(c, pa.null()) for c in job.keep)])
        _writer(tmp, job.out_format, schema).close()
    if state["rejects"] is not None:
        os.replace(rejects_tmp, rejects_tmp.with_name(f"{target.stem}.parquet"))
    os.replace(tmp, target)  # the checkpoint: this part is complete
    return rows, rejected_rows, offset - row_base


def _finish(threads: list[threading.Thread], read_q: queue.Queue[Any], write_q: queue.Queue[Any],
            state: dict[str, Any]) -> None:
    """Stop the reader (drain what it still puts), let the writer finish, close the files."""
    write_q.put(_END)
    reader, writer = threads
    while reader.is_alive():
        with contextlib.suppress(queue.Empty):
            read_q.get(timeout=0.05)
    writer.join()
    for w in state.values():
        if w is not None:
            w.close()


_last = [0.0]


def print_progress(line: str) -> None:
    """One status line on stderr, rewritten at most 4 times a second."""
    now = time.monotonic()
    if now - _last[0] < 0.25:
        return
    _last[0] = now
    sys.stderr.write("\r" + line[:120].ljust(60))
    sys.stderr.flush()
