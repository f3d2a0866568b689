"""`gateway batch --engine ray`: the same job on Ray Data, for inputs one machine cannot score in time.

The plan is Ray Data's own: ``read_parquet`` (or ``read_csv`` / ``read_json``) over the job's input
files -> ``map_batches(Scorer)`` on a fixed pool of ``concurrency`` actors, each loading the model
once with the server's repository code and converting with the local engine's ``columns`` module
-> ``write_parquet`` (or ``write_csv``). No scheduling of our own: Ray places the actors, streams the
blocks with backpressure, and retries failed read and write tasks.

Differences from the local engine, each because Ray Data decides it:

- Output files are named by Ray (``<uuid>_<block>.parquet``, not ``part-XXXXX``), one per written
  block, rows in no particular order: join or sort on a ``--keep`` key. The files are written into
  ``output/_ray_tmp/`` and moved into ``output/`` only when the whole job succeeded, then
  ``_SUCCESS`` is written; a failed job leaves no output file.
- No resume: a job is one Ray Data execution (Ray retries its failed tasks instead). The output
  directory must hold no output files (``*.parquet``, ``*.csv``, ``rejects/``) from an earlier run.
- Bad rows cannot be named by input row number (Ray Data does not carry a row's position in its
  file). They are named by their file and by the values of the first ``--keep`` column (the key:
  keep one to make bad rows findable), else by their index in the model batch. They are gathered
  by one small actor (bad rows only, so few) and the job fails after the pass, naming them all
  (``on_error = "fail"``: a job failed from inside an actor would leave that actor holding its
  CPUs until its executor is collected), or they are written to ``output/rejects/rejects.parquet``:
  ``file``, then the ``--keep`` columns.
- One input format per job (the files' suffix picks the reader).

``ray.init()`` is called when Ray is not initialised yet: it joins the cluster at ``RAY_ADDRESS``
when set, else starts a local instance, which is shut down when the job ends. On a cluster, the
workers need this package installed (or shipped with a ``runtime_env``), and the repository and the
output directory on a filesystem every node sees.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from gateway.batch.columns import MappingError, Source, output_columns, plan, tensors
from gateway.batch.job import FORMATS, BadRows, Job, Summary, parts_of

_TMP = "_ray_tmp"
_PATH = "path"  # the column Ray Data's include_paths adds: the row's input file


class Scorer:
    """The model on one Ray actor: loaded once in ``__init__``, then called on each batch."""

    def __init__(self, repository: str, model: str, version: str, keep: tuple[str, ...],
                 mapping: dict[str, str], on_error: str, csv: bool, rejects: Any) -> None:
        from gateway.compose import build_pipeline  # on the actor: its own registry and session

        registry = build_pipeline(repository).registry
        asyncio.run(registry.load(model))
        mv = registry.get(model, version)
        self._registry = registry  # held: the backend lives as long as the actor
        self.backend = mv.backend
        self.inputs = list(mv.signature.inputs)
        self.keep, self.mapping, self.on_error, self.csv = keep, mapping, on_error, csv
        self.rejects = rejects
        self.sources: list[Source] | None = None

    def __call__(self, table: pa.Table) -> pa.Table:
        b = table.drop_columns([_PATH]).combine_chunks()
        batch = b.to_batches()[0] if b.num_rows else pa.RecordBatch.from_pylist([], schema=b.schema)
        if self.sources is None:
            self.sources = plan(self.inputs, batch.schema, self.mapping)
            missing = [k for k in self.keep if k not in batch.schema.names]
            if missing:
                raise MappingError(f"--keep names column(s) {', '.join(missing)}, which the data lacks")
        feeds, bad = tensors(batch, self.sources)
        bad_idx = np.flatnonzero(bad)
        if bad_idx.size:  # to the driver, which fails the job or writes them to rejects/
            rej = table.take(pa.array(bad_idx))
            self.rejects.add.remote(pa.table({"file": rej.column(_PATH), "batch_row": pa.array(bad_idx),
                                              **{c: rej.column(c) for c in self.keep}}))
            good = batch.filter(pa.array(~bad))
        else:
            good = batch
        kept = {c: good.column(c) for c in self.keep}
        if not good.num_rows:
            return pa.table(kept)
        return pa.table({**kept, **output_columns(self.backend.run_inline(feeds), self.csv)})


def _describe(rej: pa.Table, keep: tuple[str, ...]) -> str:
    files = sorted(set(rej.column("file").to_pylist()))
    if keep:
        names = f"{keep[0]} " + ", ".join(str(v) for v in rej.column(keep[0]).to_pylist()[:20])
    else:  # no key: the index within its model batch is all Ray Data gives
        names = ("batch row " + ", ".join(str(v) for v in rej.column("batch_row").to_pylist()[:20])
                 + " (--keep a key column to name them)")
    more = f" (and {rej.num_rows - 20} more)" if rej.num_rows > 20 else ""
    return (f"{', '.join(files)}: {rej.num_rows} bad row(s) (a null, or a list of the wrong width): "
            f"{names}{more}; --on-error skip writes them to rejects/ instead")


class _Rejects:
    """Gathers the rejected rows of every actor (a Ray actor of its own, no CPU reserved)."""

    def __init__(self) -> None:
        self.tables: list[pa.Table] = []

    def add(self, table: pa.Table) -> None:
        self.tables.append(table)

    def take(self) -> list[pa.Table]:
        return self.tables


def run_ray(job: Job, concurrency: int = 2) -> Summary:
    """Score ``job`` on Ray Data with ``concurrency`` actors; the summary counts rows from the output."""
    import ray
    import ray.data

    if job.on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be fail or skip, got {job.on_error!r}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    files = parts_of(job.input)
    kinds = {FORMATS[f.suffix.lower()] for f in files}
    if len(kinds) > 1:
        raise ValueError(f"the Ray engine reads one format per job; the input mixes {', '.join(sorted(kinds))}")
    out = job.output
    ext = ".csv" if job.out_format == "csv" else ".parquet"
    if out.exists():
        earlier = [p.name for p in out.iterdir() if p.suffix in (".parquet", ".csv") or p.name == "rejects"]
        if earlier:
            raise FileExistsError(f"{out} holds output of an earlier run ({', '.join(sorted(earlier)[:3])}, ...): "
                                  "the Ray engine does not resume; remove it or choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    (out / "_SUCCESS").unlink(missing_ok=True)
    tmp = out / _TMP
    shutil.rmtree(tmp, ignore_errors=True)  # a killed run's leftovers

    rejects: Any = None
    started = not ray.is_initialized()
    if started:
        ray.init(logging_level=logging.WARNING, log_to_driver=not job.quiet)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = not job.quiet
        t0 = time.perf_counter()
        rejects = ray.remote(num_cpus=0)(_Rejects).remote()
        failed = _execute(job, concurrency, files, kinds.pop(), tmp, rejects)
        if failed is not None:
            gc.collect()  # (the failed execution's actors go when its executor, held in cycles, is collected)
            raise failed
        tables = ray.get(rejects.take.remote())
        bad = pa.concat_tables(tables).sort_by([("file", "ascending"), ("batch_row", "ascending")]) if tables else None
        if bad is not None and job.on_error == "fail":
            raise BadRows(_describe(bad, tuple(job.keep)))
        summary = Summary(output=str(out))
        written = sorted(tmp.glob(f"*{ext}")) if tmp.exists() else []
        for f in written:
            summary.rows += _rows_in(f)
            os.replace(f, out / f.name)
        shutil.rmtree(tmp, ignore_errors=True)
        if bad is not None:
            (out / "rejects").mkdir(exist_ok=True)
            pq.write_table(bad.drop_columns(["batch_row"]), out / "rejects" / "rejects.parquet")
            summary.rejected = bad.num_rows
        summary.parts_done = len(files)
        (out / "_SUCCESS").write_text("")
        summary.seconds = time.perf_counter() - t0
        return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if rejects is not None:
            ray.kill(rejects)
        if started:
            ray.shutdown()


def _execute(job: Job, concurrency: int, files: list[Path], kind: str, tmp: Path, rejects: Any) -> BaseException | None:
    """Read, score, write into ``tmp``; the job's error if it failed (returned, not raised, so that
    no traceback holds this frame's dataset and its actors)."""
    import ray
    import ray.data

    reader = {"parquet": ray.data.read_parquet, "csv": ray.data.read_csv, "json": ray.data.read_json}[kind]
    # a block per file at least, and one per actor: else a small input is one block, one actor's work
    ds = reader([str(f.resolve()) for f in files], include_paths=True,
                override_num_blocks=max(len(files), concurrency))
    ds = ds.map_batches(
        Scorer,
        fn_constructor_kwargs={"repository": str(Path(job.repository).resolve()), "model": job.model,
                               "version": job.version, "keep": tuple(job.keep), "mapping": dict(job.mapping),
                               "on_error": job.on_error, "csv": job.out_format == "csv", "rejects": rejects},
        batch_size=job.batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=_cpus_per_actor(ray.cluster_resources().get("CPU", 0.0), concurrency))
    try:
        if job.out_format == "csv":
            ds.write_csv(str(tmp))
        else:
            ds.write_parquet(str(tmp))
    except Exception as exc:
        return _unwrap(exc)
    return None


def _cpus_per_actor(cpus: float, concurrency: int) -> float:
    """One CPU per actor (onnxruntime runs one thread in each), less where the actors would take
    every CPU of the cluster: Ray Data's read and write tasks need one, and would wait forever."""
    return max(0.0, min(1.0, (cpus - 1) / concurrency))


def _rows_in(path: Path) -> int:
    if path.suffix == ".parquet":
        return int(pq.read_metadata(path).num_rows)
    return int(pacsv.read_csv(path).num_rows)


def _unwrap(exc: BaseException) -> BaseException:
    """The job's own error (bad rows, a mapping that does not fit) out of Ray's wrapping, as a new
    exception: the wrapped one's traceback holds the failed execution (its actors, their CPUs)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BadRows | MappingError):  # a new one: that one's traceback holds Ray's executor
            return (BadRows if isinstance(seen, BadRows) else MappingError)(str(seen))
        seen = seen.__cause__ or getattr(seen, "cause", None)
    for cls in (BadRows, MappingError):
        prefix = f"{cls.__module__}.{cls.__name__}: "
        for line in str(exc).splitlines():
            if line.strip().startswith(prefix):
                return cls(line.strip()[len(prefix):])
    return exc
