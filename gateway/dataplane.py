"""The protocol-neutral data plane: what both front ends (HTTP, gRPC) and the embedded API call.

Front ends decode their wire format into ``gateway.types.InferRequest`` and hand it to
``submit`` (callback style: the HTTP hot path allocates no future or task per request) or
``infer`` (awaitable, for gRPC and embedded use). Everything the fronts may show a client
(metadata, config, statistics, repository index) comes from here as plain dicts in the
KServe v2 / Triton JSON shapes, which the gRPC front converts to protobuf.

Errors are ``GatewayError`` with a neutral ``Code``; the fronts map them through
``gateway.errors``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from gateway import __version__
from gateway.batcher import SplitGroup, Ticket
from gateway.errors import GatewayError, not_found
from gateway.registry import ModelRegistry, ModelVersion
from gateway.route import Router
from gateway.types import InferRequest, InferResponse

DoneCallback = Callable[[InferResponse | None, GatewayError | None], None]

# Extensions served (shared memory, trace and logging are answered UNIMPLEMENTED, so not listed).
SERVED_EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics", "model_configuration", "parameters"]


class DataPlane:
    """Facade over registry + router + batchers. Owns no I/O of its own."""

    def __init__(self, registry: ModelRegistry, router: Router, server_name: str = "inference-gateway") -> None:
        self.registry = registry
        self.router = router
        self.server_name = server_name
        self._metadata = {"name": server_name, "version": __version__, "extensions": SERVED_EXTENSIONS}

    # ---- health and metadata -------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.registry.ready()

    def server_metadata(self) -> dict[str, Any]:
        return self._metadata

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            return self.registry.get(name, version).ready
        except GatewayError:
            return False

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        mv = self.registry.get(name, version, require_ready=False)
        return mv.metadata(self.registry.version_labels(name))

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        return self.registry.get(name, version, require_ready=False).triton_config()

    def model_statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        """Triton statistics extension: {"model_stats": [...]} for one model/version or all."""
        stats = []
        for mv in self.registry.versions(name, version):
            stats.append(mv.stats.snapshot().to_json(mv.name, mv.version))
        if name and not stats:
            self.registry.get(name, version, require_ready=False)  # raises Triton's "unknown model" error
            raise not_found(f"Request for unknown model: '{name}' is not found")
        return {"model_stats": stats}

    # ---- inference -----------------------------------------------------------------------
    def resolve(self, request: InferRequest) -> ModelVersion:
        return self.router.resolve(request)

    def submit(self, request: InferRequest, done: DoneCallback, eager: bool = False) -> Ticket | SplitGroup:
        """Queue a request; ``done`` is called exactly once, on the loop thread, unless cancelled.

        Validation errors raise ``GatewayError`` synchronously (nothing queued). Calling
        ``ticket.cancel()`` before the batch runs drops the request and ``done`` is never called.
        """
        return self.router.resolve(request).batcher.submit(request, done, eager)

    async def infer(self, request: InferRequest, eager: bool = False) -> InferResponse:
        """Awaitable form of ``submit``; cancelling the awaiting task drops the queued work.
        ``eager``: see ``Batcher.submit`` (the gRPC front sets it)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[InferResponse] = loop.create_future()

        def done(resp: InferResponse | None, err: GatewayError | None) -> None:
            if fut.done():
                return
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(resp)  # type: ignore[arg-type]

        ticket = self.submit(request, done, eager)
        try:
            return await fut
        except asyncio.CancelledError:
            ticket.cancel()
            raise

    # ---- repository ----------------------------------------------------------------------
    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        return self.registry.index(ready_only)

    async def load_model(self, name: str, config: str | None = None,
                         parameters: Mapping[str, Any] | None = None) -> None:
        """``config``: Triton's model config as JSON, replacing config.pbtxt for this load;
        ``parameters``: a load request's parameters as the front decoded them (``config`` among them)."""
        await self.registry.load(name, config, parameters)

    async def unload_model(self, name: str) -> None:
        await self.registry.unload(name)
