"""Prometheus exposition of the per-batch aggregated statistics, computed at scrape time.

The request path never touches prometheus_client: it only bumps aggregates once per batch (and
once per failed request). A scrape reads the data plane's totals, which with ``--workers N``
already sum every worker's latest numbers, and renders two sets of families:

- ``gateway_*``: our own, with per-stage histograms (rendered by prometheus_client);
- ``nv_inference_*``: the subset of Triton's families that its dashboards and alerts read, with
  Triton's names, labels (``model``, ``version``; ``reason`` on failures), types and units
  (cumulative microseconds). Triton exposes its counters without the ``_total`` suffix that
  prometheus_client's text writer appends, so these are written by ``_write_exact``.

One ``GatewayMetrics`` per gateway instance (no module-level registry).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from gateway._native.inferjson import counts as decode_counts
from gateway._native.lane import counts as lane_counts
from gateway.backends.triton.backend import TritonBackend
from gateway.backends.triton.endpoint import LATENCY_BUCKETS
from gateway.dataplane import DataPlane
from gateway.observe.autoscale import WINDOW_S, Window, desired_replicas
from gateway.observe.stats import STAGES, Totals, cumulative_buckets
from gateway.pipeline.door import Door
from gateway.pipeline.precomputed import AGE_BUCKETS
from gateway.pipeline.traffic import TrafficControl

# Triton's failure reasons, from our neutral error codes: REJECTED is the scheduler turning a
# request away (queue full, deadline passed while queued), BACKEND a failed model execution,
# CANCELED a cancellation, OTHER everything else (bad input, unknown or unavailable version, ...).
TRITON_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
_REASON_OF_CODE = {"RESOURCE_EXHAUSTED": "REJECTED", "DEADLINE_EXCEEDED": "REJECTED", "CANCELLED": "CANCELED",
                   "INTERNAL": "BACKEND"}

Sample = tuple[dict[str, str], float]


def triton_reason(code: str) -> str:
    return _REASON_OF_CODE.get(code, "OTHER")


class _Families:
    """What ``generate_latest`` reads: a fixed list of families."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def gateway_families(totals: dict[tuple[str, str], Totals], unresolved: dict[tuple[str, str], int],
                     peers: list[dict[str, Any]]) -> list[Metric]:
    labels = ["model", "version"]
    requests = CounterMetricFamily(
        "gateway_requests",
        "Inference requests by outcome (success, or the error code). Failures that named no loaded "
        "version have version=\"\" (and model=\"\" when the model is unknown).",
        labels=[*labels, "outcome"])
    latency = HistogramMetricFamily(
        "gateway_request_stage_seconds",
        "Latency per stage: queue (wait before the batch), pack, compute, scatter (per batch) and "
        "total (per request, arrival to outputs ready).",
        labels=[*labels, "stage"])
    batch = HistogramMetricFamily("gateway_batch_rows", "Rows per executed batch.", labels=labels)
    release = CounterMetricFamily("gateway_batch_release", "Why batches were released.",
                                  labels=[*labels, "reason"])
    depth = GaugeMetricFamily("gateway_queue_rows", "Rows waiting in the batch queue.", labels=labels)
    in_flight = GaugeMetricFamily("gateway_requests_in_flight",
                                  "Requests queued or executing (a request split above max_batch_size "
                                  "counts once per chunk).", labels=labels)
    executions = CounterMetricFamily("gateway_batches", "Executed batches.", labels=labels)
    coalesced = CounterMetricFamily("gateway_coalesced_requests",
                                    "Requests answered from an identical request's computation (single-flight).",
                                    labels=labels)
    shared = CounterMetricFamily("gateway_shared_computations",
                                 "Computations that answered more than one request; coalesced / shared + 1 is "
                                 "the mean flight size.", labels=labels)
    hits = CounterMetricFamily("gateway_cache_hits", "Requests answered from the response cache.", labels=labels)
    misses = CounterMetricFamily("gateway_cache_misses", "Response cache lookups that missed.", labels=labels)
    evictions = CounterMetricFamily("gateway_cache_evictions", "Responses evicted to stay inside the byte bound.",
                                    labels=labels)
    cache_bytes = GaugeMetricFamily("gateway_cache_bytes", "Output bytes the response cache holds.", labels=labels)
    for (name, version), t in totals.items():
        lv = [name, version]
        requests.add_metric([*lv, "success"], t.success_count)
        for code, n in t.fail_by_code.items():
            requests.add_metric([*lv, code.lower()], n)
        for stage in STAGES:
            buckets, total = t.cumulative(stage)
            latency.add_metric([*lv, stage], buckets, total)
        buckets, total = t.cumulative("rows")
        batch.add_metric(lv, buckets, total)
        for reason, n in t.release.items():
            release.add_metric([*lv, reason], n)
        depth.add_metric(lv, t.queue_rows)
        in_flight.add_metric(lv, t.pending + t.executing)
        executions.add_metric(lv, t.execution_count)
        coalesced.add_metric(lv, t.coalesced_count)
        shared.add_metric(lv, t.shared_flights)
        hits.add_metric(lv, t.cache_hit_count)
        misses.add_metric(lv, t.cache_miss_count)
        evictions.add_metric(lv, t.cache_evictions)
        cache_bytes.add_metric(lv, t.cache_bytes)
    for (model, code), n in sorted(unresolved.items()):
        requests.add_metric([model, "", code.lower()], n)
    workers = GaugeMetricFamily("gateway_workers_reporting",
                                "Server processes whose statistics this scrape sums (this one and the "
                                "peers with a snapshot).")
    workers.add_metric([], 1 + len(peers))
    age = GaugeMetricFamily("gateway_worker_snapshot_age_seconds",
                            "Age of the oldest peer snapshot this scrape summed (0 with one worker): "
                            "how stale the other workers' part of it may be.")
    now = time.time()
    age.add_metric([], max((max(0.0, now - float(d.get("written_at", now))) for d in peers), default=0.0))
    return [requests, latency, batch, release, depth, in_flight, executions, coalesced, shared, hits, misses,
            evictions, cache_bytes, workers, age]


