"""Per-model settings from ``<repo>/<model>/config.toml``, validated against the ONNX graph.

A model without a config serves with defaults derived from the graph: a dynamic first
dimension on every input and output makes it batchable (``max_batch_size`` rows), a static
one turns batching off. A bad config is refused at load with a message that names the field.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.types import TensorSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_QUEUE_SIZE = 4096


class ConfigError(ValueError):
    """A model config that cannot be served; the message names the model and the field."""


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which versions on disk are served: the latest N, all, or a specific list (Triton's three)."""

    kind: str = "latest"  # latest | all | specific
    latest: int = 1
    specific: tuple[str, ...] = ()

    def select(self, on_disk: Sequence[str]) -> list[str]:
        ordered = sorted(on_disk, key=int)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.specific]
        return ordered[-self.latest :]

    def to_triton(self) -> dict[str, Any]:
        if self.kind == "all":
            return {"all": {}}
        if self.kind == "specific":
            return {"specific": {"versions": [int(v) for v in self.specific]}}
        return {"latest": {"num_versions": self.latest}}


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    """Where a ``backend = "triton"`` model runs: KServe v2 gRPC servers (Triton, or another gateway)."""

    endpoints: tuple[str, ...]
    """host:port of each server; batches are balanced over those that are healthy."""
    model: str = ""
    """The model's name on the servers (default: its name here)."""
    version: str = ""
    """The version asked for on the servers (default: theirs)."""
    max_outstanding: int = 8
    """Calls in flight per endpoint; past it batches wait in the queue (and admission refuses, 429)."""
    timeout_s: float = 30.0
    """Deadline of a call whose requests carry none."""
    health_interval_s: float = 1.0
    """How often each endpoint is asked ServerReady and ModelReady."""
    breaker_failures: int = 5
    """Consecutive failed calls that open an endpoint's circuit breaker."""
    breaker_open_s: float = 5.0
    """How long an open breaker keeps the endpoint out before a half-open probe."""
    channels: int = 1
    """gRPC channels (HTTP/2 connections) per endpoint, used in turn."""
    batching: bool = True
    """True: the gateway merges requests into batches (the servers get full batches); False: each
    request is forwarded as it came (the servers' own batching decides)."""


