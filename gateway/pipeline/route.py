"""Routing: which loaded model version serves a request.

Today: the version the client pinned, else the model's default (its highest loaded version).
Traffic policies (canary weights, sticky A/B, shadows, rollback guards) plug in here, so the
fronts and the batcher never change when they arrive.
"""

from __future__ import annotations

from gateway.repository.registry import ModelRegistry, ModelVersion
from gateway.types import InferRequest


class Router:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def resolve(self, request: InferRequest) -> ModelVersion:
        return self.registry.get(request.model_name, request.model_version)
