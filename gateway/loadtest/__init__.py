"""``gateway loadtest``: an open-loop load generator, SLO sweep and capacity model for KServe v2 servers.

Modules, in the order a run flows through them:
  targets      model metadata -> precomputed request bytes (HTTP JSON, HTTP binary, gRPC)
  schedule     arrival times (constant, Poisson, ramps, steps)
  http_client  raw HTTP/1.1 keep-alive protocol + connection pool (open and closed loop)
  grpc_client  grpc.aio with pre-serialized messages
  recorder     per-request outcome arrays
  runner       one generator process: schedule, drain, bounds
  launch       several generator processes, started together
  merge        HDR histograms per process and interval, merged
  scrape       server /metrics and statistics deltas
  sweep        knee search and capacity model
  report       JSON, CSV, PNG and HTML
  cli          the command line
Import cost matters for ``gateway`` startup, so nothing is imported here.

Its plotting, progress and histogram libraries are the ``loadtest`` extra, not server
dependencies: ``require_extra`` names the extra when one is missing instead of a traceback.
"""

from __future__ import annotations

import importlib

EXTRA_MODULES = ("hdrh", "rich", "matplotlib")
INSTALL_HINT = "pip install 'inference-gateway[loadtest]'"


def require_extra() -> str | None:
    """None when the load tester can run, else the message to show."""
    missing = []
    for module in EXTRA_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        return (f"gateway loadtest needs the 'loadtest' extra (missing: {', '.join(missing)}); "
                f"install it with: {INSTALL_HINT}")
    return None
