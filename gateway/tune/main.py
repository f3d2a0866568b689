"""The ``gateway tune`` run: sample -> variants -> accuracy -> serving search -> reports.

Kept apart from the argument parsing (``tune.cli``) so that the imports it needs (onnxruntime's
quantization tools, the load tester) load only when a tune runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import onnxruntime as ort

from gateway.tune.accuracy import compare
from gateway.tune.measure import Point, measure_point
from gateway.tune.report import (
    SCHEMA,
    Row,
    cost_per_million,
    format_table,
    mark_pareto,
    recommend,
    write_reports,
)
from gateway.tune.sample import load_sample
from gateway.tune.search import best_point, search
from gateway.tune.variants import build_variants

KNOBS = ("intra_op_threads", "instances", "max_batch_size", "max_queue_delay_us", "execution")
"""The config.toml keys the search sets."""
REPORT_RESERVE_S = 5.0
"""Kept back from the search for writing the reports."""


def model_file(repo: Path, model: str, version: str) -> tuple[Path, str, int]:
    """(model.onnx, its version, the next free version number)."""
    mdir = repo / model
    versions = sorted(int(p.name) for p in mdir.iterdir() if p.is_dir() and p.name.isdigit()) if mdir.is_dir() else []
    if not versions:
        raise ValueError(f"no versions of model {model!r} in {repo} (expected {mdir}/<n>/model.onnx)")
    v = version or str(versions[-1])
    path = mdir / v / "model.onnx"
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    return path, v, versions[-1] + 1


def cores_of(config: dict[str, Any], cpus: int) -> int:
    """Cores a configuration can keep busy: onnxruntime's threads per instance times instances,
    plus the event loop's when batches run on threads; at most the machine's."""
    threads = max(1, int(config.get("intra_op_threads", 1) or cpus))
    instances = max(1, int(config.get("instances", 1)))
    busy = threads * instances + (1 if config.get("execution") == "thread" else 0)
    return max(1, min(cpus, busy))


def tuned_config_text(source: Path | None, config: dict[str, Any]) -> str:
    """The model's config.toml with the tuned top-level keys set (replaced where present, else
    inserted before the first table so that they stay top-level)."""
    text = source.read_text() if source is not None and source.is_file() else ""
    lines = text.splitlines()
    first_table = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("[")), len(lines))
    for key, value in config.items():
        rendered = f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}"
        pat = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for i in range(first_table):
            if pat.match(lines[i]):
                lines[i] = rendered
                break
        else:
            lines.insert(first_table, rendered)
            first_table += 1
    return "\n".join(["# serving keys set by gateway tune", *lines]) + "\n"


def progress(args: argparse.Namespace) -> Any:
    start = time.monotonic()

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"[{time.monotonic() - start:6.1f} s] {msg}", flush=True)

    return say


def copy_recommended(out: Path, model: str, version: int, variant_path: Path, source_config: Path | None,
                     config: dict[str, Any]) -> Path:
    vdir = out / model / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(variant_path, vdir / "model.onnx")
    (out / model / "config.toml").write_text(tuned_config_text(source_config, config))
    return vdir


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _base_config(model_dir: Path) -> dict[str, Any]:
    """The search's starting point: the model's own serving keys where it sets them."""
    from gateway.model_config import read_config_file

    try:
        raw = read_config_file(model_dir)
    except Exception:  # an unreadable config is the server's to report; start from defaults
        raw = {}
    return {k: raw[k] for k in KNOBS if k in raw}


def _within(acc: dict[str, Any], args: argparse.Namespace) -> str | None:
    """None when within tolerance, else why not."""
    if acc["max_abs_diff"] > args.max_abs_diff:
        return f"max abs diff {acc['max_abs_diff']:.3g} > --max-abs-diff {args.max_abs_diff:g}"
    agree = acc.get("argmax_agreement")
    if agree is not None and agree < args.min_argmax_agreement:
        return f"argmax agreement {agree:.4f} < --min-argmax-agreement {args.min_argmax_agreement:g}"
    return None


def tune(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    deadline = t0 + args.budget_s
    say = progress(args)
    repo = Path(args.model_repository)
    path, version, next_version = model_file(repo, args.model, args.version)
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    cpus = cpu_count()
    sample = load_sample(args.data, path, max_rows=args.rows)
    say(f"{args.model} version {version}: sample of {sample.rows} rows from {sample.source}")
    out: Path = args.out
    only = [v for v in args.variants.split(",") if v] or None
    variants = build_variants(path, out / "variants", sample, cuda=cuda, only=only)
    reference = next((v.path for v in variants if v.name == "fp32" and v.path is not None), path)
    rows: list[Row] = []
    for v in variants:
        row = Row(v.name, v.precision, v.size_bytes, path=str(v.path) if v.path else None)
        rows.append(row)
        if v.path is None:
            row.excluded = v.error or "not built"
            say(f"variant {v.name}: {row.excluded}")
            continue
        acc = compare(reference, v.path, sample)
        row.accuracy = {"max_abs_diff": acc.max_abs_diff, "max_rel_diff": acc.max_rel_diff,
                        "argmax_agreement": acc.argmax_agreement, "rows": acc.rows}
        row.excluded = _within(row.accuracy, args)
        say(f"variant {v.name}: {v.size_bytes / 1e6:.2f} MB, max abs diff {acc.max_abs_diff:.3g}"
            + (f", argmax agreement {acc.argmax_agreement:.4f}" if acc.argmax_agreement is not None else "")
            + (f" -- excluded: {row.excluded}" if row.excluded else ""))
    eligible = [r for r in rows if r.excluded is None]
    base = _base_config(repo / args.model)
    for i, row in enumerate(eligible):
        left = deadline - time.monotonic() - REPORT_RESERVE_S
        share = left / (len(eligible) - i)
        if share < max(6.0, 3 * args.step_s):
            row.excluded = f"not measured: {max(left, 0):.0f} s of budget left"
            say(f"variant {row.name}: {row.excluded}")
            continue
        say(f"variant {row.name}: searching serving configurations for {share:.0f} s")
        model_path = Path(row.path)  # type: ignore[arg-type]

        def measure(config: dict[str, Any], budget: float, model_path: Path = model_path) -> Point:
            return measure_point(model_path, args.model, config, slo_p99_ms=args.slo_p99_ms, budget_s=budget,
                                 step_s=args.step_s)

        def on_point(p: Point, name: str = row.name) -> None:
            cfg = " ".join(f"{k}={v}" for k, v in p.config.items())
            say(f"  {name} [{cfg}]: " + (p.error if p.error else f"{'>=' if p.bounded else ''}"
                                                                   f"{p.throughput_rps:,.0f} req/s at p99 "
                                                                   f"{p.p99_ms:.2f} ms"))

        points = search(measure, budget_s=share, base=base or None, on_point=on_point,
                        min_point_s=max(6.0, 3 * args.step_s))
        row.points = [asdict(p) for p in points]
        best = best_point(points)
        if best is None or best.throughput_rps <= 0:
            row.excluded = "no configuration met the SLO" + (f" ({points[-1].error})" if points else "")
            continue
        row.config, row.throughput_rps, row.p99_ms = dict(best.config), best.throughput_rps, best.p99_ms
        row.bounded = best.bounded
        row.cores = cores_of(row.config, cpus)
        # on CUDA a replica is billed as one GPU (its host cores aside); on CPU by the cores it keeps busy
        row.cost_per_million = (cost_per_million(row.throughput_rps, 1, args.gpu_hour_price) if cuda
                                else cost_per_million(row.throughput_rps, row.cores, args.core_hour_price))
    mark_pareto(rows)
    chosen = recommend(rows)
    advice = _advice(rows, chosen, cuda, sample.real)
    doc = {"schema": SCHEMA, "model": args.model, "version": version, "slo_p99_ms": args.slo_p99_ms,
           "budget_s": args.budget_s, "elapsed_s": round(time.monotonic() - t0, 1),
           "data": {"source": sample.source, "real": sample.real, "rows": sample.rows},
           "machine": {"cpus": cpus, "cuda": cuda}, "core_hour_price": args.core_hour_price,
           "gpu_hour_price": args.gpu_hour_price, "price_basis": "gpu-hour" if cuda else "core-hour",
           "tolerance": {"max_abs_diff": args.max_abs_diff, "min_argmax_agreement": args.min_argmax_agreement},
           "variants": [r.to_doc() for r in rows], "recommended": chosen.name if chosen else None,
           "advice": advice}
    if chosen is not None and chosen.path is not None:
        # capacity_rps: what the autoscaling signals divide the load by (gateway_desired_replicas)
        tuned = {**(chosen.config or {}), "capacity_rps": round(chosen.throughput_rps, 1)}
        vdir = copy_recommended(out, args.model, next_version, Path(chosen.path), repo / args.model / "config.toml",
                                tuned)
        doc["recommended_version"] = {"version": next_version, "dir": str(vdir)}
    files = write_reports(out, doc, rows)
    if not args.quiet:
        print(format_table(rows))
        print(advice)
        print(f"reports: {files['json']} {files['html']}")
    return 0


def _advice(rows: list[Row], chosen: Row | None, cuda: bool, real: bool) -> str:
    if chosen is None:
        return "No variant met the SLO within the accuracy tolerance: relax the SLO or the tolerance."
    fp32 = next((r for r in rows if r.name == "fp32" and r.throughput_rps > 0), None)
    gain = f", {chosen.throughput_rps / fp32.throughput_rps:.2f}x fp32" if fp32 and chosen is not fp32 else ""
    where = "CUDA is present" if cuda else "CPU only (no CUDA execution provider here)"
    data = "" if real else " Accuracy was measured on random inputs, not on real data: pass --data."
    return (f"Recommended: {chosen.name} ({chosen.throughput_rps:,.0f} req/s at the SLO{gain}); {where}.{data}")