def autoscale_families(dp: DataPlane, totals: dict[tuple[str, str], Totals],
                       unresolved: dict[tuple[str, str], int], window: Window, now: float) -> list[Metric]:
    """Autoscaling signals over the recent window (``observe.autoscale``), from the merged totals:
    per version queue-wait p95 and batch fill; per model with a ``capacity_rps`` the configured
    capacity and the replica count the window's load asks for."""
    per_version, load = window.observe(now, totals, unresolved)
    configs = {mv.name: mv.config for mv in dp.registry.versions()}  # the versions of a model share it
    labels = ["model", "version"]
    wait = GaugeMetricFamily("gateway_queue_wait_p95_seconds",
                             f"95th percentile of the queue stage over the last ~{window.window_s:g} s "
                             "(0 when nothing waited).", labels=labels)
    fill = GaugeMetricFamily("gateway_batch_fill_ratio",
                             f"Mean rows per executed batch over the last ~{window.window_s:g} s, over "
                             "max_batch_size (0 when no batch ran; absent without batching).", labels=labels)
    for (name, version), w in sorted(per_version.items()):
        wait.add_metric([name, version], w.queue_wait_p95_s)
        cfg = configs.get(name)
        if cfg is not None and cfg.max_batch_size > 0:
            fill.add_metric([name, version], min(1.0, w.mean_rows / cfg.max_batch_size))
    capacity = GaugeMetricFamily("gateway_capacity_rps",
                                 "Requests per second one replica serves (config.toml capacity_rps); absent "
                                 "when unknown.", labels=["model"])
    desired = GaugeMetricFamily("gateway_desired_replicas",
                                "max(1, ceil(load / (capacity_rps x capacity_headroom))), load being the "
                                f"requests per second the whole server answered over the last ~{window.window_s:g} s "
                                "(every version and worker).", labels=["model"])
    demand = GaugeMetricFamily("gateway_replica_demand",
                               "load / (capacity_rps x capacity_headroom), unrounded: the replicas this "
                               "server's share of the load asks for. Summed over replicas and rounded up it is "
                               "the fleet's desired count (what autoscalers should read).", labels=["model"])
    for name, cfg in sorted(configs.items()):
        if cfg.capacity_rps > 0:
            rps = load.get(name, 0.0)
            capacity.add_metric([name], cfg.capacity_rps)
            desired.add_metric([name], desired_replicas(rps, cfg.capacity_rps, cfg.capacity_headroom))
            demand.add_metric([name], rps / (cfg.capacity_rps * cfg.capacity_headroom))
    return [wait, fill, capacity, desired, demand]