@dataclass(frozen=True, slots=True)
class PrecomputedConfig:
    """``[precomputed]``: answer requests from stored predictions (written by ``gateway batch
    --to-store`` or by write-back), falling back to live inference (the hybrid route)."""

    store: str
    """sqlite:///abs/path.db, sqlite://rel.db (relative to the model's directory) or redis://host:port/db."""
    key: str = "x-entity-id"
    """The entity key: an HTTP header / gRPC metadata key, or a request parameter, of that name."""
    max_staleness_s: float = 86400.0
    """Oldest stored answer served; a request may lower it (parameter ``max_staleness_s``)."""
    fallback: str = "live"
    """live: a miss, stale or other-version entry runs live; error: it is answered NOT_FOUND."""
    write_back: bool = False
    """Store each live answer to a keyed request (buffered, written off the request path)."""
    check_inputs: bool = False
    """Serve an entry only when the request's inputs hash like those it was computed from
    (a changed context runs live)."""
    stale_if_error_s: float = 0.0
    """When the live run fails, a stored answer up to this old is served instead; 0: never."""
    store_timeout_s: float = 0.05
    """A store lookup slower than this counts as a store error (the request runs live)."""
    store_retry_s: float = 1.0
    """After a store error, the store is not asked again for this long (requests run live)."""
    write_back_pending: int = 10_000
    """Write-backs buffered at most; past it new ones are dropped (counted)."""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Effective settings of one model (all its versions share them)."""

    name: str
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    """Rows of the first dimension per batch; 0 turns batching off (shapes as the model declares)."""
    max_queue_delay_us: int = 0
    """How long the oldest queued request may wait for a fuller batch; 0: an idle backend runs at once."""
    preferred_batch_sizes: tuple[int, ...] = ()
    """Batch sizes worth waiting for (within the delay); a batch is released when one is reached."""
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    """Rows allowed to wait; past it requests are refused at once (429)."""
    instances: int = 1
    """Sessions of the model, i.e. batches that may run at once."""
    device: str = "auto"
    """cpu | cuda | auto (CUDA when onnxruntime has it, else CPU)."""
    execution: str = "auto"
    """inline (on the event loop thread) | thread (a pool) | auto (decided from the warm-up time)."""
    intra_op_threads: int = 1
    """onnxruntime intra-op threads per session; 0 lets onnxruntime pick (all cores)."""
    timeout_us: int = 0
    """Default per-request deadline in microseconds when the client sets none; 0: none."""
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    """Which versions on disk are served."""
    inline_threshold_us: int = 500
    """With execution = auto: run inline when a warm max-size batch takes less than this."""
    release_on_deadline: bool = False
    """Release a batch before the delay when a queued request's deadline would pass otherwise."""
    # -- the coalesce stage --
    coalesce: bool = True
    """Identical in-flight requests share one computation; false for non-deterministic models."""
    coalesce_max_waiters: int = 1024
    """Most requests waiting on one shared computation; past it an identical request starts its own."""
    response_cache_bytes: int = 0
    """Response cache for this model's versions, bounded by bytes of outputs held; 0: no cache."""
    response_cache_ttl_s: float = 60.0
    """How long a cached response may be served; 0: until evicted."""
    # ---- priorities and admission by expected wait (one block: see _parse_admission) ----
    priority_levels: int = 0
    """Levels of the request parameter ``priority`` (1 = highest); 0: no priorities (the parameter is ignored)."""
    default_priority_level: int = 0
    """The level of a request whose priority is 0 or absent; 0: the lowest level (``priority_levels``)."""
    priority_queue_size: tuple[tuple[int, int], ...] = ()
    """(level, rows): rows of that level allowed to wait, within ``max_queue_size``; past it 429."""
    priority_aging_us: int = 1_000_000
    """Starvation bound: a request of level p ranks as if it had arrived (p - 1) x this later."""
    max_queue_wait_us: int = 0
    """Admission SLO: a request expected to wait longer than this before its batch starts is refused
    at once (429 + Retry-After); 0: off. A request's deadline is checked the same way, always."""
    # ---- where it runs ----
    backend: str = "onnxruntime"
    """onnxruntime (a model file per version) | triton (remote servers; the config is all it needs)."""
    remote: RemoteConfig | None = None
    """Set when backend = "triton"."""
    precomputed: PrecomputedConfig | None = None
    """``[precomputed]``: the hybrid route (stored predictions, live fallback)."""
    # ---- autoscaling signals (read at scrape time only) ----
    capacity_rps: float = 0.0
    """Requests per second one replica serves within its SLO (``gateway tune`` or a sweep's knee);
    0: unknown (no ``gateway_desired_replicas`` for this model)."""
    capacity_headroom: float = 0.7
    """The share of ``capacity_rps`` a replica should run at (0 < h <= 1): desired replicas =
    ceil(load / (capacity_rps x headroom))."""

    @property
    def default_level(self) -> int:
        """The level a request without a priority gets (1 when there are no priorities)."""
        return self.default_priority_level or max(1, self.priority_levels)

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0


_FIELDS = {
    "max_batch_size",
    "max_queue_delay_us",
    "preferred_batch_sizes",
    "max_queue_size",
    "instances",
    "device",
    "execution",
    "intra_op_threads",
    "timeout_us",
    "version_policy",
    "inline_threshold_us",
    "release_on_deadline",
    "coalesce",
    "coalesce_max_waiters",
    "response_cache_bytes",
    "response_cache_ttl_s",
    *("priority_levels", "default_priority_level", "priority_queue_size", "priority_aging_us", "max_queue_wait_us"),
    "backend",
    *(f"remote_{k}" for k in ("model", "version", "max_outstanding", "timeout_s", "health_interval_s",
                              "breaker_failures", "breaker_open_s", "channels", "batching")),
    "endpoints",
    "precomputed",
    "capacity_rps",
    "capacity_headroom",
}
BACKENDS = ("onnxruntime", "triton")


