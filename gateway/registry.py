"""Model repository: finds models on disk, loads, warms, serves and unloads their versions.

Layout (Triton's): ``<repo>/<model>/<version>/model.onnx`` with optional
``<repo>/<model>/config.toml`` and/or Triton's ``config.pbtxt`` (see ``triton_config``). A version is loaded and warmed (one inference per instance)
before it reports ready; an unloaded version stops accepting, drains, then closes.
State changes happen synchronously on the loop thread; the slow parts (session creation,
warm-up) run in a worker thread so the loop keeps serving other models meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gateway.backends.onnx import OnnxBackend
from gateway.batcher import Batcher
from gateway.errors import Code, GatewayError, not_found
from gateway.model_config import ConfigError, ModelConfig, check_against_graph, parse_config, read_config_file
from gateway.stats import ModelStats
from gateway.triton_config import read_pbtxt
from gateway.types import TensorSpec
from gateway.validate import Signature

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"


def _triton_dims(spec: TensorSpec, batching: bool) -> list[int]:
    return list(spec.shape[1:] if batching else spec.shape)


class ModelVersion:
    """One loaded version: config, backend, batcher, statistics."""

    def __init__(self, name: str, version: str, config: ModelConfig, backend: OnnxBackend,
                 clock: Callable[[], float]) -> None:
        self.name = name
        self.version = version
        self.config = config
        self.backend = backend
        self.stats = ModelStats()
        self.signature = Signature.build(name, backend.inputs, backend.outputs, config.batching)
        self.batcher = Batcher(name, version, config, backend, self.signature, self.stats, clock)
        self.ready = False

    def metadata(self, versions: list[str]) -> dict[str, Any]:
        def t(s: TensorSpec) -> dict[str, Any]:
            return {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}

        return {
            "name": self.name,
            "versions": versions,
            "platform": self.backend.platform,
            "inputs": [t(s) for s in self.signature.inputs],
            "outputs": [t(s) for s in self.signature.outputs],
        }

    def triton_config(self) -> dict[str, Any]:
        """Triton's model config JSON (perf_analyzer reads it to learn max_batch_size and dims)."""
        c = self.config
        b = c.batching

        def t(s: TensorSpec) -> dict[str, Any]:
            return {"name": s.name, "data_type": "TYPE_" + ("STRING" if s.datatype == "BYTES" else s.datatype),
                    "dims": _triton_dims(s, b)}

        out: dict[str, Any] = {
            "name": self.name,
            "platform": self.backend.platform,
            "backend": "onnxruntime",
            "max_batch_size": c.max_batch_size,
            "version_policy": c.version_policy.to_triton(),
            "input": [t(s) for s in self.signature.inputs],
            "output": [t(s) for s in self.signature.outputs],
            "instance_group": [{"name": self.name, "count": c.instances,
                                "kind": "KIND_GPU" if self.backend.device.startswith("CUDA") else "KIND_CPU"}],
            "parameters": {"execution": {"string_value": "inline" if self.backend.inline else "thread"},
                           "provider": {"string_value": self.backend.device}},
        }
        if b:
            out["dynamic_batching"] = {
                "preferred_batch_size": list(c.preferred_batch_sizes),
                "max_queue_delay_microseconds": c.max_queue_delay_us,
            }
        return out

    def warm_up(self) -> None:
        rows = self.config.max_batch_size or 1
        feeds = {s.name: _zeros(s, rows if self.config.batching else None) for s in self.signature.inputs}
        self.backend.warm_up(feeds, self.config.inline_threshold_us)


def _zeros(spec: TensorSpec, rows: int | None) -> np.ndarray:
    shape = [d if d >= 0 else 1 for d in spec.shape]
    if rows is not None:
        shape[0] = rows
    if spec.datatype == "BYTES":
        arr = np.empty(shape, dtype=object)
        arr.fill(b"")
        return arr
    return np.zeros(shape, dtype=spec.dtype)


