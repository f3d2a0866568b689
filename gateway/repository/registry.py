"""Model repository: finds models on disk, loads, warms, serves and unloads their versions.

Layout (Triton's): ``<repo>/<model>/<version>/model.onnx`` (or the config's
``default_model_filename``) with optional ``<repo>/<model>/config.toml`` and/or Triton's
``config.pbtxt`` (read strictly, see ``triton_config``). A version is loaded and warmed before
it reports ready; an unloaded version stops accepting, drains, then closes.

One model's failure never takes the others (or the server) down: any exception while reading its
config, creating its sessions or warming it up leaves that model UNAVAILABLE with the reason (in
the log, the repository index and the load answer) while the others serve. Readiness follows
Triton's strict default: the server is ready when every model that should be loaded (found at
start, or loaded explicitly since) serves; ``strict_readiness=False`` relaxes that to "the models
that loaded serve". Errors use Triton's wording where clients match on it ("Request for unknown
model: ...", "failed to load ...").

State changes happen synchronously on the loop thread; the slow parts (session creation,
warm-up) run in a worker thread so the loop keeps serving other models meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway._native.lane import Lane
from gateway.backends.base import Backend, BackendFactory
from gateway.backends.reshape import ReshapingBackend
from gateway.errors import Code, GatewayError, not_found
from gateway.model_config import (
    ConfigError,
    ModelConfig,
    check_against_graph,
    parse_config,
    read_config_file,
)
from gateway.observe.stats import ModelStats
from gateway.pipeline import coalesce
from gateway.pipeline.admit import Admit
from gateway.pipeline.batcher import Batcher
from gateway.pipeline.policy import PolicyError, TrafficPolicy, check_versions, parse_policy
from gateway.pipeline.precomputed import PrecomputedTarget
from gateway.pipeline.target import Target
from gateway.pipeline.validate import Signature
from gateway.repository.triton_config import TritonConfig, check_io, read_override, read_pbtxt
from gateway.repository.warmup import default_feeds, sample_feeds, tile_rows
from gateway.stores import open_store
from gateway.types import TensorSpec

log = logging.getLogger(__name__)

Publish = Callable[[str, Mapping[str, "ModelVersion"] | None, TrafficPolicy | None], None]
"""(model, its ready versions or None, its config.toml traffic policy): the routing table's source."""
_WHERE_MBS = " where max_batch_size was set"


def unknown_model(name: str, version: str = "") -> GatewayError:
    """Triton's wording for a model (or version) the server does not know."""
    return not_found(f"Request for unknown model: '{name}'" + (f" version {version}" if version else "") + " is not found")


def load_failed(name: str, why: str, code: Code = Code.INVALID_ARGUMENT) -> GatewayError:
    return GatewayError(code, f"failed to load '{name}': {why}")


def config_parameter(name: str, parameters: Mapping[str, Any]) -> str | None:
    """The ``config`` override among a load request's parameters (Triton's names); ``file:``
    overrides and unknown parameters are refused."""
    config = None
    for key, value in parameters.items():
        if key == "config":
            if not isinstance(value, str):
                raise load_failed(name, "load parameter 'config' must be a string holding Triton's model config "
                                  f"as JSON, got {type(value).__name__}")
            config = value
        elif key.startswith("file:"):
            raise load_failed(name, f"load parameter '{key}' (a model file override) is not supported by this "
                              "server; put the files in the repository and load without it", Code.UNIMPLEMENTED)
        else:
            raise load_failed(name, f"unrecognized load parameter '{key}'")
    return config


