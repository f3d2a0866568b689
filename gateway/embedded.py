"""In-process use of the same pipeline (repository, router, batcher, backend), without sockets.

    async with Gateway.from_repository("models/") as gw:
        outputs = await gw.infer("mlp", {"INPUT0": x})

Concurrent ``infer`` calls are batched exactly as network requests are. ``Gateway.demo()``
serves the demo models (written to a temporary directory that is removed on exit).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from gateway.compose import build_pipeline
from gateway.types import InferRequest


class Gateway:
    def __init__(self, repository: str | Path) -> None:
        p = build_pipeline(Path(repository))
        self.registry = p.registry
        self.traffic = p.traffic
        self.dataplane = p.dataplane
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @classmethod
    def from_repository(cls, repository: str | Path) -> Gateway:
        return cls(repository)

    @classmethod
    def demo(cls) -> Gateway:
        """The demo repository (``gateway.demo``), built in a temporary directory."""
        from gateway.demo import build_demo_repository

        tmp = tempfile.TemporaryDirectory(prefix="gateway-demo-")
        gw = cls(build_demo_repository(Path(tmp.name)))
        gw._tmp = tmp
        return gw

    async def __aenter__(self) -> Gateway:
        await self.registry.load_all()
        self.traffic.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.traffic.stop()
        await self.registry.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    async def infer(self, model: str, inputs: Mapping[str, Any], *, version: str = "",
                    outputs: Sequence[str] | None = None, timeout_us: int = 0,
                    parameters: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Run one request; arrays are converted to the model's declared dtypes. ``parameters``: the
        request's (``priority``, a precomputed route's key, ``max_staleness_s``, ...)."""
        mv = self.registry.get(model, version)
        specs = {s.name: s for s in mv.signature.inputs}
        arrays = {}
        for name, value in inputs.items():
            spec = specs.get(name)
            arrays[name] = np.asarray(value, dtype=spec.dtype) if spec is not None else np.asarray(value)
        req = InferRequest(model, version, arrays, list(outputs) if outputs is not None else None,
                           parameters=dict(parameters) if parameters else None, timeout_us=timeout_us)
        resp = await self.dataplane.infer(req)
        return resp.outputs

    def models(self) -> list[dict[str, Any]]:
        return self.dataplane.repository_index()
