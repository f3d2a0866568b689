"""``gateway loadtest``: open-loop load tests, SLO sweeps and capacity plans for KServe v2 servers.

  gateway loadtest [run] --url URL -m MODEL (--rate R | --ramp A:B | --steps R:S,... | --closed) ...
  gateway loadtest sweep --url URL -m MODEL --slo-p99-ms MS [--target-rps R --headroom 0.7] ...
  gateway loadtest capacity (--knee-rps K | --from sweep.json) --target-rps R [--headroom 0.7]

This module only parses flags and wires the parts together: targets (requests from metadata),
launch (generator processes), sweep (knee search), scrape (server counters), report (files).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from gateway.loadtest import schedule
from gateway.loadtest.launch import default_procs, run_load
from gateway.loadtest.progress import LiveDisplay, Quiet, summary_table
from gateway.loadtest.report import SCHEMA_RUN, SCHEMA_SWEEP, write_run_reports, write_sweep_reports
from gateway.loadtest.runner import RunSpec
from gateway.loadtest.scrape import diff, snapshot
from gateway.loadtest.sweep import Slo, Step, capacity_plan, find_knee
from gateway.loadtest.targets import (
    PROTOCOLS,
    RequestSet,
    Target,
    Variation,
    build_request_set,
    fetch_model_info,
    load_samples,
    parse_target,
    random_inputs,
)

__all__ = ["main", "build_parser"]


def _shape(text: str) -> tuple[str, list[int]]:
    name, _, dims = text.partition(":")
    if not dims:
        raise argparse.ArgumentTypeError(f"--shape {text!r} is not NAME:D1,D2,...")
    return name, [int(d) for d in dims.split(",")]


def _header(text: str) -> tuple[str, str]:
    k, sep, v = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"--header {text!r} is not 'Name: value'")
    return k.strip(), v.strip()


def _priorities(text: str) -> tuple[tuple[int, float], ...]:
    out = []
    for part in text.split(","):
        level, _, weight = part.partition(":")
        out.append((int(level), float(weight or 1)))
    return tuple(out)


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target")
    g.add_argument("--url", default="", help="server address: http://host:port or host:port "
                   "(default 127.0.0.1:8000, gRPC 127.0.0.1:8001)")
    g.add_argument("-m", "--model", required=True)
    g.add_argument("--model-version", default="")
    g.add_argument("-p", "--protocol", choices=PROTOCOLS, default="http-json")
    g = p.add_argument_group("requests")
    g.add_argument("--batch", type=int, default=1, help="rows per request (the -1 batch dimension)")
    g.add_argument("--shape", type=_shape, action="append", default=[], help="NAME:D1,D2 full input shape")
    g.add_argument("--data", help="recorded inputs: .jsonl (KServe v2 JSON requests) or .npz (array per input)")
    g.add_argument("--samples", type=int, default=8, help="distinct random payloads")
    g.add_argument("-H", "--header", type=_header, action="append", default=[], help="'Name: value', repeatable")
    g.add_argument("--routing-key-header", default="x-routing-key")
    g.add_argument("--routing-keys", type=int, default=0, help="spread requests over N keys (0: no header)")
    g.add_argument("--priority-header", default="x-priority")
    g.add_argument("--priorities", type=_priorities, default=(), help="LEVEL:WEIGHT,... e.g. 1:0.9,2:0.1")
    g.add_argument("--priority-param", action="store_true", help="also send priority as a request parameter")
    g = p.add_argument_group("generator")
    g.add_argument("--procs", type=int, default=default_procs(), help="generator processes")
    g.add_argument("--connections", type=int, default=0, help="connections opened up front per process (0: auto)")
    g.add_argument("--max-connections", type=int, default=1000, help="pool bound, all processes together "
                   "(gRPC: calls in flight)")
    g.add_argument("--grpc-channels", type=int, default=2, help="gRPC channels (connections) per process")
    g.add_argument("--grpc-client", choices=("native", "grpcio"), default="native",
                   help="gRPC client: native (HTTP/2 in C on libnghttp2; the default) or grpcio (grpc.aio)")
    g.add_argument("--timeout", type=float, default=10.0, help="seconds before a request counts as timed out")
    g.add_argument("--late-ms", type=float, default=5.0, help="a send this far behind schedule counts as late")
    g.add_argument("--arrivals", choices=("constant", "poisson"), default="constant")
    g.add_argument("--max-requests", type=int, default=None, help="stop after this many requests")
    g.add_argument("--interval", type=float, default=1.0, help="seconds per histogram interval")
    g.add_argument("--warmup", type=float, default=0.0, help="seconds excluded from the statistics")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("output")
    g.add_argument("--scrape", action="store_true", help="read /metrics and model statistics before and after")
    g.add_argument("--metrics-url", default="", help="Prometheus endpoint (default: the target's /metrics "
                   "over HTTP; Triton: http://host:8002/metrics)")
    g.add_argument("--out", type=Path, help="directory for JSON, CSV, PNG and HTML reports")
    g.add_argument("--json", action="store_true", help="print the result JSON on stdout")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress or tables")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gateway loadtest", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one load run (default command)")
    _common(run)
    g = run.add_argument_group("load").add_mutually_exclusive_group(required=True)
    g.add_argument("--rate", type=float, help="open loop at R requests/s")
    g.add_argument("--ramp", help="open loop ramp FROM:TO requests/s over --duration")
    g.add_argument("--steps", help="open loop staircase RATE:SECONDS,... (its own duration)")
    g.add_argument("--closed", action="store_true", help="closed loop at --concurrency (perf_analyzer-like)")
    run.add_argument("--concurrency", type=int, default=16)
    run.add_argument("-d", "--duration", type=float, default=10.0, help="seconds (bounded run)")
    sw = sub.add_parser("sweep", help="step the rate up to the SLO's knee; optional capacity plan")
    _common(sw)
    sw.add_argument("--slo-p99-ms", type=float, required=True, help="latency bound (of --slo-percentile)")
    sw.add_argument("--slo-percentile", default="p99", choices=("p50", "p90", "p99", "p99_9", "p99_99"))
    sw.add_argument("--error-budget", type=float, default=0.001, help="allowed failed fraction")
    sw.add_argument("--start-rps", type=float, default=100.0)
    sw.add_argument("--max-rps", type=float, default=100_000.0)
    sw.add_argument("--factor", type=float, default=1.5, help="rate multiplier between ramp steps")
    sw.add_argument("--refine", type=int, default=3, help="bisection steps between last pass and first fail")
    sw.add_argument("--retries", type=int, default=0, help="re-measure a failing step up to N times "
                    "(noisy shared hosts)")
    sw.add_argument("--step-duration", type=float, default=5.0)
    sw.add_argument("--cooldown", type=float, default=1.0, help="pause between steps (server drains)")
    sw.add_argument("--target-rps", type=float, help="plan replicas for this total rate")
    sw.add_argument("--headroom", type=float, default=0.7, help="fraction of the knee planned per replica")
    cap = sub.add_parser("capacity", help="replicas needed for a target rate")
    src = cap.add_mutually_exclusive_group(required=True)
    src.add_argument("--knee-rps", type=float)
    src.add_argument("--from", dest="from_file", type=Path, help="a sweep.json")
    cap.add_argument("--target-rps", type=float, required=True)
    cap.add_argument("--headroom", type=float, default=0.7)
    return ap


def _target(args: argparse.Namespace) -> Target:
    url = args.url or ("127.0.0.1:8001" if args.protocol == "grpc" else "127.0.0.1:8000")
    return parse_target(url, args.protocol, args.model, args.model_version)


def _requests(args: argparse.Namespace, target: Target) -> RequestSet:
    info = fetch_model_info(target)
    if args.data:
        samples = load_samples(args.data, info, args.batch)
    else:
        rng = np.random.default_rng(args.seed)
        samples = [random_inputs(info, args.batch, dict(args.shape), rng) for _ in range(max(1, args.samples))]
    var = Variation(tuple(args.header), args.routing_key_header, args.routing_keys, args.priority_header,
                    args.priorities, args.priority_param)
    return build_request_set(target, info, samples, var, seed=args.seed)


def _spec(args: argparse.Namespace, target: Target, **load: Any) -> RunSpec:
    procs = max(1, args.procs)
    profile = load.get("profile")
    peak = max((max(s.start_rps, s.end_rps) for s in profile.segments), default=0.0) if profile else 0.0
    conns = args.connections or max(2, min(256, math.ceil(peak / procs * 0.002) + 2))
    return RunSpec(target=target, procs=procs, timeout=args.timeout, late_ms=args.late_ms, connections=conns,
                   max_connections=max(1, math.ceil(args.max_connections / procs)), grpc_channels=args.grpc_channels,
                   grpc_client=args.grpc_client,
                   interval=args.interval, warmup=args.warmup, seed=args.seed, poisson=args.arrivals == "poisson",
                   max_requests=args.max_requests, **load)


def _metrics_url(args: argparse.Namespace, target: Target) -> str | None:
    if args.metrics_url:
        return args.metrics_url
    return None if target.is_grpc else f"http://{target.host}:{target.port}/metrics"


def _measure(spec: RunSpec, reqs: RequestSet, display: Quiet, label: str, args: argparse.Namespace) -> dict[str, Any]:
    before = snapshot(spec.target, _metrics_url(args, spec.target)) if args.scrape else None
    display.start(label, spec.run_seconds)
    try:
        summary = run_load(spec, reqs, on_tick=display.tick)
    finally:
        display.stop()
    summary["warmup_s"] = spec.warmup
    if before is not None:
        summary["server"] = diff(before, snapshot(spec.target, _metrics_url(args, spec.target)))
    return summary


def _envelope(schema: str, args: argparse.Namespace, target: Target, config: dict[str, Any]) -> dict[str, Any]:
    return {"schema": schema, "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "target": {"url": args.url or f"{target.host}:{target.port}", "protocol": target.protocol,
                       "model": target.model, "version": target.version},
            "config": config}


def _cmd_run(args: argparse.Namespace, display: Quiet) -> int:
    target = _target(args)
    reqs = _requests(args, target)
    if args.closed:
        spec = _spec(args, target, mode="closed", concurrency=args.concurrency, duration=args.duration)
        load = f"closed loop, concurrency {args.concurrency}, {args.duration:g}s"
    else:
        if args.rate is not None:
            profile = schedule.constant(args.rate, args.duration)
        elif args.ramp:
            a, _, b = args.ramp.partition(":")
            profile = schedule.ramp(float(a), float(b), args.duration)
        else:
            profile = schedule.parse_steps(args.steps)
        spec = _spec(args, target, mode="open", profile=profile)
        load = f"open loop ({args.arrivals}), {profile.describe()}"
    summary = _measure(spec, reqs, display, load, args)
    result = _envelope(SCHEMA_RUN, args, target, {"load": load, "procs": spec.procs, "batch": reqs.batch_rows,
                                                  "timeout_s": spec.timeout, "warmup_s": spec.warmup})
    result["server"] = summary.pop("server", None)
    result["summary"] = summary
    display.print(summary_table(summary, load))
    if summary["errors"]:
        display.print("errors: " + ", ".join(f"{k}={v}" for k, v in summary["errors"].items()))
    if args.out:
        files = write_run_reports(args.out, result)
        display.print(f"reports: {files['html']}")
    if args.json:
        print(json.dumps(result))
    return 0


def _cmd_sweep(args: argparse.Namespace, display: Quiet) -> int:
    import time

    target = _target(args)
    reqs = _requests(args, target)
    slo = Slo(args.slo_p99_ms, args.error_budget, percentile=args.slo_percentile)
    first = [True]

    def measure(rate: float) -> dict[str, Any]:
        if not first[0]:
            time.sleep(args.cooldown)
        first[0] = False
        spec = _spec(args, target, mode="open", profile=schedule.constant(rate, args.step_duration))
        return _measure(spec, reqs, display, f"{rate:,.0f} req/s", args)

    def on_step(step: Step) -> None:
        s = step.summary
        verdict = "[green]pass[/]" if step.passed else "[red]FAIL[/] " + "; ".join(step.reasons)
        display.print(f"  {step.rate:>10,.0f} req/s  answered {s['achieved_rps']:>10,.0f}/s  "
                      f"{slo.percentile} {s['latency_ms'][slo.percentile]:>9,.2f} ms  "
                      f"errors {s['error_rate']:.2%}  {verdict}")

    res = find_knee(measure, slo, start_rps=args.start_rps, max_rps=args.max_rps, factor=args.factor,
                    refine=args.refine, retries=args.retries, on_step=on_step)
    result = _envelope(SCHEMA_SWEEP, args, target, {"step_duration_s": args.step_duration, "procs": args.procs,
                                                    "arrivals": args.arrivals, "batch": reqs.batch_rows})
    result["sweep"] = res.to_dict()
    result["capacity"] = (capacity_plan(args.target_rps, res.knee_rps, args.headroom)
                          if args.target_rps and res.knee_rps > 0 else None)
    display.print(f"knee: {res.knee_rps:,.0f} req/s offered ({res.knee_achieved_rps:,.0f} answered) at "
                  f"{slo.percentile} <= {slo.p99_ms:g} ms")
    for w in res.warnings:
        display.print(f"[yellow]warning:[/] {w}")
    if result["capacity"]:
        c = result["capacity"]
        display.print(f"replicas for {c['target_rps']:,.0f} req/s at headroom {c['headroom']:g}: {c['replicas']}")
    if args.out:
        files = write_sweep_reports(args.out, result)
        display.print(f"reports: {files['html']}")
    if args.json:
        print(json.dumps(result))
    return 0


def _cmd_capacity(args: argparse.Namespace) -> int:
    knee = args.knee_rps
    if args.from_file:
        knee = json.loads(args.from_file.read_text())["sweep"]["knee_rps"]
    if not knee or knee <= 0:
        print("no knee: the sweep never passed its SLO", file=sys.stderr)
        return 1
    plan = capacity_plan(args.target_rps, knee, args.headroom)
    print(f"replicas needed: {plan['replicas']} (knee {knee:,.0f} req/s per replica, planned at "
          f"{plan['planned_rps_per_replica']:,.0f} = headroom {args.headroom:g}; utilisation at target "
          f"{plan['utilisation_at_target']:.0%} of the knee)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``gateway loadtest ARGS`` (argv without the word ``loadtest``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "sweep", "capacity", "-h", "--help"):
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    if args.command == "capacity":
        return _cmd_capacity(args)
    display: Quiet = Quiet() if args.quiet else LiveDisplay()
    try:
        return _cmd_run(args, display) if args.command == "run" else _cmd_sweep(args, display)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"gateway loadtest: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
