"""`gateway tune`: which precision and serving configuration of a model serve the most requests
at a p99 SLO, and what each costs in accuracy.

The run, within ``--budget-s`` from start to report:
1. a data sample (``--data``: real requests; else random inputs from the model's metadata, and
   the report says accuracy was not measured on real data);
2. the variants (``tune.variants``): fp32 as is, fp32 with onnxruntime's graph optimizations
   saved, dynamic int8, static int8 calibrated on the sample, fp16 where CUDA is present; each
   one's accuracy against fp32 on the sample (``tune.accuracy``), and whether it is within
   ``--max-abs-diff`` / ``--min-argmax-agreement``;
3. per variant within tolerance, a search over serving configurations (``tune.search``: hill
   climbing over threads, instances, batch size, queue delay, execution), each point measured
   by starting a gateway for it and finding the knee with the load tester's open-loop sweep
   (``tune.measure``); the budget left is shared equally among these variants;
4. the picks measured again in interleaved rounds (``tune.rounds``, ``--rounds``), each one's
   figure the median of its rounds; ranges that overlap are a tie, which goes to the more accurate;
5. per device (``--devices``: the CPU, and CUDA where onnxruntime has it) a pick, and across
   devices the cheaper one at ``--load-rps`` (``tune.sizing``), said in one sentence;
6. ``OUT/tune.json``, ``OUT/report.html`` and a table on the console, and the recommended variant
   as ``OUT/<model>/<next version>/model.onnx`` with ``OUT/<model>/config.toml`` (the model's
   config with the tuned serving keys), ready to copy into the repository as a new version.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("tune", help="find the cheapest precision x serving config at an SLO, with its accuracy cost",
                       description="Build variants of a model (fp32, optimized, int8 dynamic/static, fp16 on CUDA), "
                                   "measure each one's accuracy against fp32 and its throughput at the SLO over a "
                                   "search of serving configurations, and write the Pareto table and the "
                                   "recommended variant as a new version.")
    p.add_argument("--model-repository", required=True, help="the repository (Triton layout)")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--version", default="", help="the version to tune (default: the highest on disk)")
    p.add_argument("--slo-p99-ms", type=float, default=10.0, help="latency objective (default 10 ms)")
    p.add_argument("--data", type=Path, help="a sample of real requests: .jsonl (KServe v2 requests), .npz or .parquet")
    p.add_argument("--budget-s", type=float, default=600.0, help="the whole run ends within this (default 600 s)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--core-hour-price", type=float, default=0.05, help="price of a CPU core-hour, for cost/1M")
    p.add_argument("--gpu-hour-price", type=float, default=2.5, help="price of a GPU-hour, for cost/1M on CUDA")
    p.add_argument("--max-abs-diff", type=float, default=float("inf"),
                   help="tolerance: a variant further from fp32 than this is not recommended")
    p.add_argument("--min-argmax-agreement", type=float, default=0.0,
                   help="tolerance for classifier-shaped outputs (share of rows whose argmax agrees)")
    p.add_argument("--variants", default="", help="only these, comma-separated (fp32,fp32-opt,int8-dynamic,"
                                                  "int8-static,fp16)")
    p.add_argument("--step-s", type=float, default=2.0, help="seconds per load step while finding a knee")
    p.add_argument("--rounds", type=int, default=3,
                   help="confirmation rounds: the picks measured again, interleaved, median kept (default 3; "
                        "fewer when the budget is short, at most half of it)")
    p.add_argument("--load-procs", type=int, default=1,
                   help="load generator processes per measurement (default 1; they share the machine with the server)")
    p.add_argument("--devices", default="auto",
                   help="cpu, cuda or cpu,cuda (default auto: the CPU, and CUDA where onnxruntime has it)")
    p.add_argument("--load-rps", type=float, default=None,
                   help="the load to size for: replicas and price per hour per device (default: compare the "
                        "price per million requests at full capacity)")
    p.add_argument("--headroom", type=float, default=0.7,
                   help="share of its capacity a replica runs at when sizing for --load-rps (as capacity_headroom)")
    p.add_argument("--rows", type=int, default=512, help="rows of the sample used for accuracy and calibration")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    from gateway.tune.main import tune

    try:
        return tune(args)
    except ValueError as exc:
        print(f"gateway tune: {exc}", file=sys.stderr)
        return 2


