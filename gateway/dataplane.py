"""The protocol-neutral data plane: what both front ends (HTTP, gRPC) and the embedded API call.

Front ends decode their wire format into ``gateway.types.InferRequest`` and hand it to
``submit`` (callback style: the HTTP hot path allocates no future or task per request) or
``infer`` (awaitable, for gRPC and embedded use). What the fronts show a client about a model
(metadata, config, statistics) comes from here as core objects (``ModelVersion``, ``Totals``);
the fronts turn them into the KServe v2 / Triton documents (``gateway.front.model_docs``).

Errors are ``GatewayError`` with a neutral ``Code``; the fronts map them through
``gateway.front.status``.

Failures are counted where they are known, off the success path: the batcher counts those after
a request was queued, ``submit`` those it rejects (unknown version, bad shape, queue full, ...),
and the fronts call ``record_rejected`` for requests they could not decode. A failure that names
no loaded version is counted server-wide (``unresolved``), under the model's name when that model
is known to the repository and under "" otherwise (client-chosen names never become labels).

Statistics (``version_totals``, ``unresolved_totals``) are this process's, plus, with
``--workers N``, the latest snapshots of the other workers (``peers``; see ``gateway.observe.workers``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from gateway import __version__
from gateway.errors import Code, GatewayError, not_found
from gateway.observe.stats import Totals
from gateway.pipeline.admit import InflightCap
from gateway.pipeline.door import Door
from gateway.pipeline.route import ModelRoute, Router
from gateway.pipeline.target import Done, Ticket
from gateway.pipeline.traffic import TrafficControl
from gateway.repository.registry import ModelRegistry, ModelVersion
from gateway.shm import SharedMemoryRegistry
from gateway.types import InferRequest, InferResponse

DoneCallback = Done

# Extensions served (trace and logging are answered UNIMPLEMENTED, so not listed). System shared
# memory is listed when clients may register regions; CUDA shared memory never (its RPCs answer,
# but no region can be registered).
SERVED_EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics", "model_configuration", "parameters"]
SHM_EXTENSION = "system_shared_memory"


class DataPlane:
    """Facade over registry + router + batchers. Owns no I/O of its own."""

    def __init__(self, registry: ModelRegistry, router: Router, traffic: TrafficControl,
                 server_name: str = "inference-gateway",
                 shm: SharedMemoryRegistry | None = None,
                 peers: Callable[[], list[dict[str, Any]]] | None = None, repository_locked: str = "",
                 inflight: InflightCap | None = None, door: Door | None = None) -> None:
        """``shm``: system shared-memory regions, for the fronts' decode and encode (None: not served).
        ``peers``: the other workers' latest snapshot documents (``export`` form), read per scrape.
        ``repository_locked``: when set, load/unload are refused with this message (``--workers N``).
        ``inflight``: the server-wide caps on infer requests held (None: none).
        ``door``: shedding at the door by loop lag, which the fronts ask before decoding (None: off)."""
        self.registry = registry
        self.router = router
        self.traffic = traffic
        self.server_name = server_name
        self.shm = shm
        self.peers = peers
        self.repository_locked = repository_locked
        self.inflight = inflight
        self.door = door or Door(0.0)
        self.unresolved: dict[tuple[str, str], int] = {}  # (model label, Code name) -> failed requests
        extensions = SERVED_EXTENSIONS + ([SHM_EXTENSION] if shm is not None and shm.enabled else [])
        self._metadata = {"name": server_name, "version": __version__, "extensions": extensions}
        self.draining = False
        """Set on SIGTERM: readiness turns false while requests are still served (see App)."""

    # ---- health and metadata -------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return not self.draining and self.registry.ready()

    def server_metadata(self) -> dict[str, Any]:
        return self._metadata

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            mv = self.registry.get(name, version)
        except GatewayError:
            return False
        return mv.ready and mv.backend.ready()  # a remote model: while one of its endpoints is

    def model_version(self, name: str, version: str = "") -> ModelVersion:
        """A version in any state (metadata and config are shown while it loads); raises Triton's
        "unknown model" error. The fronts build the documents (``gateway.front.model_docs``)."""
        return self.registry.get(name, version, require_ready=False)

    def version_labels(self, name: str) -> list[str]:
        """The model's loaded versions, in numeric order."""
        return self.registry.version_labels(name)

    def model_totals(self, name: str = "", version: str = "") -> dict[tuple[str, str], Totals]:
        """Statistics per (model, version) for one model/version or all; for a name that matches no
        loaded version, Triton's "unknown model" error."""
        totals = self.version_totals(name, version)
        if name and not totals:
            self.registry.get(name, version, require_ready=False)  # raises Triton's "unknown model" error
            raise not_found(f"Request for unknown model: '{name}' is not found")
        return totals

    # ---- statistics, summed over workers ---------------------------------------------------
    def local_totals(self, name: str = "", version: str = "") -> dict[tuple[str, str], Totals]:
        """This process's numbers per (model, version), gauges read from the batchers now."""
        return {(mv.name, mv.version): mv.stats.totals(*mv.batcher.outstanding())
                for mv in self.registry.versions(name, version)}

    def peer_docs(self) -> list[dict[str, Any]]:
        """The other workers' latest snapshot documents (none with one worker)."""
        return self.peers() if self.peers is not None else []

    def version_totals(self, name: str = "", version: str = "",
                       peers: list[dict[str, Any]] | None = None) -> dict[tuple[str, str], Totals]:
        """Per (model, version): this process's numbers plus the other workers' latest snapshots
        (``peers``, when the caller already read them)."""
        out = self.local_totals(name, version)
        for doc in self.peer_docs() if peers is None else peers:
            for n, v, tdoc in doc.get("versions", ()):
                if name and (n != name or (version and v != version)):  # as registry.versions filters
                    continue
                try:
                    t = Totals.from_doc(tdoc)
                except (KeyError, TypeError, ValueError):  # not ours, or damaged: skip, never fail a scrape
                    continue
                mine = out.get((n, v))
                if mine is None:
                    out[(n, v)] = t
                else:
                    mine.merge(t)
        return out

    def unresolved_totals(self, peers: list[dict[str, Any]] | None = None) -> dict[tuple[str, str], int]:
        """Failures that named no loaded version, per (model label, Code name), summed over workers."""
        out = dict(self.unresolved)
        for doc in self.peer_docs() if peers is None else peers:
            for model, code, n in doc.get("unresolved", ()):
                out[(model, code)] = out.get((model, code), 0) + int(n)
        return out

    def export(self) -> dict[str, Any]:
        """This process's statistics as a JSON-able document, the form ``peers`` returns."""
        return {"versions": [[n, v, t.to_doc()] for (n, v), t in self.local_totals().items()],
                "unresolved": [[m, c, n] for (m, c), n in self.unresolved.items()]}

    def record_rejected(self, model: str, version: str, code: Code) -> None:
        """An infer request answered with an error before it reached a batcher (the fronts call this
        for requests they could not decode). Counted against the version it names, if loaded; else
        server-wide. Off the success path: called once per failed request."""
        try:
            mv = self.registry.get(model, version, require_ready=False)
        except GatewayError:
            known = model in self.registry.models or model in self.registry.errors
            key = (model if known else "", code.name)
            self.unresolved[key] = self.unresolved.get(key, 0) + 1
            return
        mv.stats.record_failures(code.name, 1)

    # ---- inference -----------------------------------------------------------------------
    def route_of(self, model: str) -> ModelRoute | None:
        """The model's entry in the routing table now (the fronts ask whether it has a policy,
        and which sticky key it reads)."""
        return self.router.table.get(model)

    def submit(self, request: InferRequest, done: DoneCallback, eager: bool = False,
               keys: Mapping[str, Any] | None = None) -> Ticket:
        """Route, then hand the request to the chosen target (coalesce -> admit -> batch -> backend);
        ``done`` is called exactly once, on the loop thread, unless cancelled.

        ``keys``: sticky-key candidates the front collected (lowercase header / metadata names).
        Refusals raise ``GatewayError`` synchronously (nothing queued), each counted by the stage
        that refused (the server-wide ``inflight`` caps, checked first, are counted here). Calling ``ticket.cancel()`` before the batch runs drops the request and
        ``done`` is never called.
        """
        # try costs nothing on the success path (3.11+); only a rejection pays for its counting
        cap = self.inflight
        held = None
        try:
            if cap is not None:  # server-wide caps first: the cheapest refusal under overload
                held = cap.hold(request, done)
            target = self.router.route(request, keys)
        except GatewayError as exc:
            if held is not None:
                held.release()
            self.record_rejected(request.model_name, request.model_version, exc.code)
            raise
        if held is None:
            return target.submit(request, done, eager)
        # The claim goes in place of ``done``: released by the answer, or by a cancel (the ticket)
        try:
            held.ticket = target.submit(request, held, eager)
        except BaseException:
            held.release()
            raise
        return held

    async def infer(self, request: InferRequest, eager: bool = False,
                    keys: Mapping[str, Any] | None = None) -> InferResponse:
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

        ticket = self.submit(request, done, eager, keys)
        try:
            return await fut
        except asyncio.CancelledError:
            ticket.cancel()
            raise

    # ---- repository ----------------------------------------------------------------------
    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        return self.registry.index(ready_only)

    def _check_repository_changes(self) -> None:
        if self.repository_locked:
            raise GatewayError(Code.UNAVAILABLE, self.repository_locked)

    async def load_model(self, name: str, config: str | None = None,
                         parameters: Mapping[str, Any] | None = None) -> None:
        """``config``: Triton's model config as JSON, replacing config.pbtxt for this load;
        ``parameters``: a load request's parameters as the front decoded them (``config`` among them)."""
        self._check_repository_changes()
        await self.registry.load(name, config, parameters)

    async def unload_model(self, name: str) -> None:
        self._check_repository_changes()
        await self.registry.unload(name)
