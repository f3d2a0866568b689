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
"""