def read_config_file(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.toml"
    if not path.exists():
        return {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"model '{model_dir.name}': {path} is not valid TOML: {exc}") from None


def parse_config(name: str, raw: Mapping[str, Any]) -> ModelConfig:
    """Turn the TOML table into a ModelConfig; graph-independent checks only."""

    def fail(fieldname: str, why: str) -> ConfigError:
        return ConfigError(f"model '{name}': config field '{fieldname}' {why}")

    unknown = set(raw) - _FIELDS
    if unknown:
        raise fail(sorted(unknown)[0], f"is not a known setting (known: {', '.join(sorted(_FIELDS))})")
    values: dict[str, Any] = {}
    for key in ("max_batch_size", "max_queue_delay_us", "max_queue_size", "instances", "intra_op_threads",
                "timeout_us", "inline_threshold_us", "coalesce_max_waiters", "response_cache_bytes",
                "priority_levels", "default_priority_level", "priority_aging_us", "max_queue_wait_us"):
        if key in raw:
            v = raw[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise fail(key, f"must be a non-negative integer, got {v!r}")
            values[key] = v
    if values.get("instances", 1) < 1:
        raise fail("instances", "must be at least 1")
    if values.get("max_queue_size", 1) < 1:
        raise fail("max_queue_size", "must be at least 1")
    if values.get("coalesce_max_waiters", 1) < 1:
        raise fail("coalesce_max_waiters", "must be at least 1")
    if "preferred_batch_sizes" in raw:
        p = raw["preferred_batch_sizes"]
        if not isinstance(p, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in p):
            raise fail("preferred_batch_sizes", f"must be a list of positive integers, got {p!r}")
        values["preferred_batch_sizes"] = tuple(sorted(set(p)))
    if "coalesce" in raw:
        if not isinstance(raw["coalesce"], bool):
            raise fail("coalesce", f"must be true or false, got {raw['coalesce']!r}")
        values["coalesce"] = raw["coalesce"]
    if "response_cache_ttl_s" in raw:
        v = raw["response_cache_ttl_s"]
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise fail("response_cache_ttl_s", f"must be a non-negative number of seconds, got {v!r}")
        values["response_cache_ttl_s"] = float(v)
    if "release_on_deadline" in raw:
        if not isinstance(raw["release_on_deadline"], bool):
            raise fail("release_on_deadline", f"must be true or false, got {raw['release_on_deadline']!r}")
        values["release_on_deadline"] = raw["release_on_deadline"]
    for key, allowed in (("device", ("cpu", "cuda", "auto")), ("execution", ("inline", "thread", "auto"))):
        if key in raw:
            if raw[key] not in allowed:
                raise fail(key, f"must be one of {', '.join(allowed)}, got {raw[key]!r}")
            values[key] = raw[key]
    if "version_policy" in raw:
        values["version_policy"] = _parse_policy(raw["version_policy"], fail)
    _parse_admission(raw, fail, values)
    _parse_capacity(raw, fail, values)
    _parse_remote(name, raw, fail, values)
    if "precomputed" in raw:
        values["precomputed"] = _parse_precomputed(raw["precomputed"], fail)
    cfg = ModelConfig(name=name, **values)
    mbs = cfg.max_batch_size
    if mbs and any(p > mbs for p in cfg.preferred_batch_sizes):
        raise fail("preferred_batch_sizes", f"has a size above max_batch_size ({mbs})")
    if not mbs and cfg.preferred_batch_sizes:
        raise fail("preferred_batch_sizes", "is set but batching is off (max_batch_size = 0)")
    return cfg


def _parse_admission(raw: Mapping[str, Any], fail: Any, values: dict[str, Any]) -> None:
    """Priorities and admission: priority_levels, default_priority_level, priority_queue_size,
    priority_aging_us, max_queue_wait_us."""
    # (their integers were checked with the others in parse_config)
    if values.get("priority_aging_us", 1) < 1:
        raise fail("priority_aging_us", "must be at least 1 (lower priorities must not starve)")
    levels = values.get("priority_levels", 0)
    default = values.get("default_priority_level", 0)
    if default and not levels:
        raise fail("default_priority_level", "is set but priority_levels is 0 (no priorities)")
    if default > levels:
        raise fail("default_priority_level", f"is {default}; it must be in 1..priority_levels ({levels})")
    if "priority_queue_size" in raw:
        table = raw["priority_queue_size"]
        if not isinstance(table, Mapping):
            raise fail("priority_queue_size", f'must be a table of level = rows, e.g. {{ "2" = 512 }}, got {table!r}')
        if table and not levels:
            raise fail("priority_queue_size", "is set but priority_levels is 0 (no priorities)")
        sizes = []
        for k, v in table.items():
            level = int(k) if isinstance(k, str) and k.isdigit() else 0
            if not 1 <= level <= levels:
                raise fail("priority_queue_size", f"has level {k!r}; levels are 1..priority_levels ({levels})")
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise fail("priority_queue_size", f"[{k!r}] must be a positive number of rows, got {v!r}")
            sizes.append((level, v))
        values["priority_queue_size"] = tuple(sorted(sizes))


def _parse_capacity(raw: Mapping[str, Any], fail: Any, values: dict[str, Any]) -> None:
    """capacity_rps (>= 0; 0 = unknown) and capacity_headroom (0 < h <= 1)."""
    if "capacity_rps" in raw:
        v = raw["capacity_rps"]
        if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0 or v == float("inf"):
            raise fail("capacity_rps", f"must be a non-negative number of requests per second (0: unknown), got {v!r}")
        values["capacity_rps"] = float(v)
    if "capacity_headroom" in raw:
        v = raw["capacity_headroom"]
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
            raise fail("capacity_headroom", f"must be a number in (0, 1], got {v!r}")
        values["capacity_headroom"] = float(v)


def _parse_remote(name: str, raw: Mapping[str, Any], fail: Any, values: dict[str, Any]) -> None:
    """backend, endpoints and the remote_* settings."""
    backend = raw.get("backend", "onnxruntime")
    if backend not in BACKENDS:
        raise fail("backend", f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
    remote_keys = sorted(k for k in raw if k.startswith("remote_") or k == "endpoints")
    if backend != "triton":
        if remote_keys:
            raise fail(remote_keys[0], 'is set but backend is not "triton"')
        return
    values["backend"] = backend
    eps = raw.get("endpoints")
    if (not isinstance(eps, list) or not eps
            or not all(isinstance(e, str) and e.rpartition(":")[2].isdigit() and e.rpartition(":")[0] for e in eps)):
        raise fail("endpoints", f'must be a non-empty list of "host:port" strings, got {eps!r}')
    if len(set(eps)) != len(eps):
        raise fail("endpoints", "lists an endpoint twice")
    kw: dict[str, Any] = {"endpoints": tuple(eps)}
    for key in ("model", "version"):
        v = raw.get(f"remote_{key}", "")
        if not isinstance(v, str) or (key == "version" and v and not v.isdigit()):
            raise fail(f"remote_{key}", f"must be a {'version number as a string' if key == 'version' else 'string'}, "
                                        f"got {v!r}")
        kw[key] = v
    for key in ("max_outstanding", "breaker_failures", "channels"):
        if f"remote_{key}" in raw:
            v = raw[f"remote_{key}"]
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise fail(f"remote_{key}", f"must be a positive integer, got {v!r}")
            kw[key] = v
    for key in ("timeout_s", "health_interval_s", "breaker_open_s"):
        if f"remote_{key}" in raw:
            v = raw[f"remote_{key}"]
            if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
                raise fail(f"remote_{key}", f"must be a positive number of seconds, got {v!r}")
            kw[key] = float(v)
    if "remote_batching" in raw:
        if not isinstance(raw["remote_batching"], bool):
            raise fail("remote_batching", f"must be true or false, got {raw['remote_batching']!r}")
        kw["batching"] = raw["remote_batching"]
    for key in ("device", "execution", "instances", "intra_op_threads"):
        if key in raw:
            raise fail(key, 'is an onnxruntime setting; the remote servers decide it (backend = "triton")')
    values["remote"] = RemoteConfig(**kw)
    values["execution"] = "thread"  # never inline: a call is a network round trip


_PRECOMPUTED_NUMBERS = ("max_staleness_s", "stale_if_error_s", "store_timeout_s", "store_retry_s")


def _parse_precomputed(t: Any, fail: Any) -> PrecomputedConfig:
    if not isinstance(t, dict):
        raise fail("precomputed", "must be a table ([precomputed])")
    known = {f for f in PrecomputedConfig.__dataclass_fields__}
    unknown = sorted(set(t) - known)
    if unknown:
        raise fail(f"precomputed.{unknown[0]}", f"is not a known setting (known: {', '.join(sorted(known))})")
    store = t.get("store")
    if not isinstance(store, str) or not store.startswith(("sqlite:", "redis://", "rediss://", "unix://")):
        raise fail("precomputed.store", f"must be a sqlite:// or redis:// URL, got {store!r}")
    kw: dict[str, Any] = {"store": store}
    if "key" in t:
        if not isinstance(t["key"], str) or not t["key"] or t["key"] != t["key"].strip():
            raise fail("precomputed.key", f"must be a header or parameter name, got {t['key']!r}")
        kw["key"] = t["key"].lower()  # headers and gRPC metadata keys arrive lowercase
    for key in _PRECOMPUTED_NUMBERS:
        if key in t:
            v = t[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise fail(f"precomputed.{key}", f"must be a non-negative number of seconds, got {v!r}")
            kw[key] = float(v)
    if "fallback" in t:
        if t["fallback"] not in ("live", "error"):
            raise fail("precomputed.fallback", f"must be live or error, got {t['fallback']!r}")
        kw["fallback"] = t["fallback"]
    for key in ("write_back", "check_inputs"):
        if key in t:
            if not isinstance(t[key], bool):
                raise fail(f"precomputed.{key}", f"must be true or false, got {t[key]!r}")
            kw[key] = t[key]
    if "write_back_pending" in t:
        v = t["write_back_pending"]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise fail("precomputed.write_back_pending", f"must be a positive integer, got {v!r}")
        kw["write_back_pending"] = v
    return PrecomputedConfig(**kw)


def _parse_policy(v: Any, fail: Any) -> VersionPolicy:
    if v == "all":
        return VersionPolicy(kind="all")
    if isinstance(v, Mapping) and set(v) == {"latest"}:
        n = v["latest"]
        if not isinstance(n, int) or n < 1:
            raise fail("version_policy", f"latest must be a positive integer, got {n!r}")
        return VersionPolicy(kind="latest", latest=n)
    if isinstance(v, Mapping) and set(v) == {"specific"}:
        vs = v["specific"]
        if not isinstance(vs, list) or not vs or not all(isinstance(x, int) and x > 0 for x in vs):
            raise fail("version_policy", f"specific must be a non-empty list of version numbers, got {vs!r}")
        return VersionPolicy(kind="specific", specific=tuple(str(x) for x in vs))
    raise fail("version_policy", f'must be "all", {{latest = N}} or {{specific = [..]}}, got {v!r}')


def check_against_graph(
    cfg: ModelConfig, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], explicit: Mapping[str, Any],
    where: str = "config",
) -> ModelConfig:
    """Reconcile the config with the graph's signature; returns the effective config.

    A graph whose tensors do not all start with a dynamic dimension cannot batch: that is an
    error if the config asked for batching explicitly, and turns batching off otherwise.
    ``where`` names the file that set max_batch_size in the error.
    """
    tensors = list(inputs) + list(outputs)
    dynamic_first = all(t.shape and t.shape[0] == -1 for t in tensors)
    if cfg.max_batch_size > 0 and not dynamic_first:
        if "max_batch_size" in explicit:
            static = next(t for t in tensors if not t.shape or t.shape[0] != -1)
            raise ConfigError(
                f"model '{cfg.name}': {where} field 'max_batch_size' is {cfg.max_batch_size} but "
                f"tensor '{static.name}' has no dynamic first (batch) dimension: shape {list(static.shape)}"
            )
        from dataclasses import replace

        return replace(cfg, max_batch_size=0, preferred_batch_sizes=())
    return cfg
