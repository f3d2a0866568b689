"""The ``gateway tune`` run: sample -> variants -> accuracy -> serving search -> reports.

Kept apart from the argument parsing (``tune.cli``) so that the imports it needs (onnxruntime's
quantization tools, the load tester) load only when a tune runs.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import onnxruntime as ort

from gateway.tune.accuracy import compare
from gateway.tune.compute import compute_per_row
from gateway.tune.measure import HINT_START, Point, measure_point
from gateway.tune.report import (
    SCHEMA,
    Row,
    cost_per_million,
    format_table,
    mark_pareto,
    tied_with,
    write_reports,
)
from gateway.tune.rounds import Candidate, plan, run_rounds
from gateway.tune.sample import load_sample
from gateway.tune.search import best_point, search
from gateway.tune.sizing import right_size
from gateway.tune.variants import build_variants

KNOBS = ("intra_op_threads", "instances", "max_batch_size", "max_queue_delay_us", "execution")
"""The config.toml keys the search sets."""
REPORT_RESERVE_S = 5.0
"""Kept back from the search for writing the reports."""
ROUNDS_SHARE = 0.5
"""At most this share of the measuring budget goes to the confirmation rounds."""


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


def devices_of(arg: str, cuda: bool) -> list[str]:
    """``--devices``: auto is the CPU, and CUDA where onnxruntime has it; else the named ones."""
    if arg in ("", "auto"):
        return ["cpu", "cuda"] if cuda else ["cpu"]
    out = []
    for d in (x.strip() for x in arg.split(",")):
        if d not in ("cpu", "cuda"):
            raise ValueError(f"--devices: unknown device {d!r} (cpu, cuda)")
        if d not in out:
            out.append(d)
    return out


def round_point_s(step_s: float) -> float:
    """A confirmation point: the server's start, the warm-up and about five steps near the knee."""
    return 3.0 + 5 * (step_s + 0.5)


def _measure_rows(rows: list[Row], args: argparse.Namespace, deadline: float, say: Any) -> None:
    """The search per row within tolerance, then the confirmation rounds over the rows' picks."""
    eligible = [r for r in rows if r.excluded is None]
    base = _base_config(Path(args.model_repository) / args.model)
    min_point = round_point_s(args.step_s)  # a knee needs about five steps: fewer points, each a knee
    left = deadline - time.monotonic() - REPORT_RESERVE_S
    n_rounds = plan(len(eligible), left, round_point_s(args.step_s), args.rounds, ROUNDS_SHARE)
    reserve = n_rounds * len(eligible) * round_point_s(args.step_s)
    if eligible:
        say(f"{len(eligible)} to measure: {n_rounds} confirmation round(s) after the search"
            + ("" if n_rounds else " (the budget leaves none: figures are single measurements)"))

    def measurer_for(row: Row) -> Any:
        model_path = Path(row.path)  # type: ignore[arg-type]

        def measure(config: dict[str, Any], budget: float, hint: float | None = None, hint_low: bool = False) -> Point:
            return measure_point(model_path, args.model, {**config, "device": row.device}, slo_p99_ms=args.slo_p99_ms,
                                 budget_s=budget, step_s=args.step_s, hint_rps=hint, hint_is_lower_bound=hint_low,
                                 procs=args.load_procs)

        return measure

    picks: list[tuple[Row, Candidate]] = []
    for i, row in enumerate(eligible):
        left = deadline - time.monotonic() - REPORT_RESERVE_S - reserve
        share = left / (len(eligible) - i)
        if share < min_point:
            row.excluded = f"not measured: {max(left, 0):.0f} s of budget left"
            say(f"{row.label}: {row.excluded}")
            continue
        say(f"{row.label}: searching serving configurations for {share:.0f} s")

        def on_point(p: Point, name: str = row.label) -> None:
            say(f"  {name} [{_cfg(p.config)}]: {_result(p)}")

        points = search(measurer_for(row), budget_s=share, base=base or None, on_point=on_point, min_point_s=min_point)
        row.points = [asdict(p) for p in points]
        best = best_point(points)
        if best is None or best.throughput_rps <= 0:
            row.excluded = "no configuration met the SLO" + (f" ({points[-1].error})" if points else "")
            continue
        row.config, row.throughput_rps, row.p99_ms = dict(best.config), best.throughput_rps, best.p99_ms
        row.search_rps, row.bounded, row.generator_bound = best.throughput_rps, best.bounded, best.generator_bound
        row.spread = (best.throughput_rps, math.inf) if best.lower_bound else None
        picks.append((row, Candidate(row.label, {k: v for k, v in best.config.items() if k != "device"},
                                     best.throughput_rps, best.lower_bound)))
    if n_rounds and picks:
        by_label = {c.label: measurer_for(r) for r, c in picks}

        def confirm(c: Candidate, budget: float) -> Point:
            return by_label[c.label](c.config, budget, c.hint_rps, c.hint_is_lower_bound)

        def on_round(n: int, c: Candidate, p: Point) -> None:
            say(f"  round {n}/{n_rounds} {c.label}: {_result(p)}")

        done = run_rounds([c for _, c in picks], confirm, rounds=n_rounds, point_s=round_point_s(args.step_s),
                          deadline=deadline - REPORT_RESERVE_S, on_point=on_round)
        for row, c in picks:
            row.rounds = [asdict(p) for p in c.points]
            med = c.median() if done else None
            if done and med is None:
                row.excluded = (f"its search knee ({row.search_rps:,.0f} req/s) did not hold: no confirmation "
                                f"round met the SLO from {HINT_START:.0%} of it")
                row.throughput_rps = row.p99_ms = 0.0
                row.spread = None
            elif med is not None:
                row.throughput_rps, row.p99_ms = med
                row.spread, row.bounded, row.generator_bound = c.spread(), c.all_bounded(), c.generator_bound()
    cpus = cpu_count()
    for row in rows:
        if row.throughput_rps > 0 and row.config is not None:
            row.cores = cores_of(row.config, cpus)
            # a CUDA replica is billed as one GPU (its host cores aside); a CPU one by the cores it keeps busy
            row.cost_per_million = (cost_per_million(row.throughput_rps, 1, args.gpu_hour_price) if row.device == "cuda"
                                    else cost_per_million(row.throughput_rps, row.cores, args.core_hour_price))


