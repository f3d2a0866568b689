"""Server settings: frozen, loaded once from a TOML file, then ``GATEWAY_*`` env, then CLI flags.

Every limit is a named field with a default that is safe on a laptop. Per-model settings
(batching, instances, device) live in the model repository (``gateway.model_config``), not here.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "GATEWAY_"
# GATEWAY_* variables that are not server settings: read by setup.py when building the extensions.
NOT_SETTINGS = frozenset({"GATEWAY_DEBUG"})


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    """Address both fronts bind to."""
    http_port: int = 8000
    """HTTP/REST port; 0 picks a free port."""
    grpc_port: int = 8001
    """gRPC port; 0 picks a free port; -1 disables the gRPC front."""
    model_repository: str = ""
    """Directory in Triton's layout: <repo>/<model>/<version>/model.onnx."""
    demo: bool = False
    """Build and serve the built-in demo repository (no files, no network)."""
    max_body_bytes: int = 64 * 1024 * 1024
    """Largest HTTP request body accepted; larger gets 413."""
    max_header_bytes: int = 64 * 1024
    """Largest HTTP request head (request line + headers) accepted; larger gets 431."""
    http_keepalive_timeout_s: float = 75.0
    """Idle keep-alive connections are closed after this many seconds."""
    max_pipelined_requests: int = 256
    """Requests one HTTP connection may have outstanding before the server stops reading it."""
    header_timeout_s: float = 20.0
    """Seconds a request head may take from its first byte (from accept, for the first); then 408, close."""
    body_timeout_s: float = 60.0
    """Seconds a request body may take from the end of its head; then 408 and close."""
    max_connections: int = 0
    """HTTP connections served at once (then the health reserve, then 503); 0: from RLIMIT_NOFILE."""
    fd_reserve: int = 0
    """With max_connections 0: fds kept from HTTP for gRPC, models, logs; 0: RLIMIT_NOFILE / 4."""
    health_connections: int = 16
    """HTTP connections past max_connections accepted for /v2/health/* and /metrics only."""
    grpc_front: str = "native"
    """The gRPC front: "native" (HTTP/2 in C on libnghttp2, gateway.front.grpc.native; needs the
    system package libnghttp2-dev at build time: without it the server refuses to start, naming it)
    or "grpcio" (grpc.aio)."""
    grpc_max_concurrent_streams: int = 1024
    """Calls one gRPC connection may have open at once (native front: its HTTP/2 SETTINGS)."""
    grpc_max_message_bytes: int = 64 * 1024 * 1024
    """Largest gRPC message received or sent; larger gets RESOURCE_EXHAUSTED."""
    grpc_max_inflight_bytes: int = 512 * 1024 * 1024
    """Tensor bytes of gRPC requests held at once (queued or computing), all calls together; past it
    RESOURCE_EXHAUSTED at once. At least grpc_max_message_bytes."""
    grpc_keepalive_time_s: float = 60.0
    """Interval of gRPC keepalive pings on idle connections."""
    grpc_keepalive_timeout_s: float = 20.0
    """How long a keepalive ping may go unanswered before the connection is closed."""
    drain_s: float = 5.0
    """On SIGTERM: keep serving this long while readiness reports 503, so load balancers take the
    server out of rotation before it stops accepting (SIGINT skips it)."""
    shutdown_grace_s: float = 30.0
    """After the drain (or on SIGINT): stop accepting, then wait this long for in-flight requests."""
    log_level: str = "INFO"
    """Python logging level name."""
    log_format: str = "text"
    """Log records as plain text lines, or "json": one JSON object per line."""
    access_log: bool = False
    """One JSON line per request on the "gateway.access" logger (off: the request path pays nothing)."""
    server_name: str = "inference-gateway"
    """The name server metadata reports (GET /v2, gRPC ServerMetadata)."""
    loop: str = "uvloop"
    """Event loop: uvloop or asyncio."""
    workers: int = 1
    """Server processes sharing the ports (SO_REUSEPORT); each loads its own models. >1 needs fixed ports."""
    allow_client_shm: bool = False
    """Let clients register system shared-memory regions (local clients only: they can read/write /dev/shm)."""
    max_shm_regions: int = 256
    """Most system shared-memory regions registered at once (each is one mapping)."""
    worker_stats_interval_s: float = 0.5
    """With workers > 1: how often each worker shares its statistics (the staleness bound of a scrape)."""
    repository_control: str = "explicit"
    """"explicit": clients may load/unload models (repository extension); "none": they may not."""
    strict_readiness: bool = True
    """Ready only while every model that should be loaded serves (Triton's default); false: the loaded ones serve."""
    admin_token: str = field(default="", repr=False)  # a secret: never in a repr or a log line
    """Bearer token for /v2/admin/* (traffic policy) and, when set, repository load/unload. Empty: admin API off (404)."""
    traffic_tick_s: float = 1.0
    """How often traffic guards sample each arm's counters, judge canaries and step rollouts."""
    shadow_max_outstanding: int = 64
    """Most mirrored (shadow) requests unanswered at once per arm; more are shed, never queued."""
    shadow_max_loop_busy: float = 0.85
    """Shadow copies stop while the event loop thread's CPU share is above this (resume 0.15 below)."""
    outcome_attribution_ids: int = 100_000
    """Request ids remembered per model for outcome attribution (~200 bytes each; the oldest go first)."""
    outcome_attribution_ttl_s: float = 3600.0
    """How long a request id can still be credited with an outcome."""
    # ---- server-wide admission caps (one block) ----
    max_inflight_requests: int = 16384
    """Infer requests admitted and not yet answered, all models and both fronts together; past it
    429 / RESOURCE_EXHAUSTED + Retry-After at once, before routing. 0: no cap."""
    max_inflight_bytes: int = 1024 * 1024 * 1024
    """Tensor bytes of those requests; past it 429 at once (a request alone always gets in). 0: no cap."""
    shed_loop_lag_ms: float = 50.0
    """Shedding at the door: while the event loop runs more than this late, infer requests are refused
    (429 / RESOURCE_EXHAUSTED + Retry-After) before their body is decoded; health, metadata and
    /metrics are always served. 0: off."""

    @classmethod
    def load(
        cls,
        config_file: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> ServerSettings:
        """File, then environment (``GATEWAY_HTTP_PORT=9000``), then explicit overrides (CLI flags)."""
        values: dict[str, Any] = {}
        if config_file:
            with open(config_file, "rb") as f:
                data = tomllib.load(f)
            data = data.get("server", data)
            values.update(_checked(data, f"config file {config_file}"))
        env = os.environ if env is None else env
        env_values = {}
        for fld in fields(cls):
            raw = env.get(ENV_PREFIX + fld.name.upper())
            if raw is not None:
                env_values[fld.name] = _parse_env(fld.name, raw, type(getattr(cls(), fld.name)))
        values.update(env_values)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    @classmethod
    def unknown_env(cls, env: Mapping[str, str] | None = None) -> list[str]:
        """Warnings for ``GATEWAY_*`` variables that name no setting (a typo is otherwise silently ignored),
        each with the closest setting. Warnings, not errors: the prefix is not ours alone (a Kubernetes
        service named "gateway" injects GATEWAY_PORT, GATEWAY_SERVICE_HOST, ... into every pod)."""
        env = os.environ if env is None else env
        known = [ENV_PREFIX + f.name.upper() for f in fields(cls)]
        out = []
        for name in sorted(env):
            if name.startswith(ENV_PREFIX) and name not in NOT_SETTINGS and name not in known:
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
                hint = ""
                if close:
                    hint = f"; did you mean {close[0]} (setting {close[0][len(ENV_PREFIX):].lower()})?"
                out.append(f"environment variable {name} is not a setting, ignored{hint}")
        return out

    def replace(self, **changes: Any) -> ServerSettings:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        for name in ("max_body_bytes", "max_header_bytes", "max_pipelined_requests", "grpc_max_message_bytes",
                     "max_shm_regions"):
            if getattr(self, name) <= 0:
                raise ValueError(f"setting {name} must be > 0, got {getattr(self, name)}")
        for name in ("header_timeout_s", "body_timeout_s", "http_keepalive_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"setting {name} must be > 0, got {getattr(self, name)}")
        for name in ("max_connections", "fd_reserve", "health_connections", "max_inflight_requests",
                     "max_inflight_bytes", "shed_loop_lag_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"setting {name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.http_port <= 65535:
            raise ValueError(f"setting http_port out of range: {self.http_port}")
        if not -1 <= self.grpc_port <= 65535:
            raise ValueError(f"setting grpc_port out of range: {self.grpc_port}")
        if self.grpc_max_inflight_bytes < self.grpc_max_message_bytes:
            raise ValueError("setting grpc_max_inflight_bytes must be >= grpc_max_message_bytes "
                             f"({self.grpc_max_inflight_bytes} < {self.grpc_max_message_bytes})")
        if self.drain_s < 0 or self.shutdown_grace_s < 0:
            raise ValueError("settings drain_s and shutdown_grace_s must be >= 0")
        if not 0 < self.shadow_max_loop_busy <= 1:
            raise ValueError(f"setting shadow_max_loop_busy must be in (0, 1], got {self.shadow_max_loop_busy}")
        for name in ("traffic_tick_s", "outcome_attribution_ttl_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"setting {name} must be > 0, got {getattr(self, name)}")
        for name in ("shadow_max_outstanding", "outcome_attribution_ids"):
            if getattr(self, name) < 1:
                raise ValueError(f"setting {name} must be >= 1, got {getattr(self, name)}")
        if self.worker_stats_interval_s <= 0:
            raise ValueError(f"setting worker_stats_interval_s must be > 0, got {self.worker_stats_interval_s}")
        if self.repository_control not in ("explicit", "none"):
            raise ValueError(f"setting repository_control must be 'explicit' or 'none', got {self.repository_control!r}")
        if self.workers < 1:
            raise ValueError(f"setting workers must be >= 1, got {self.workers}")
        if self.workers > 1 and (self.http_port == 0 or self.grpc_port == 0):
            raise ValueError("setting workers > 1 needs fixed ports (http_port and grpc_port not 0)")
        if self.grpc_front not in ("native", "grpcio"):
            raise ValueError(f"setting grpc_front must be 'native' or 'grpcio', got {self.grpc_front!r}")
        if self.grpc_max_concurrent_streams < 1:
            raise ValueError(f"setting grpc_max_concurrent_streams must be >= 1, got {self.grpc_max_concurrent_streams}")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"setting log_format must be 'text' or 'json', got {self.log_format!r}")
        if self.loop not in ("uvloop", "asyncio"):
            raise ValueError(f"setting loop must be 'uvloop' or 'asyncio', got {self.loop!r}")
        if not self.demo and not self.model_repository:
            raise ValueError("no model repository: pass --model-repository DIR or --demo")
        if self.model_repository and not Path(self.model_repository).is_dir():
            raise ValueError(f"model repository {self.model_repository!r} is not a directory")


def _checked(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    known = {f.name for f in fields(ServerSettings)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown setting(s) in {where}: {', '.join(sorted(unknown))}")
    return dict(data)


def _parse_env(name: str, raw: str, typ: type) -> Any:
    try:
        if typ is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        return typ(raw)
    except ValueError:
        raise ValueError(f"environment {ENV_PREFIX}{name.upper()}={raw!r} is not a valid {typ.__name__}") from None
