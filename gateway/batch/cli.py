"""`gateway batch` command line."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("batch", help="score files of records offline (Parquet, CSV, JSON lines)",
                       description="Score every record of the input files with a model of the repository; "
                                   "write one output part per input part (resumable).")
    p.add_argument("--model-repository", required=True, help="the repository (Triton layout)")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--version", default="", help="default: the model's default version")
    p.add_argument("--input", required=True, help="a file, a directory of files or a glob")
    p.add_argument("--output", required=True, help="output directory (one file per input part)")
    p.add_argument("--keep", default="", help="input columns carried over, e.g. id,user_id")
    p.add_argument("--map", action="append", default=[], metavar="INPUT=COLUMNS",
                   help="feed INPUT from COLUMNS (one list column, or scalar columns: f0..f63 or a,b,c)")
    p.add_argument("--batch-size", type=int, default=1024, help="rows per model call")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="bad rows (nulls, wrong widths): fail the job naming them, or write them to rejects/")
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="output format")
    p.add_argument("--in-flight", type=int, default=4, help="chunks (up to 64k rows) held between read, compute and write")
    p.add_argument("--to-store", default="", metavar="URL",
                   help="also write every prediction into a precomputed store (sqlite:///path.db, "
                        "redis://host:port/db, or 'model': the model's [precomputed] store), one transaction per part")
    p.add_argument("--store-key", default="", metavar="COLUMN",
                   help="the column naming each row's entity in the store (default: the first --keep column)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process, resumable; ray: Ray Data actors (RAY_ADDRESS, else a local Ray)")
    p.add_argument("--concurrency", type=int, default=2, help="--engine ray: actors, each with its own model")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")


def run(args: argparse.Namespace) -> int:
    # Arrow's default allocator (mimalloc) hands each chunk's pages back to the kernel and faults them
    # in again (zeroed huge pages): ~0.9 s of kernel time per 1M rows of 64 floats, ~0.45 s with the
    # system allocator (measured). It is the reader's core, so rows/s gains only when that core is
    # contended, but it is CPU saved. Read once, when pyarrow loads; a user's choice stands.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        print("gateway batch needs pyarrow: pip install 'inference-gateway[batch]'", file=sys.stderr)
        return 2
    from gateway.batch.columns import MappingError
    from gateway.batch.job import BadRows, Job, print_progress
    from gateway.batch.job import run as run_job
    from gateway.model_config import ConfigError

    mapping = {}
    for m in args.map:
        name, sep, cols = m.partition("=")
        if not sep or not name or not cols:
            print(f"--map takes INPUT=COLUMNS, got {m!r}", file=sys.stderr)
            return 2
        mapping[name] = cols
    if args.batch_size < 1 or args.in_flight < 1 or args.concurrency < 1:
        print("--batch-size, --in-flight and --concurrency must be at least 1", file=sys.stderr)
        return 2
    if args.engine == "ray" and args.to_store:
        print("--to-store needs the local engine: it commits one store transaction per input part, before the "
              "part's output is renamed, which Ray's unordered, unnamed output files cannot give", file=sys.stderr)
        return 2
    if args.engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            print("gateway batch --engine ray needs Ray: pip install 'inference-gateway[ray]'", file=sys.stderr)
            return 2
    job = Job(Path(args.model_repository), args.model, args.input, Path(args.output), args.version,
              tuple(c for c in args.keep.split(",") if c), mapping, args.batch_size, args.on_error, args.format,
              args.in_flight, args.quiet, None if args.quiet else print_progress, args.to_store, args.store_key)
    try:
        if args.engine == "ray":
            from gateway.batch.ray_engine import run_ray
            s = run_ray(job, args.concurrency)
        else:
            s = run_job(job)
    except (BadRows, MappingError, ConfigError, FileNotFoundError, FileExistsError) as exc:
        print(("\n" if not args.quiet else "") + f"gateway batch: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # e.g. the model failed to load: say so, not a traceback
        print(("\n" if not args.quiet else "") + f"gateway batch: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        sys.stderr.write("\n")
    print(f"{s.rows} rows in {s.seconds:.2f} s ({s.rows_per_s:,.0f} rows/s), {s.rejected} rejected; "
          f"parts: {s.parts_done} scored, {s.parts_skipped} already done; output {s.output}"
          + (f"; stored {s.stored} in {re.sub(r'//[^@/]*@', '//***@', args.to_store)}" if args.to_store else "")
          + (f" ({s.null_keys} rows with a null key not stored)" if s.null_keys else ""))
    return 0