def _cfg(config: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items() if k != "device")


def _result(p: Point) -> str:
    if p.error:
        return p.error
    return (f"{'>=' if p.lower_bound else ''}{p.throughput_rps:,.0f} req/s at p99 {p.p99_ms:.2f} ms"
            + (" (the generator fell behind)" if p.generator_bound else ""))


def tune(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    deadline = t0 + args.budget_s
    say = progress(args)
    repo = Path(args.model_repository)
    path, version, next_version = model_file(repo, args.model, args.version)
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    devices = devices_of(args.devices, cuda)
    if not 0 < args.headroom <= 1:
        raise ValueError(f"--headroom must be in (0, 1], got {args.headroom:g}")
    if args.rounds < 0 or args.load_procs < 1 or (args.load_rps is not None and args.load_rps <= 0):
        raise ValueError("--rounds must be >= 0, --load-procs >= 1 and --load-rps > 0")
    sample = load_sample(args.data, path, max_rows=args.rows)
    say(f"{args.model} version {version}: sample of {sample.rows} rows from {sample.source}; "
        f"devices: {', '.join(devices)}")
    out: Path = args.out
    only = [v for v in args.variants.split(",") if v] or None
    variants = build_variants(path, out / "variants", sample, cuda=cuda, only=only)
    reference = next((v.path for v in variants if v.name == "fp32" and v.path is not None), path)
    rows: list[Row] = []
    for v in variants:
        accuracy: dict[str, Any] | None = None
        why: str | None = (v.error or "not built") if v.path is None else None
        if v.path is not None:
            acc = compare(reference, v.path, sample)
            accuracy = {"max_abs_diff": acc.max_abs_diff, "max_rel_diff": acc.max_rel_diff,
                        "argmax_agreement": acc.argmax_agreement, "rows": acc.rows}
            why = _within(accuracy, args)
            say(f"variant {v.name}: {v.size_bytes / 1e6:.2f} MB, max abs diff {acc.max_abs_diff:.3g}"
                + (f", argmax agreement {acc.argmax_agreement:.4f}" if acc.argmax_agreement is not None else "")
                + (f" -- excluded: {why}" if why else ""))
        else:
            say(f"variant {v.name}: {why}")
        for device in devices:
            row = Row(v.name, v.precision, v.size_bytes, device=device, path=str(v.path) if v.path else None,
                      accuracy=accuracy, excluded=why)
            if row.excluded is None and device == "cuda" and not cuda:
                row.excluded = "no CUDA execution provider in this onnxruntime (install onnxruntime-gpu)"
            elif row.excluded is None and device == "cpu" and v.precision == "fp16":
                row.excluded = "fp16 is measured on CUDA only (onnxruntime's CPU kernels run it through casts)"
            rows.append(row)
    built = {v.name: v.path for v in variants if v.path is not None and v.precision != "fp16"}
    compute = compute_per_row(built, sample, deadline=deadline - REPORT_RESERVE_S) if built else {}
    for row in rows:
        if row.device == "cpu" and row.name in compute:
            row.compute = compute[row.name]
    if compute:
        say("compute per row (onnxruntime alone, 1 thread, median of rounds): " + "; ".join(
            f"{n} " + ", ".join(f"{us:.2f} us at {b}" for b, us in c["us_per_row"].items()) for n, c in compute.items()))
    _measure_rows(rows, args, deadline, say)
    mark_pareto(rows)
    sizing = right_size(rows, devices=devices, load_rps=args.load_rps, headroom=args.headroom,
                        core_hour_price=args.core_hour_price, gpu_hour_price=args.gpu_hour_price)
    chosen = sizing.chosen
    advice = _advice(rows, chosen, sizing.sentence, cuda, sample.real)
    doc = {"schema": SCHEMA, "model": args.model, "version": version, "slo_p99_ms": args.slo_p99_ms,
           "budget_s": args.budget_s, "elapsed_s": round(time.monotonic() - t0, 1),
           "data": {"source": sample.source, "real": sample.real, "rows": sample.rows},
           "machine": {"cpus": cpu_count(), "cuda": cuda}, "devices": devices,
           "core_hour_price": args.core_hour_price, "gpu_hour_price": args.gpu_hour_price,
           "load_rps": args.load_rps, "headroom": args.headroom,
           "tolerance": {"max_abs_diff": args.max_abs_diff, "min_argmax_agreement": args.min_argmax_agreement},
           "variants": [r.to_doc() for r in rows], "recommended": chosen.name if chosen else None,
           "recommended_device": chosen.device if chosen else None, "sizing": sizing.per_device,
           "advice": advice}
    if chosen is not None and chosen.path is not None:
        # capacity_rps: what the autoscaling signals divide the load by (gateway_desired_replicas)
        tuned = {**(chosen.config or {}), "device": chosen.device, "capacity_rps": round(chosen.throughput_rps, 1),
                 "capacity_headroom": args.headroom}
        vdir = copy_recommended(out, args.model, next_version, Path(chosen.path), repo / args.model / "config.toml",
                                tuned)
        doc["recommended_version"] = {"version": next_version, "dir": str(vdir)}
    files = write_reports(out, doc, rows)
    if not args.quiet:
        print(format_table(rows))
        print(advice)
        print(f"reports: {files['json']} {files['html']}")
    return 0


def _advice(rows: list[Row], chosen: Row | None, sizing: str, cuda: bool, real: bool) -> str:
    if chosen is None:
        return "No variant met the SLO within the accuracy tolerance: relax the SLO or the tolerance."
    same = [r for r in rows if r.device == chosen.device]
    fp32 = next((r for r in same if r.name == "fp32" and r.throughput_rps > 0), None)
    gain = f", {chosen.throughput_rps / fp32.throughput_rps:.2f}x fp32" if fp32 and chosen is not fp32 else ""
    basis = (f", median of {len(chosen.rounds)} rounds" if chosen.rounds
             else ", one measurement" + (" (a lower bound)" if chosen.bounded else ""))
    ok = [r for r in same if r.excluded is None and r.throughput_rps > 0]
    fastest = max(ok, key=lambda r: r.throughput_rps) if ok else chosen
    ties = [r.label for r in tied_with(ok, fastest) if r is not chosen]
    tie = (f" {', '.join(ties)} {'is' if len(ties) == 1 else 'are'} within its range over the rounds: not told apart "
           f"by this run: the tie goes to fewer cores, then to the more accurate." if ties and chosen.spread is not None else "")
    gen = [r.label for r in same if r.generator_bound and r.throughput_rps > 0]
    limited = (f" The load generator fell behind before the server for {', '.join(gen)}: "
               f"{'that figure is' if len(gen) == 1 else 'those figures are'} what it could drive (a lower bound); "
               f"more --load-procs, or a generator on other cores, measures further." if gen else "")
    where = "" if cuda else " No CUDA execution provider here: CPU only."
    work = _compute_note(same, chosen) if (gen or ties) else ""
    data = "" if real else " Accuracy was measured on random inputs, not on real data: pass --data."
    return (f"Recommended: {chosen.label} ({chosen.throughput_rps:,.0f} req/s at the SLO{gain}{basis}). "
            f"{sizing}{tie}{limited}{work}{where}{data}")


def _compute_note(rows: list[Row], chosen: Row) -> str:
    """Where the knees do not tell the variants apart, what their compute per row does."""
    def at_full(r: Row) -> tuple[str, float] | None:
        per = (r.compute or {}).get("us_per_row") or {}
        return (max(per, key=int), float(per[max(per, key=int)])) if per else None

    ref = next((r for r in rows if r.name == "fp32"), chosen)
    base = at_full(ref)
    if base is None:
        return ""
    parts = []
    for r in rows:
        got = at_full(r)
        if r is not ref and got is not None and r.excluded is None and got[0] == base[0]:
            parts.append(f"{r.name} {got[1]:.2f} us ({got[1] / base[1]:.2f}x)")
    if not parts:
        return ""
    return (f" Compute alone (onnxruntime, one thread, {base[0]} rows a run): {ref.name} {base[1]:.2f} us a row, "
            + ", ".join(parts) + ": what a cheaper precision buys where compute, not the request path, bounds.")
