"""The ``triton`` backend: each packed batch becomes one ``ModelInfer`` call to a remote KServe v2
gRPC server (Triton, or another gateway), balanced over healthy endpoints.

- **Discovery** (at load, on the repository's worker thread, with a blocking channel): the remote
  model's inputs, outputs and platform from ``ModelMetadata``, its ``max_batch_size`` from
  ``ModelConfig``; the first endpoint that answers wins, the others are checked by health.
- **Calls** run on the event loop over ``grpc.aio`` with our own generated stubs (``gateway.pb``):
  no tritonclient in the server, and one ``bytes`` per tensor (``codec``). The deadline is the
  batch's: the latest of its requests' deadlines, or ``remote_timeout_s``.
- **Balancing**: fewest calls in flight among healthy endpoints with a closed breaker, each at most
  ``remote_max_outstanding``. ``capacity`` (batches the batcher may have in flight) is the sum over
  available endpoints, so a slow or shrinking fleet makes the queue, and then admission (429), push
  back instead of piling calls up.
- **Retry** on another endpoint only when the call provably never reached a server (UNAVAILABLE
  from a failed connect); anything that may have run is answered with its error, never re-run.
- **Health**: every ``remote_health_interval_s`` each endpoint is asked ServerReady and ModelReady;
  the model is ready while one endpoint is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from gateway.backends.base import Backend, DoneFn, Outputs
from gateway.backends.triton.codec import decode_response, encode_request, specs
from gateway.backends.triton.endpoint import Endpoint, pick
from gateway.errors import Code, GatewayError
from gateway.model_config import ConfigError, ModelConfig, RemoteConfig
from gateway.pb import Stub
from gateway.pb import service as pb
from gateway.types import TensorSpec

log = logging.getLogger(__name__)

INF = float("inf")
_MAX_MESSAGE = 256 * 1024 * 1024  # what a remote may send back; the fronts bound what clients send
_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: Code.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Code.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED: Code.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED: Code.CANCELLED,
    grpc.StatusCode.UNAVAILABLE: Code.UNAVAILABLE,
    grpc.StatusCode.NOT_FOUND: Code.UNAVAILABLE,  # our model is there; the remote lacks it
}


def _options() -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            # a server that comes back is seen within a second, not after grpc's backoff of up to 2 min
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000)]


def never_sent(err: grpc.RpcError) -> bool:
    """The call failed before any byte reached a server: the connection could not be made."""
    if err.code() is not grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
        return False
    details = (err.details() or "").lower()  # type: ignore[attr-defined]
    return "failed to connect" in details or "connection refused" in details


class TritonBackend:
    inline = False

    def __init__(self, name: str, config: ModelConfig, clock: Any = time.perf_counter) -> None:
        remote = config.remote
        assert remote is not None
        self.name = name
        self.remote: RemoteConfig = remote
        self.remote_model = remote.model or name
        self.remote_version = remote.version
        self.clock = clock
        self.endpoints = [Endpoint(a, remote) for a in remote.endpoints]
        self.device = "remote: " + ", ".join(remote.endpoints)
        self.where = f"model '{name}' (remote '{self.remote_model}')"
        self._calls: set[asyncio.Task[None]] = set()
        self._health: asyncio.Task[None] | None = None
        self._closed = False
        meta, cfg = self._discover()
        self.platform = meta.platform or "remote"
        self.inputs: Sequence[TensorSpec] = specs(meta.inputs)
        self.outputs: Sequence[TensorSpec] = specs(meta.outputs)
        self.remote_max_batch_size = cfg.config.max_batch_size if cfg is not None else None
        """The remote's own max_batch_size (None: it did not say); the repository's default here."""

    # ---- load (the repository's worker thread) ---------------------------------------------------
    def _discover(self) -> tuple[Any, Any]:
        why = []
        for ep in self.endpoints:
            try:
                with grpc.insecure_channel(ep.address, options=_options()) as ch:
                    stub = Stub(ch)
                    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=self.remote_model,
                                                                      version=self.remote_version), timeout=5)
                    try:
                        cfg = stub.ModelConfig(pb.ModelConfigRequest(name=self.remote_model,
                                                                     version=self.remote_version), timeout=5)
                    except grpc.RpcError:
                        cfg = None  # a server without the model-configuration extension
            except grpc.RpcError as exc:
                why.append(f"{ep.address}: {exc.code().name} {exc.details()}")  # type: ignore[attr-defined]
                continue
            ep.healthy = True
            for other in self.endpoints:  # the rest: ready now? (then the health checks keep track)
                if other is not ep and not other.healthy:
                    other.healthy = self._ready_now(other.address)
            return meta, cfg
        raise ConfigError(f"{self.where}: no endpoint answers ModelMetadata: " + "; ".join(why))

    def _ready_now(self, address: str) -> bool:
        try:
            with grpc.insecure_channel(address, options=_options()) as ch:
                return bool(Stub(ch).ModelReady(pb.ModelReadyRequest(name=self.remote_model, version=self.remote_version),
                                                timeout=2).ready)
        except grpc.RpcError:
            return False

    def warm_up(self, feeds: dict[str, np.ndarray], inline_threshold_us: int) -> float:
        """One call to each endpoint that answered discovery, blocking: the shapes are checked
        against the remote, and its time is the batch cost the batcher starts from."""
        worst = 0.0
        msg = encode_request(self.remote_model, self.remote_version, feeds)
        for ep in self.endpoints:
            if not ep.healthy:
                continue
            with grpc.insecure_channel(ep.address, options=_options()) as ch:
                t0 = time.perf_counter()
                try:
                    decode_response(Stub(ch).ModelInfer(msg, timeout=self.remote.timeout_s), self.where)
                except grpc.RpcError as exc:
                    raise ConfigError(f"{self.where}: the warm-up call to {ep.address} failed: "
                                      f"{exc.code().name} {exc.details()}") from None  # type: ignore[attr-defined]
                worst = max(worst, time.perf_counter() - t0)
        return worst

    # ---- serving (the event loop) ------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        now = self.clock()
        open_ = sum(ep.max_outstanding for ep in self.endpoints
                    if ep.healthy and (not ep.open_until or now >= ep.open_until))
        return max(1, open_)  # 1 when none: the call fails at once (503) rather than queueing forever

    def ready(self) -> bool:
        self._watch()
        now = self.clock()
        return any(ep.healthy and ep.breaker(now) != "open" for ep in self.endpoints)

    def run_inline(self, feeds: dict[str, np.ndarray]) -> Outputs:
        raise GatewayError(Code.INTERNAL, f"{self.where} runs remotely, never inline")

    def start(self) -> None:
        self._watch()

    def _watch(self) -> None:
        """Start the health checks, on the loop (``start``, or the first time the loop asks)."""
        if self._health is None and not self._closed:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # the repository's worker thread: the loop will ask soon
                return
            self._health = loop.create_task(self._check_health())

    def run_async(self, feeds: dict[str, np.ndarray], done: DoneFn,
                  deadline: float = INF) -> Callable[[], object] | None:
        self._watch()
        task = asyncio.get_running_loop().create_task(self._call(feeds, done, deadline))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        return task.cancel  # every request of the batch gone: the remote call is cancelled

    def _open(self, ep: Endpoint) -> None:
        for _ in range(self.remote.channels):
            ch = grpc.aio.insecure_channel(ep.address, options=_options())
            ep.channels.append(ch)
            ep.stubs.append(Stub(ch))

    async def _call(self, feeds: dict[str, np.ndarray], done: DoneFn, deadline: float) -> None:
        msg = encode_request(self.remote_model, self.remote_version, feeds)
        tried: list[Endpoint] = []
        while True:
            now = self.clock()
            ep = pick(self.endpoints, now, tried)
            if ep is None:
                down = ", ".join(f"{e.address} ({'breaker open' if e.open_until else 'not ready'})"
                                 for e in self.endpoints if not e.available(now))
                done(None, GatewayError(Code.UNAVAILABLE, f"{self.where}: no endpoint can take the call"
                                                          + (f": {down}" if down else "")))
                return
            timeout = deadline - now if deadline < INF else self.remote.timeout_s
            if timeout <= 0:
                done(None, GatewayError(Code.DEADLINE_EXCEEDED, f"{self.where}: deadline passed before the call"))
                return
            if not ep.stubs:
                self._open(ep)
            ep.started(now)
            code = "CANCELLED"
            try:
                resp = await ep.stub().ModelInfer(msg, timeout=timeout)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
                if never_sent(exc) and len(tried) + 1 < len(self.endpoints):
                    tried.append(ep)
                    ep.healthy = False  # until a health check sees it again
                    continue
                mapped = _CODES.get(exc.code(), Code.INTERNAL)
                done(None, GatewayError(mapped, f"{self.where}: {ep.address} answered {code}: {exc.details()}"))
                return
            except asyncio.CancelledError:  # an unload past its grace, or the server stopping
                done(None, GatewayError(Code.CANCELLED, f"{self.where}: the call to {ep.address} was cancelled"))
                raise
            finally:
                end = self.clock()
                ep.finished(code, end - now, end)
            try:
                outputs = decode_response(resp, f"{self.where} at {ep.address}")
            except GatewayError as err:
                done(None, err)
                return
            done(outputs, None)
            return

    async def _check_health(self) -> None:
        interval = self.remote.health_interval_s
        while not self._closed:
            await asyncio.gather(*(self._check(ep, interval) for ep in self.endpoints))
            await asyncio.sleep(interval)

    async def _check(self, ep: Endpoint, timeout: float) -> None:
        if not ep.stubs:
            self._open(ep)
        stub = ep.stubs[0]
        try:
            live = (await stub.ServerReady(pb.ServerReadyRequest(), timeout=timeout)).ready
            ok = live and (await stub.ModelReady(pb.ModelReadyRequest(name=self.remote_model,
                                                                      version=self.remote_version),
                                                 timeout=timeout)).ready
        except grpc.aio.AioRpcError:
            ok = False
        if ok != ep.healthy:
            (log.info if ok else log.warning)("%s: endpoint %s is %s", self.where, ep.address,
                                              "ready again" if ok else "not ready: taken out")
            ep.healthy = ok

    def cancel(self) -> None:
        for t in list(self._calls):
            t.cancel()

    async def close(self) -> None:
        self._closed = True
        if self._health is not None:
            self._health.cancel()
        self.cancel()
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
        for ep in self.endpoints:
            for ch in ep.channels:
                await ch.close()
            ep.channels.clear()
            ep.stubs.clear()


class TritonFactory:
    """Builds ``TritonBackend``s; a remote model has no file, only its config."""

    default_filename = ""

    def filename_for(self, config: ModelConfig) -> str:
        return ""

    def __call__(self, path: Path, config: ModelConfig) -> Backend:
        return TritonBackend(config.name, config)

    def check_device(self, device: str) -> None:
        raise ConfigError(f"device '{device}' is decided by the remote servers (backend = \"triton\")")
