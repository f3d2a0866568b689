"""Assembles the serving pipeline: repository -> traffic control -> router -> data plane.

One place builds these for the server (``app``), the embedded API and the tests, so that each
gets the same wiring: the repository publishes ready versions to traffic control, which owns the
router's table; the router asks the repository for the error to give when a model is missing.
Backends come from the factory passed in (by default onnxruntime and triton, chosen per model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.backends.base import BackendFactory
from gateway.backends.kinds import Backends
from gateway.backends.onnx import OnnxFactory
from gateway.backends.triton import TritonFactory
from gateway.dataplane import DataPlane
from gateway.pipeline.admit import InflightCap
from gateway.pipeline.door import Door
from gateway.pipeline.route import Router
from gateway.pipeline.traffic import TrafficControl, TrafficSettings
from gateway.repository.registry import ModelRegistry
from gateway.shm import SharedMemoryRegistry


@dataclass(slots=True)
class Pipeline:
    registry: ModelRegistry
    router: Router
    traffic: TrafficControl
    dataplane: DataPlane


def build_pipeline(root: str | Path, *, backends: BackendFactory | None = None, strict_readiness: bool = True,
                   server_name: str = "inference-gateway", shm: SharedMemoryRegistry | None = None,
                   repository_locked: str = "", traffic_locked: str = "",
                   traffic: TrafficSettings | None = None,
                   peers: Callable[[], list[dict[str, Any]]] | None = None,
                   inflight: InflightCap | None = None, door: Door | None = None) -> Pipeline:
    holder: list[ModelRegistry] = []
    router = Router(lambda name, version: holder[0].miss(name, version))
    control = TrafficControl(router, traffic, locked=traffic_locked)
    factory = backends or Backends(onnxruntime=OnnxFactory(), triton=TritonFactory())  # a repository may mix them
    registry = ModelRegistry(Path(root), factory, control.publish,
                             strict_readiness=strict_readiness)
    holder.append(registry)
    dataplane = DataPlane(registry, router, control, server_name=server_name, shm=shm, peers=peers,
                          repository_locked=repository_locked, inflight=inflight, door=door)
    return Pipeline(registry, router, control, dataplane)
