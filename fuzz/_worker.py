"""One target under atheris, in its own process (``python -m fuzz run`` starts these):

    python -m fuzz._worker TARGET [libFuzzer flags] WORK_CORPUS SEED_CORPUS

The gateway's modules (and the targets and references) are instrumented as they are first
imported, which is why ``fuzz/__init__.py`` imports none of them. ``FUZZ_DEADLINE`` (a Unix
time) becomes libFuzzer's ``-max_total_time`` once the target is set up, so a slow setup
(model loading) comes out of the target's budget instead of adding to the run.
"""

from __future__ import annotations

import importlib
import os
import sys
import time

import atheris


def main() -> None:
    name = sys.argv[1]
    with atheris.instrument_imports(include=["gateway", "fuzz", "native_refs"]):
        module = importlib.import_module(f"fuzz.{name}")
    setup = getattr(module, "setup", None)
    if setup is not None:
        setup()
    args = [sys.argv[0], *sys.argv[2:]]
    deadline = float(os.environ.get("FUZZ_DEADLINE", "0"))
    if deadline:
        args.insert(1, f"-max_total_time={max(1, round(deadline - time.time()))}")
    atheris.Setup(args, module.one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