def triton_families(totals: dict[tuple[str, str], Totals]) -> list[tuple[str, str, str, list[Sample]]]:
    """(name, help, type, samples) of the Triton-compatible families, per model version."""

    def per_version(value: Any) -> list[Sample]:
        return [({"model": n, "version": v}, value(t)) for (n, v), t in totals.items()]

    failures: list[Sample] = []
    for (n, v), t in totals.items():
        by_reason = dict.fromkeys(TRITON_REASONS, 0)
        for code, k in t.fail_by_code.items():
            by_reason[triton_reason(code)] += k
        failures += [({"model": n, "reason": r, "version": v}, k) for r, k in by_reason.items()]
    us = 1000
    return [
        ("nv_inference_request_success", "Successful inference requests (a request counts once, whatever "
         "its batch size).", "counter", per_version(lambda t: t.success_count)),
        ("nv_inference_request_failure", "Failed inference requests by reason (REJECTED: queue full or "
         "deadline passed while queued; BACKEND: model execution failed; OTHER: bad input and the rest).",
         "counter", failures),
        ("nv_inference_count", "Inferences performed (a batch of n rows counts n).", "counter",
         per_version(lambda t: t.inference_count)),
        ("nv_inference_exec_count", "Model executions (batches) performed.", "counter",
         per_version(lambda t: t.execution_count)),
        ("nv_inference_request_duration_us", "Cumulative time of successful requests, arrival to outputs "
         "ready, in microseconds.", "counter", per_version(lambda t: t.success_ns // us)),
        ("nv_inference_queue_duration_us", "Cumulative time successful requests waited in the batch queue, "
         "in microseconds.", "counter", per_version(lambda t: t.queue_ns // us)),
        ("nv_inference_compute_input_duration_us", "Cumulative time spent packing request inputs into "
         "batches, per request, in microseconds.", "counter", per_version(lambda t: t.input_ns // us)),
        ("nv_inference_compute_infer_duration_us", "Cumulative time spent executing the model, per request, "
         "in microseconds.", "counter", per_version(lambda t: t.infer_ns // us)),
        ("nv_inference_compute_output_duration_us", "Cumulative time spent scattering outputs back to "
         "requests, per request, in microseconds.", "counter", per_version(lambda t: t.output_ns // us)),
        ("nv_inference_pending_request_count", "Requests queued and not yet executing, now.", "gauge",
         per_version(lambda t: t.pending)),
    ]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _write_exact(families: Iterable[tuple[str, str, str, list[Sample]]]) -> bytes:
    """Prometheus text format with sample names exactly as given (no ``_total`` added)."""
    out: list[str] = []
    for name, doc, typ, samples in families:
        out.append(f"# HELP {name} {_escape(doc)}\n# TYPE {name} {typ}\n")
        for labels, value in samples:
            lbl = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            out.append(f"{name}{{{lbl}}} {floatToGoString(value)}\n")
    return "".join(out).encode()


def traffic_families(traffic: TrafficControl) -> list[Metric]:
    """Per model: the split in force, guard states, rollbacks, shadow comparison, outcomes.

    The outcome counters (count, sum, sum of squares per arm and metric) are additive, so summing
    them over replicas in PromQL gives the fleet-wide test that ``pipeline.outcomes`` runs locally."""
    weight = GaugeMetricFamily("gateway_traffic_weight", "Percent of unpinned requests each version takes.",
                               labels=["model", "version"])
    guard = GaugeMetricFamily("gateway_traffic_guard_state",
                              "1 for the canary's current guard verdict (ok, insufficient data, breach).",
                              labels=["model", "version", "state"])
    rollbacks = CounterMetricFamily("gateway_traffic_rollbacks", "Canary rollbacks, by guard or admin.",
                                    labels=["model", "version", "kind"])
    s_labels = ["model", "primary", "shadow"]
    compared = CounterMetricFamily("gateway_shadow_compared", "Mirrored requests whose answers were compared.",
                                   labels=s_labels)
    agreed = CounterMetricFamily("gateway_shadow_agreed",
                                 "Compared answers that agreed (argmax for classifier outputs, else within "
                                 "tolerance).", labels=s_labels)
    shadow_errors = CounterMetricFamily("gateway_shadow_errors", "Mirrored requests the shadow failed.",
                                        labels=s_labels)
    shed = CounterMetricFamily("gateway_shadow_shed", "Mirror copies skipped because the shadow was behind.",
                               labels=s_labels)
    max_abs = GaugeMetricFamily("gateway_shadow_max_abs_diff", "Largest absolute output difference seen.",
                                labels=s_labels)
    lat = GaugeMetricFamily("gateway_shadow_latency_diff_seconds", "Mean shadow minus primary latency.",
                            labels=s_labels)
    o_labels = ["model", "arm", "metric"]
    o_count = CounterMetricFamily("gateway_outcome_count", "Outcomes credited to an arm.", labels=o_labels)
    o_sum = CounterMetricFamily("gateway_outcome_sum", "Sum of outcome values per arm.", labels=o_labels)
    o_sq = CounterMetricFamily("gateway_outcome_sum_squares", "Sum of squared outcome values per arm.",
                               labels=o_labels)
    unattributed = CounterMetricFamily("gateway_outcome_unattributed",
                                       "Outcomes no arm could be credited with (unknown or expired id, ...).",
                                       labels=["model"])
    for name, m in sorted(traffic.models.items()):
        p = m.policy
        for v in sorted(m.versions, key=int):
            weight.add_metric([name, v], m.weight(v))
        for v, verdict in sorted(m.verdicts.items()):
            for state in ("ok", "insufficient", "breach"):
                guard.add_metric([name, v, state], 1.0 if verdict.state == state else 0.0)
        for (v, kind), n in sorted(m.rollbacks.items()):
            rollbacks.add_metric([name, v, kind], n)
        if p is not None and p.shadow is not None:
            for primary, c in sorted(m.comparisons.items()):
                snap = c.snapshot()
                lbl = [name, primary, p.shadow.version]
                compared.add_metric(lbl, snap.get("compared", 0))
                agreed.add_metric(lbl, snap.get("agreed", 0))
                shadow_errors.add_metric(lbl, snap.get("shadow_errors", 0))
                shed.add_metric(lbl, snap.get("shed", 0))
                max_abs.add_metric(lbl, snap.get("max_abs_diff") or 0.0)
                lat.add_metric(lbl, (snap.get("mean_latency_diff_ms") or 0.0) / 1e3)
        for (arm, metric), (n, total, squares) in sorted(m.book.totals().items()):
            o_count.add_metric([name, arm, metric], n)
            o_sum.add_metric([name, arm, metric], total)
            o_sq.add_metric([name, arm, metric], squares)
        unattributed.add_metric([name], m.book.unattributed)
    return [weight, guard, rollbacks, compared, agreed, shadow_errors, shed, max_abs, lat, o_count, o_sum, o_sq,
            unattributed]


def remote_families(dp: DataPlane) -> list[Metric]:
    """Per endpoint of every remote (``backend = "triton"``) version: calls in flight, call latency,
    outcomes by gRPC code, health and breaker state. Empty when no model is remote."""
    labels = ["model", "version", "endpoint"]
    outstanding = GaugeMetricFamily("gateway_remote_outstanding", "Calls in flight to the endpoint.", labels=labels)
    calls = CounterMetricFamily("gateway_remote_calls", "Calls to the endpoint, by gRPC status code.",
                                labels=[*labels, "code"])
    seconds = HistogramMetricFamily("gateway_remote_call_seconds", "Duration of calls to the endpoint.",
                                    labels=labels)
    healthy = GaugeMetricFamily("gateway_remote_healthy",
                                "1 while the endpoint's ServerReady and ModelReady say ready.", labels=labels)
    breaker = GaugeMetricFamily("gateway_remote_breaker_state",
                                "The endpoint's circuit breaker: 0 closed, 1 half-open, 2 open.", labels=labels)
    now = time.perf_counter()
    seen = False
    for mv in dp.registry.versions():
        backend = mv.backend
        if not isinstance(backend, TritonBackend):
            continue
        seen = True
        for ep in backend.endpoints:
            key = [mv.name, mv.version, ep.address]
            outstanding.add_metric(key, ep.outstanding)
            ok = ep.calls - sum(ep.errors.values())
            calls.add_metric([*key, "OK"], ok)
            for code, n in sorted(ep.errors.items()):
                calls.add_metric([*key, code], n)
            seconds.add_metric(key, cumulative_buckets(LATENCY_BUCKETS, ep.latency.bucket_counts()),
                              ep.latency.sum)
            healthy.add_metric(key, 1.0 if ep.healthy else 0.0)
            breaker.add_metric(key, {"closed": 0, "half_open": 1, "open": 2}[ep.breaker(now)])
    return [outstanding, calls, seconds, healthy, breaker] if seen else []


def precomputed_families(dp: DataPlane) -> list[Metric]:
    """The precomputed route of every version that has one: lookups, hits, live fallbacks by reason,
    ages of the answers served. Empty when no model has ``[precomputed]``."""
    labels = ["model", "version"]
    lookups = CounterMetricFamily("gateway_precomputed_lookups", "Keyed requests looked up in the store.",
                                  labels=labels)
    hits = CounterMetricFamily("gateway_precomputed_hits", "Requests answered from the store.", labels=labels)
    fallbacks = CounterMetricFamily("gateway_precomputed_fallbacks",
                                    "Requests that ran live (or failed, with fallback = error), by reason.",
                                    labels=[*labels, "reason"])
    age = HistogramMetricFamily("gateway_precomputed_age_seconds", "Age of the stored answers served.",
                                labels=labels)
    errors = CounterMetricFamily("gateway_precomputed_store_errors",
                                 "Store lookups that failed, timed out or read an unreadable entry.", labels=labels)
    stale = CounterMetricFamily("gateway_precomputed_stale_served",
                                "Stale entries answered because the live run failed (stale_if_error_s).",
                                labels=labels)
    writes = CounterMetricFamily("gateway_precomputed_write_backs", "Live answers buffered for the store.",
                                 labels=labels)
    dropped = CounterMetricFamily("gateway_precomputed_write_backs_dropped",
                                  "Write-backs dropped (buffer full, or the store refused the flush).", labels=labels)
    seen = False
    for mv in dp.registry.versions():
        pc = mv.precomputed
        if pc is None:
            continue
        seen = True
        key = [mv.name, mv.version]
        st = pc.pstats
        lookups.add_metric(key, st.lookups)
        hits.add_metric(key, st.hits)
        for reason, n in st.fallbacks.items():
            fallbacks.add_metric([*key, reason], n)
        age.add_metric(key, cumulative_buckets(AGE_BUCKETS, st.age.bucket_counts()), st.age.sum)
        errors.add_metric(key, st.store_errors)
        stale.add_metric(key, st.stale_served)
        writes.add_metric(key, st.write_backs)
        dropped.add_metric(key, getattr(pc.store, "dropped", 0))
    return [lookups, hits, fallbacks, age, errors, stale, writes, dropped] if seen else []


def door_families(door: Door) -> list[Metric]:
    """Shedding at the door (this process: every worker has its own loop)."""
    refused = CounterMetricFamily("gateway_door_refused",
                                  "Infer requests refused before decoding because the event loop ran late.")
    refused.add_metric([], door.refused)
    lag = GaugeMetricFamily("gateway_loop_lag_seconds",
                            "Largest event-loop lag seen since the previous scrape (0 when shedding is off).")
    lag.add_metric([], door.take_max_lag())
    return [refused, lag]


def _by_path(name: str, doc: str, counts: tuple[int, int], paths: tuple[str, str]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=["path"])
    for path, n in zip(paths, counts, strict=True):
        family.add_metric([path], n)
    return family


def decode_families() -> list[Metric]:
    """Which HTTP infer bodies took the native decoder, and which requests the native lane (this process)."""
    return [
        _by_path("gateway_http_decode", "HTTP infer request bodies by decoder: native (C, the common shapes) or "
                 "general (interpreted: BYTES or FP16 JSON data, shared memory, escaped strings, other parameters, "
                 "and every malformed body, which it names).", decode_counts(), ("native", "general")),
        _by_path("gateway_http_lane", "HTTP infer requests by request path: lane (the version's native lane, from "
                 "decode to queue and back in C) or general (the Python stages: traffic policies, compression, "
                 "shared memory, caches, priorities, a full flight, and every refusal, which they name).",
                 lane_counts(), ("lane", "general")),
    ]


class GatewayMetrics:
    """The /metrics document of one gateway: rendered from the data plane's totals at scrape time."""

    def __init__(self, dataplane: DataPlane, window_s: float = WINDOW_S) -> None:
        self.dataplane = dataplane
        self.window = Window(time.monotonic(), window_s)  # the autoscaling signals' ring of points

    def render(self) -> bytes:
        dp = self.dataplane
        peers = dp.peer_docs()  # read once per scrape
        totals = dp.version_totals(peers=peers)
        unresolved = dp.unresolved_totals(peers=peers)
        families = (gateway_families(totals, unresolved, peers)
                    + autoscale_families(dp, totals, unresolved, self.window, time.monotonic())
                    + traffic_families(dp.traffic)
                    + door_families(dp.door) + remote_families(dp) + precomputed_families(dp) + decode_families())
        return (generate_latest(_Families(families))  # type: ignore[arg-type]
                + _write_exact(triton_families(totals)))


def make_metrics_registry(dataplane: DataPlane) -> GatewayMetrics:
    return GatewayMetrics(dataplane)


def render_metrics(metrics: GatewayMetrics) -> bytes:
    return metrics.render()
