"""Prometheus exposition of the per-batch aggregated statistics.

A custom collector reads ``ModelStats`` of every loaded version at scrape time, so the request
path never touches prometheus_client: it only bumps aggregates once per batch. One registry per
gateway instance (no module-level singletons), rendered by ``render_metrics``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.registry import ModelRegistry
from gateway.stats import STAGES


class GatewayCollector(Collector):
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        requests = CounterMetricFamily("gateway_requests", "Inference requests by outcome.",
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
        executions = CounterMetricFamily("gateway_batches", "Executed batches.", labels=labels)
        for mv in self.registry.versions():
            s = mv.stats
            lv = [mv.name, mv.version]
            requests.add_metric([*lv, "success"], s.success_count)
            for code, n in s.fail_by_code.items():
                requests.add_metric([*lv, code.lower()], n)
            for stage in STAGES:
                h = s.latency[stage]
                latency.add_metric([*lv, stage], h.cumulative(), h.sum)
            batch.add_metric(lv, s.batch_rows.cumulative(), s.batch_rows.sum)
            for reason, n in s.release.items():
                release.add_metric([*lv, reason], n)
            depth.add_metric(lv, s.queue_rows)
            executions.add_metric(lv, s.execution_count)
        yield from (requests, latency, batch, release, depth, executions)


def make_metrics_registry(registry: ModelRegistry) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(GatewayCollector(registry))
    return reg


def render_metrics(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