class ModelRegistry:
    def __init__(self, root: Path, clock: Callable[[], float] | None = None) -> None:
        import time

        self.root = Path(root)
        self.clock = clock or time.perf_counter
        self.models: dict[str, dict[str, ModelVersion]] = {}
        self.default_version: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # ---- discovery -----------------------------------------------------------------------
    def on_disk(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _versions_on_disk(self, model_dir: Path) -> list[str]:
        return [p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and (p / MODEL_FILE).exists()]

    # ---- queries ---------------------------------------------------------------------------
    def get(self, name: str, version: str = "", require_ready: bool = True) -> ModelVersion:
        versions = self.models.get(name)
        if versions is None:
            if name in self.errors:
                raise GatewayError(Code.UNAVAILABLE, f"model '{name}' is not loaded: {self.errors[name]}")
            raise not_found(f"unknown model '{name}'")
        if not version:
            version = self.default_version.get(name, "")
        mv = versions.get(version)
        if mv is None:
            raise not_found(f"unknown version '{version}' of model '{name}' (serving: {', '.join(versions)})")
        if require_ready and not mv.ready:
            raise GatewayError(Code.UNAVAILABLE, f"model '{name}' version {version} is not ready")
        return mv

    def versions(self, name: str = "", version: str = "") -> list[ModelVersion]:
        if name:
            vs = self.models.get(name, {})
            return [mv for v, mv in vs.items() if not version or v == version]
        return [mv for vs in self.models.values() for mv in vs.values()]

    def version_labels(self, name: str) -> list[str]:
        return sorted(self.models.get(name, {}), key=int)

    def all_ready(self) -> bool:
        return all(mv.ready for vs in self.models.values() for mv in vs.values())

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name in self.on_disk():
            loaded = self.models.get(name)
            if loaded:
                for v in sorted(loaded, key=int):
                    out.append({"name": name, "version": v, "state": "READY" if loaded[v].ready else "LOADING",
                                "reason": ""})
            elif not ready_only:
                out.append({"name": name, "version": "", "state": "UNAVAILABLE",
                            "reason": self.errors.get(name, "unloaded")})
        return out

    # ---- transitions -----------------------------------------------------------------------
    async def load_all(self) -> None:
        for name in self.on_disk():
            try:
                await self.load(name)
            except GatewayError as exc:
                log.error("%s", exc.message)

    async def load(self, name: str) -> None:
        """Load (or reload) a model: its versions are built and warmed off the loop, then swapped in."""
        model_dir = self.root / name
        if not model_dir.is_dir():
            raise not_found(f"no model '{name}' in repository {self.root}")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            loop = asyncio.get_running_loop()
            try:
                built = await loop.run_in_executor(None, self._build, name, model_dir)
            except ConfigError as exc:
                self.errors[name] = str(exc)
                raise GatewayError(Code.INVALID_ARGUMENT, str(exc)) from None
            old = self.models.get(name, {})
            self.models[name] = built
            self.default_version[name] = max(built, key=int)
            self.errors.pop(name, None)
            for mv in built.values():
                mv.ready = True
            for mv in old.values():
                await self._retire(mv)
            log.info("model %s ready: versions %s", name, ", ".join(sorted(built, key=int)))

    def _build(self, name: str, model_dir: Path) -> dict[str, ModelVersion]:
        raw = {**read_pbtxt(model_dir), **read_config_file(model_dir)}  # config.toml wins
        cfg = parse_config(name, raw)
        on_disk = self._versions_on_disk(model_dir)
        if not on_disk:
            raise ConfigError(f"model '{name}': no <version>/{MODEL_FILE} under {model_dir}")
        selected = cfg.version_policy.select(on_disk)
        if not selected:
            raise ConfigError(f"model '{name}': config field 'version_policy' selects none of versions "
                              f"{', '.join(sorted(on_disk, key=int))}")
        built: dict[str, ModelVersion] = {}
        for v in selected:
            backend = OnnxBackend(model_dir / v / MODEL_FILE, cfg)
            eff = check_against_graph(cfg, backend.inputs, backend.outputs, raw)
            mv = ModelVersion(name, v, eff, backend, self.clock)
            mv.warm_up()
            built[v] = mv
        return built

    async def unload(self, name: str) -> None:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            versions = self.models.pop(name, None)
            if versions is None:
                if name in self.errors or (self.root / name).is_dir():
                    return
                raise not_found(f"unknown model '{name}'")
            self.default_version.pop(name, None)
            self.errors[name] = "unloaded"
            for mv in versions.values():
                await self._retire(mv)

    async def _retire(self, mv: ModelVersion) -> None:
        mv.ready = False
        await mv.batcher.drain()
        await mv.backend.close()

    async def close(self) -> None:
        for name in list(self.models):
            for mv in self.models.pop(name).values():
                await self._retire(mv)
