"""Triton / KServe v2 JSON documents of a model: metadata, config and statistics.

The core keeps models and their numbers as objects (``ModelVersion``, ``Totals``); what a client
reads about them is a wire format, so it is built here, once, for both fronts: the HTTP front
sends these dicts as they are and the gRPC front fills protobuf from them (their keys are the
protobuf field names, see ``front.grpc.meta``). Off the hot path: asked for once per client
(perf_analyzer reads metadata and config before it starts) or per scrape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.observe.stats import Totals
from gateway.repository.registry import ModelVersion
from gateway.repository.triton_config import triton_type
from gateway.types import TensorSpec


def model_metadata(mv: ModelVersion, versions: list[str]) -> dict[str, Any]:
    """KServe v2 model metadata; ``versions``: every loaded version of the model."""

    def t(s: TensorSpec) -> dict[str, Any]:
        return {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}

    return {
        "name": mv.name,
        "versions": versions,
        "platform": mv.backend.platform,
        "inputs": [t(s) for s in mv.signature.inputs],
        "outputs": [t(s) for s in mv.signature.outputs],
    }


def model_config(mv: ModelVersion) -> dict[str, Any]:
    """Triton's model config JSON (perf_analyzer reads it to learn max_batch_size and dims):
    the effective values, which for a config.pbtxt are the declared ones."""
    c = mv.config
    b = c.batching
    reshapes = {d.name: d.reshape for d in (mv.triton.inputs + mv.triton.outputs if mv.triton else ())
                if d.reshape is not None}

    def t(s: TensorSpec) -> dict[str, Any]:
        out: dict[str, Any] = {"name": s.name, "data_type": triton_type(s.datatype),
                               "dims": list(s.shape[1:] if b else s.shape)}
        if s.name in reshapes:
            out["reshape"] = {"shape": list(reshapes[s.name])}
        return out

    out: dict[str, Any] = {
        "name": mv.name,
        "platform": mv.backend.platform,
        "backend": "onnxruntime",
        "max_batch_size": c.max_batch_size,
        "version_policy": c.version_policy.to_triton(),
        "input": [t(s) for s in mv.signature.inputs],
        "output": [t(s) for s in mv.signature.outputs],
        "instance_group": [{"name": mv.name, "count": c.instances,
                            "kind": "KIND_GPU" if mv.backend.device.startswith("CUDA") else "KIND_CPU"}],
        "default_model_filename": mv.model_filename,
        "parameters": {"execution": {"string_value": "inline" if mv.backend.inline else "thread"},
                       "provider": {"string_value": mv.backend.device}},
    }
    if b:
        out["dynamic_batching"] = {
            "preferred_batch_size": list(c.preferred_batch_sizes),
            "max_queue_delay_microseconds": c.max_queue_delay_us,
            # a client's own timeout always applies here: allow_timeout_override is true
            "default_queue_policy": {"max_queue_size": c.max_queue_size,
                                     "default_timeout_microseconds": c.timeout_us,
                                     "allow_timeout_override": True},
        }
        if c.priority_levels:
            out["dynamic_batching"].update(
                priority_levels=c.priority_levels, default_priority_level=c.default_level,
                priority_queue_policy={str(lv): {"max_queue_size": n, "allow_timeout_override": True}
                                       for lv, n in c.priority_queue_size})
    if mv.triton and mv.triton.warmup:
        out["model_warmup"] = [s.to_triton() for s in mv.triton.warmup]
    return out


def version_statistics(name: str, version: str, t: Totals) -> dict[str, Any]:
    """Triton statistics extension shape for one model version."""

    def d(count: int, ns: int) -> dict[str, int]:
        return {"count": count, "ns": ns}

    return {
        "name": name,
        "version": version,
        "last_inference": t.last_inference_ms,
        "inference_count": t.inference_count,
        "execution_count": t.execution_count,
        "inference_stats": {
            "success": d(t.success_count, t.success_ns),
            "fail": d(t.fail_count, t.fail_ns),
            "queue": d(t.queue_count, t.queue_ns),
            "compute_input": d(t.input_count, t.input_ns),
            "compute_infer": d(t.infer_count, t.infer_ns),
            "compute_output": d(t.output_count, t.output_ns),
            "cache_hit": d(t.cache_hit_count, t.cache_hit_ns),
            "cache_miss": d(t.cache_miss_count, t.cache_miss_ns),
        },
        "batch_stats": [
            {
                "batch_size": size,
                # Triton's per batch-size table counts executions, each charged its batch's times.
                "compute_input": d(b[0], b[1]),
                "compute_infer": d(b[0], b[2]),
                "compute_output": d(b[0], b[3]),
            }
            for size, b in sorted(t.batch_sizes.items())
        ],
    }


def model_statistics(totals: Mapping[tuple[str, str], Totals]) -> dict[str, Any]:
    """Triton statistics extension document, ``{"model_stats": [...]}``, for the (model, version)
    totals the data plane gives (``DataPlane.model_totals``)."""
    return {"model_stats": [version_statistics(n, v, t) for (n, v), t in totals.items()]}