class ModelVersion:
    """One loaded version: config, backend, statistics, and its request-path stages (admit, batch;
    ``target`` is what the router hands requests to)."""

    def __init__(self, name: str, version: str, config: ModelConfig, backend: Backend,
                 clock: Callable[[], float], triton: TritonConfig | None = None,
                 model_filename: str = "", io: tuple[Sequence[TensorSpec], Sequence[TensorSpec]] | None = None,
                 store_base: Path | None = None) -> None:
        """``store_base``: the model's directory, which a relative precomputed store path is in
        (None: no precomputed stage, as for offline use)."""
        self.name = name
        self.version = version
        self.config = config
        self.backend = backend
        self.triton = triton
        self.model_filename = model_filename
        self.stats = ModelStats()
        inputs, outputs = io or (backend.inputs, backend.outputs)  # io: what clients see, if not the graph's
        self.signature = Signature.build(name, inputs, outputs, config.batching)
        self.batcher = Batcher(name, version, config, backend, self.signature, self.stats, clock)
        self.admit = Admit(name, version, config, self.signature, self.batcher, self.stats, clock)
        target = coalesce.wrap(self.admit, name, version, config, self.stats, clock)
        pc = config.precomputed
        self.precomputed: PrecomputedTarget | None = None
        self.entity_key = ""
        if pc is not None and store_base is not None:
            self.precomputed = PrecomputedTarget(target, name, version, pc,
                                                 open_store(pc.store, store_base, pc.store_timeout_s,
                                                            pc.write_back_pending), self.stats, clock)
            self.entity_key = pc.key
            target = self.precomputed
        self.target: Target = target
        self.lane: Lane | None = None
        """The HTTP front's native lane into this version (``gateway._native.lane``), when its
        configuration needs none of what only the Python stages do: a response cache, priority
        levels, a precomputed route, inputs whose inner dimensions vary (buckets)."""
        if (self.precomputed is None and config.response_cache_bytes <= 0 and not config.priority_levels
                and not self.signature.variable_inner_dims and self.signature.checks):
            self.lane = Lane(self.admit, target if target is not self.admit else None, coalesce.flight_key)
        self.ready = False
        self.fingerprint: tuple[Any, ...] = ()
        """What it was built from (model file, configuration): a reload keeps it while unchanged."""

    def warm_up(self) -> None:
        """Run the declared warm-up samples, or default inputs that fit each datatype, then a
        max-size batch (it decides inline vs thread). Raises ConfigError naming what failed."""
        c, thr = self.config, self.config.inline_threshold_us
        warm = self.backend.warm_up
        tc = self.triton
        if tc is not None and tc.warmup:
            first = None
            for s in tc.warmup:
                def fail(suffix: str, why: str, at: str = s.field) -> ConfigError:
                    return tc.fail(at + suffix, why)  # type: ignore[union-attr]  # tc is set here

                feeds = sample_feeds(s, self.signature.inputs, c.max_batch_size, fail)
                try:
                    for _ in range(max(1, -(-s.count // 5))):  # each call runs 5 times per instance
                        warm(feeds, thr)
                except Exception as exc:  # onnxruntime's own types; the reason goes to the index
                    raise tc.fail(s.field, f"('{s.name}'): the warm-up run failed: {exc}") from None
                first = first or feeds
            assert first is not None
            feeds = tile_rows(first, c.max_batch_size) if c.batching else first
            what = f"{tc.source} field '{tc.warmup[0].field}' repeated to {c.max_batch_size} rows"
        else:
            feeds = default_feeds(self.signature.inputs, (c.max_batch_size or 1) if c.batching else None)
            what = 'default inputs (zeros; b"1" for BYTES)'
        try:
            warm(feeds, thr)
        except Exception as exc:
            raise ConfigError(f"model '{self.name}': version {self.version}: warm-up with {what} failed: {exc}") from None


def _config_identity(model_dir: Path, raw: Mapping[str, Any], override: str | None) -> str:
    """Everything a version is built from besides its model file: the effective settings (the
    traffic table is not among them: a policy change rebuilds nothing), Triton's config file as
    written (warm-up samples included), a load override."""
    h = hashlib.sha256(repr(sorted(raw.items())).encode())
    pbtxt = model_dir / "config.pbtxt"
    if pbtxt.exists():
        h.update(pbtxt.read_bytes())
    warmup = model_dir / "warmup"
    if warmup.is_dir():
        for f in sorted(warmup.iterdir()):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update((override or "").encode())
    return h.hexdigest()


def _fingerprint(model_file: Path, config_id: str) -> tuple[Any, ...]:
    try:
        st = model_file.stat()
    except OSError:  # a remote model: its configuration is all there is
        return (None, config_id)
    return (st.st_mtime_ns, st.st_size, st.st_ino, config_id)


class ModelRegistry:
    def __init__(self, root: Path, backends: BackendFactory, publish: Publish | None = None,
                 clock: Callable[[], float] | None = None, strict_readiness: bool = True) -> None:
        """``backends``: builds each version's backend (the composition root chooses it);
        ``publish``: told whenever the set of ready versions of a model changes (traffic control,
        which rebuilds the routing table), before any retired version drains."""
        import time

        self.root = Path(root)
        self.backends = backends
        self.publish = publish or (lambda name, versions, policy: None)
        self.clock = clock or time.perf_counter
        self.strict_readiness = strict_readiness
        self.models: dict[str, dict[str, ModelVersion]] = {}
        self.default_version: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.policies: dict[str, TrafficPolicy | None] = {}  # config.toml [traffic], per loaded model
        self._wanted: set[str] = set()  # should be loaded: found at start, or loaded explicitly since
        self._loading: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    # ---- discovery -----------------------------------------------------------------------
    def on_disk(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _versions_on_disk(self, model_dir: Path, filename: str) -> list[str]:
        return [p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and (p / filename).exists()]

    # ---- queries ---------------------------------------------------------------------------
    def get(self, name: str, version: str = "", require_ready: bool = True) -> ModelVersion:
        versions = self.models.get(name)
        if versions is None:
            if name in self.errors or name in self._wanted:  # known, but nothing serves (failed, loading, unloaded)
                code = Code.UNAVAILABLE if name in self._loading else Code.NOT_FOUND
                raise GatewayError(code, f"Request for unknown model: '{name}' has no available versions")
            raise unknown_model(name)
        if not version:
            version = self.default_version.get(name, "")
        mv = versions.get(version)
        if mv is None:
            raise unknown_model(name, version)
        if require_ready and not mv.ready:
            raise GatewayError(Code.UNAVAILABLE, f"Request for unknown model: '{name}' version {version} "
                               "is not at ready state")
        return mv

    def miss(self, name: str, version: str = "") -> GatewayError:
        """The error for a request the routing table cannot serve, in Triton's wording."""
        try:
            self.get(name, version)
        except GatewayError as exc:
            return exc
        return GatewayError(Code.UNAVAILABLE, f"Request for unknown model: '{name}' version {version} "
                            "is not at ready state")

    def versions(self, name: str = "", version: str = "") -> list[ModelVersion]:
        if name:
            vs = self.models.get(name, {})
            return [mv for v, mv in vs.items() if not version or v == version]
        return [mv for vs in self.models.values() for mv in vs.values()]

    def version_labels(self, name: str) -> list[str]:
        return sorted(self.models.get(name, {}), key=int)

    def all_ready(self) -> bool:
        """Every loaded version is ready (models that failed or are still loading do not count)."""
        return all(mv.ready for vs in self.models.values() for mv in vs.values())

    def ready(self) -> bool:
        """Server readiness. Strict (Triton's default): every model that should be loaded serves
        (none failed, none still loading for the first time); an empty repository is ready."""
        if not self.strict_readiness:
            return self.all_ready()
        for name in self._wanted:
            vs = self.models.get(name)
            if not vs or not all(mv.ready for mv in vs.values()):
                return False
        return True

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name in self.on_disk():
            loaded = self.models.get(name)
            if loaded:
                for v in sorted(loaded, key=int):
                    out.append({"name": name, "version": v, "state": "READY" if loaded[v].ready else "LOADING",
                                "reason": ""})
            elif ready_only:
                continue
            elif name in self._loading:
                out.append({"name": name, "version": "", "state": "LOADING", "reason": ""})
            else:
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
            except Exception:  # load() reports a model's own failures; this is a bug, still one model's
                log.exception("model %s: unexpected error while loading", name)
                self.errors.setdefault(name, "unexpected error while loading (see the log)")

    async def load(self, name: str, config: str | None = None, parameters: Mapping[str, Any] | None = None) -> None:
        """Load (or reload) a model: its versions are built and warmed off the loop, then swapped in.
        ``config``: Triton's model config as JSON, replacing config.pbtxt for this load (as Triton's
        load override does); ``parameters``: a load request's parameters (``config`` among them)."""
        if parameters:
            config = config_parameter(name, parameters)
        if name not in self.on_disk():  # also refuses '..' and other names that are no model directory
            # The repository's path stays out of the message: clients need not learn the host's layout.
            raise GatewayError(Code.NOT_FOUND, f"failed to load '{name}', failed to poll from model repository "
                               f"(no model directory '{name}' in the repository)")
        self._wanted.add(name)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            self._loading.add(name)
            try:
                built, policy = await self._build(name, self.root / name, config, self.models.get(name, {}))
            except Exception as exc:
                why = str(exc).removeprefix(f"model '{name}': ")
                if not isinstance(exc, ConfigError | GatewayError):
                    log.exception("model %s failed to load", name)
                    why = f"{type(exc).__name__}: {exc}"
                if name not in self.models:  # a failed reload leaves the serving versions in place
                    self.errors[name] = why
                raise load_failed(name, why) from None
            finally:
                self._loading.discard(name)
            old = self.models.get(name, {})
            self.models[name] = built
            self.default_version[name] = max(built, key=int)
            self.policies[name] = policy
            self.errors.pop(name, None)
            for mv in built.values():
                mv.ready = True
            self.publish(name, built, policy)  # the new versions take traffic from here on
            kept = {id(mv) for mv in built.values()}
            for mv in old.values():
                if id(mv) not in kept:
                    await self._retire(mv)
            log.info("model %s ready: versions %s", name, ", ".join(sorted(built, key=int)))

    async def _build(self, name: str, model_dir: Path, override: str | None,
                     old: Mapping[str, ModelVersion]) -> tuple[dict[str, ModelVersion], TrafficPolicy | None]:
        """The versions to serve after this load. A version whose model file and configuration are
        unchanged since ``old`` was built is kept as it is (its session, queue, statistics): loading
        version N+1 neither rebuilds nor interrupts version N."""
        loop = asyncio.get_running_loop()
        tc, cfg, raw, versions, policy = await loop.run_in_executor(None, self._prepare, name, model_dir, override)
        config_id = _config_identity(model_dir, raw, override)
        filename = (tc.model_filename if tc else "") or self.backends.filename_for(cfg)
        built: dict[str, ModelVersion] = {}
        fresh: list[ModelVersion] = []
        try:
            for v in versions:
                fp = _fingerprint(model_dir / v / filename, config_id)
                kept = old.get(v)
                if kept is not None and kept.fingerprint == fp and kept.ready:
                    built[v] = kept
                    continue
                mv = await loop.run_in_executor(None, self._build_version, name, model_dir, v, tc, cfg, raw)
                mv.backend.start()
                mv.fingerprint = fp
                fresh.append(mv)
                built[v] = mv
        except BaseException:
            for mv in fresh:
                await mv.backend.close()
            raise
        return built, policy

    def _prepare(self, name: str, model_dir: Path,
                 override: str | None
                 ) -> tuple[TritonConfig | None, ModelConfig, dict[str, Any], list[str], TrafficPolicy | None]:
        tc = read_override(model_dir, override) if override is not None else read_pbtxt(model_dir)
        toml = read_config_file(model_dir)
        traffic = toml.pop("traffic", None)
        raw = {**(tc.settings if tc else {}), **toml}  # config.toml wins
        cfg = parse_config(name, raw)
        if tc is not None and "max_batch_size" in tc.settings and "max_batch_size" not in toml:
            raw[_WHERE_MBS] = tc.source  # after parse_config: not a setting, only for the graph check's message
        if tc is not None and tc.gpu_field and "device" not in toml:
            try:
                self.backends.check_device("cuda")
            except ConfigError as exc:
                raise tc.fail(tc.gpu_field, "is KIND_GPU but " + str(exc).split(" but ", 1)[-1]) from None
        filename = (tc.model_filename if tc else "") or self.backends.filename_for(cfg)
        on_disk = self._versions_on_disk(model_dir, filename)
        if not on_disk and not filename:  # a remote model needs no directory: version 1 here
            on_disk = ["1"]
        if not on_disk:
            raise ConfigError(f"model '{name}': no <version>/{filename} under {model_dir}")
        selected = cfg.version_policy.select(on_disk)
        if not selected:
            raise ConfigError(f"model '{name}': config field 'version_policy' selects none of versions "
                              f"{', '.join(sorted(on_disk, key=int))}")
        policy = None
        if traffic is not None:
            try:
                policy = parse_policy(traffic)
                check_versions(policy, selected)
            except PolicyError as exc:
                raise ConfigError(f"model '{name}': config.toml: {exc}") from None
        return tc, cfg, raw, selected, policy

    def _build_version(self, name: str, model_dir: Path, v: str, tc: TritonConfig | None, cfg: ModelConfig,
                       raw: dict[str, Any]) -> ModelVersion:
        filename = (tc.model_filename if tc else "") or self.backends.filename_for(cfg)
        inner = self.backends(model_dir / v / filename, cfg)
        remote_mbs = getattr(inner, "remote_max_batch_size", None)  # a remote model's own, when not set here
        if remote_mbs is not None and "max_batch_size" not in raw:
            cfg = replace(cfg, max_batch_size=remote_mbs,
                          preferred_batch_sizes=tuple(b for b in cfg.preferred_batch_sizes if b <= remote_mbs))
        eff = check_against_graph(cfg, inner.inputs, inner.outputs, raw, raw.get(_WHERE_MBS, "config"))
        backend: Backend = inner
        io = None
        if tc is not None:
            plan = check_io(tc, eff.max_batch_size, inner.inputs, inner.outputs)
            io = (plan.inputs, plan.outputs)  # declared dims may be more specific than the graph's -1
            if plan.needs_wrapper:
                backend = ReshapingBackend(inner, plan.inputs, plan.outputs, plan.input_reshape, plan.output_reshape,
                                           eff.batching)
        mv = ModelVersion(name, v, eff, backend, self.clock, tc, filename, io, model_dir)
        mv.warm_up()
        return mv

    async def unload(self, name: str) -> None:
        # Only names the repository knows: '../x' or '/tmp' must not tell whether a directory exists
        # elsewhere on the host, nor leave a lock or an error entry behind for every name tried.
        if name not in self.models and name not in self.errors and name not in self.on_disk():
            raise unknown_model(name)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            self._wanted.discard(name)
            versions = self.models.pop(name, None)
            if versions is None:
                if name in self.errors or name in self.on_disk():
                    self.errors[name] = "unloaded"
                    return
                raise unknown_model(name)
            self.default_version.pop(name, None)
            self.policies.pop(name, None)
            self.errors[name] = "unloaded"
            self.publish(name, None, None)  # out of the routing table before anything drains
            for mv in versions.values():
                await self._retire(mv)

    async def _retire(self, mv: ModelVersion) -> None:
        """Drain a version no route names any more: what it accepted is answered, then it closes."""
        mv.ready = False
        if mv.precomputed is not None:  # requests it holds for this pass's lookup reach the queue first
            mv.precomputed.settle_pending()
        mv.admit.accepting = False
        await mv.batcher.drain()
        if mv.precomputed is not None:
            await mv.precomputed.close()
        await mv.backend.close()

    async def close(self) -> None:
        for name in list(self.models):
            self.publish(name, None, None)
            for mv in self.models.pop(name).values():
                await self._retire(mv)
