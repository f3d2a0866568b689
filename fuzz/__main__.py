"""``python -m fuzz``: run the targets under atheris, or replay the corpus without it.

    python -m fuzz run [--seconds 60] [--target NAME ...] [--jobs 1]   # fuzz; exit 1 on a crash
    python -m fuzz replay [--target NAME ...]                          # every corpus file, once
    python -m fuzz seeds                                               # (re)write fuzz/seeds.py's corpus
    python -m fuzz list

``run`` gives each target an equal share of ``--seconds`` (all of it counted: start-up, model
loading and the corpus pass too), ``--jobs`` of them at a time, each in its own process. New
inputs that reach new code go to ``.fuzz/corpus/<target>/`` (ignored by git, kept between runs,
so long runs build on each other); the committed ``fuzz/corpus/<target>/`` is read, never grown,
except that an input that breaks a contract is written there as ``crash-<sha1>`` (or
``timeout-``/``oom-``), where the pytest replay (tests/test_fuzz_regressions.py) will fail on it
until the bug is fixed; then rename it after the bug. At the end a table gives executions,
executions per second, new inputs and crashes per target.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fuzz import CORPUS, DICTIONARIES, DICTS, ROOT, TARGETS, corpus_files, load

WORK = ROOT.parent / ".fuzz"
# Per input: past 10 s a hang (timeout-*), past 3 GiB a leak (oom-*); slow inputs are not reported.
LIBFUZZER_FLAGS = ["-timeout=10", "-rss_limit_mb=3072", "-report_slow_units=100000", "-print_final_stats=1"]


@dataclass
class Result:
    target: str
    seconds: float = 0.0
    rc: int | None = None
    execs: int = 0
    exec_per_s: int = 0
    new_units: int = 0
    artifacts: list[str] = field(default_factory=list)
    log: Path | None = None

    @property
    def crashed(self) -> bool:
        return self.rc != 0


def _start(name: str, budget: float) -> tuple[subprocess.Popen[bytes], Path]:
    work = WORK / "corpus" / name
    work.mkdir(parents=True, exist_ok=True)
    seeds = CORPUS / name
    seeds.mkdir(parents=True, exist_ok=True)
    log = WORK / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "fuzz._worker", name, *LIBFUZZER_FLAGS, f"-artifact_prefix={seeds}/"]
    if name in DICTIONARIES:
        args.append(f"-dict={DICTS / DICTIONARIES[name]}")
    if os.environ.get("FUZZ_SEED"):  # CI fixes it: a submission's check should not depend on luck
        args.append(f"-seed={int(os.environ['FUZZ_SEED'])}")
    args += [str(work), str(seeds)]
    env = dict(os.environ, FUZZ_DEADLINE=str(time.time() + budget))
    out = open(log, "wb")  # noqa: SIM115  (closed by the child's exit; the parent's copy just below)
    try:
        proc = subprocess.Popen(args, cwd=ROOT.parent, stdout=out, stderr=subprocess.STDOUT, env=env)
    finally:
        out.close()
    return proc, log


def _stat(text: str, key: str) -> int:
    m = re.search(rf"stat::{key}:\s*(\d+)", text)
    return int(m.group(1)) if m else 0


def _finish(r: Result, rc: int, log: Path, t0: float) -> None:
    r.rc, r.log, r.seconds = rc, log, time.monotonic() - t0
    text = log.read_text(errors="replace")
    r.execs = _stat(text, "number_of_executed_units")
    if not r.execs:  # no final stats (killed): the last status line
        counts = re.findall(r"^#(\d+)\s", text, re.M)
        r.execs = int(counts[-1]) if counts else 0
    r.exec_per_s = _stat(text, "average_exec_per_sec") or int(r.execs / max(r.seconds, 1e-9))
    r.new_units = _stat(text, "new_units_added")
    r.artifacts = re.findall(r"Test unit written to (\S+)", text)


def run(names: list[str], seconds: float, jobs: int) -> int:
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed: pip install -e '.[fuzz]' (Linux x86_64 wheels, CPython 3.10-3.13)",
              file=sys.stderr)
        return 2
    share = seconds * jobs / len(names)
    results = {n: Result(n) for n in names}
    waiting = list(names)
    running: dict[str, tuple[subprocess.Popen[bytes], Path, float]] = {}
    while waiting or running:
        while waiting and len(running) < jobs:
            name = waiting.pop(0)
            proc, log = _start(name, share)
            running[name] = (proc, log, time.monotonic())
        for name, (proc, log, t0) in list(running.items()):
            rc = proc.poll()
            if rc is None and time.monotonic() - t0 > share + 60:  # a stuck worker: not a pass
                proc.kill()
                rc = proc.wait()
            if rc is not None:
                _finish(results[name], rc, log, t0)
                del running[name]
        time.sleep(0.05)
    return _report(list(results.values()))


def _report(results: list[Result]) -> int:
    print(f"\n{'target':<22}{'seconds':>8}{'executions':>12}{'exec/s':>9}{'new':>6}{'crashes':>9}")
    for r in results:
        note = "" if not r.crashed or r.artifacts else f"  (failed without an input: exit {r.rc}, see its log)"
        print(f"{r.target:<22}{r.seconds:>8.1f}{r.execs:>12}{r.exec_per_s:>9}{r.new_units:>6}"
              f"{len(r.artifacts):>9}{note}")
    total = sum(r.execs for r in results)
    print(f"{'total':<22}{sum(r.seconds for r in results):>8.1f}{total:>12}")
    failed = [r for r in results if r.crashed]
    for r in failed:
        print(f"\n{r.target}: exit status {r.rc}; log {r.log}", file=sys.stderr)
        for a in r.artifacts:
            print(f"  input written to {a} (replayed by tests/test_fuzz_regressions.py; "
                  "rename it after the bug once fixed)", file=sys.stderr)
        if r.log is not None:
            tail = r.log.read_text(errors="replace").splitlines()[-40:]
            print("  " + "\n  ".join(tail), file=sys.stderr)
    return 1 if failed else 0


def replay(names: list[str]) -> int:
    """Every committed corpus file through its target, in this process (no atheris needed)."""
    failed = 0
    for name in names:
        one_input = load(name)
        files = corpus_files(name)
        for path in files:
            try:
                one_input(path.read_bytes())
            except Exception as exc:
                failed += 1
                print(f"FAIL {path.relative_to(ROOT.parent)}: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"{name}: {len(files)} inputs replayed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="fuzz the targets under atheris for a time budget")
    p_run.add_argument("--seconds", type=float, default=60.0, help="total budget, shared equally (default 60)")
    p_run.add_argument("--target", action="append", choices=list(TARGETS), help="only this target (repeatable)")
    p_run.add_argument("--jobs", type=int, default=1, help="targets fuzzed at once (default 1)")
    p_replay = sub.add_parser("replay", help="replay the committed corpus through the targets")
    p_replay.add_argument("--target", action="append", choices=list(TARGETS))
    sub.add_parser("seeds", help="write the seeds and bug reproducers of fuzz/seeds.py into the corpus")
    sub.add_parser("list", help="the targets")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name, what in TARGETS.items():
            print(f"{name:<22}{what}")
        return 0
    if args.command == "seeds":
        from fuzz.seeds import write

        print(f"{write()} corpus files written")
        return 0
    names = args.target or list(TARGETS)
    if args.command == "replay":
        return replay(names)
    return run(names, args.seconds, max(1, args.jobs))


if __name__ == "__main__":
    sys.exit(main())
