"""The route stage: which Target serves a request, read from an immutable routing table.

The table maps a model name to its ``ModelRoute``: the ready versions' targets (for pinned requests)
and, for unpinned ones, either the default version or a compiled traffic policy (weighted arms,
sticky key, shadow-wrapped targets). Whoever changes the table (the repository on load/unload, the
traffic control on a policy change, guard verdict or rollout step) builds a new ``ModelRoute`` and
swaps the dict reference: a request sees the old table or the new one, never a mix, and routing
takes no lock.

Sticky A/B: the key's value picks the arm by ``xxh3_64(key, seed=xxh3_64(model)) / 2**64`` against
the cumulative weights, so the same key lands on the same version on every replica and across
restarts, and the shares still follow the weights. Canary arms come first on that line and the
stable arm last, so raising a canary's weight only moves users from stable to the canary: nobody
who already saw the canary flips back during a rollout. Without the key the split is random.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Mapping
from random import random
from typing import Any

from xxhash import xxh3_64_intdigest

from gateway.errors import GatewayError
from gateway.pipeline.target import Target
from gateway.types import InferRequest

_SCALE = 2.0 ** -64

Miss = Callable[[str, str], GatewayError]
"""The error for a model (or version) the table does not serve, in the repository's wording."""
Remember = Callable[[str, str], None]
"""(request id, arm) for outcome attribution; called for policy-routed requests that carry an id."""


def model_seed(model: str) -> int:
    return xxh3_64_intdigest(model.encode())


def sticky_point(model: str | int, key: Any) -> float:
    """Where a sticky key falls on [0, 1): the same on every replica, for every process (no
    per-process hash seed). ``model``: the model's name, or its ``model_seed``. A header's bytes and
    the same text as a str (a request parameter, gRPC metadata) fall on the same point."""
    seed = model if isinstance(model, int) else model_seed(model)
    if not isinstance(key, bytes):
        key = key.encode() if isinstance(key, str) else str(key).encode()
    return xxh3_64_intdigest(key, seed) * _SCALE


class ModelRoute:
    """One model's entry in the routing table. Immutable once published."""

    __slots__ = ("name", "seed", "targets", "default", "arms", "arm_targets", "cum", "sticky_key", "remember",
                 "policy", "entity_key", "keys", "lanes")

    def __init__(self, name: str, targets: Mapping[str, Target], default: str,
                 arms: Mapping[str, float] | None = None, arm_targets: Mapping[str, Target] | None = None,
                 sticky_key: str = "", remember: Remember | None = None, policy: Any = None,
                 entity_key: str = "", lanes: Mapping[str, Any] | None = None) -> None:
        """``targets``: version -> the version's own target (pinned requests). ``arms``: version ->
        weight for unpinned requests (None: all to ``default``); ``arm_targets`` may wrap an arm
        (a shadow pair). ``policy``: what the admin API shows; not read here. ``entity_key``: the
        precomputed route's key (a header / metadata name), handed to the target as ``request.entity``.
        ``lanes``: version -> the version's native lane (``ModelVersion.lane``), for the HTTP front;
        kept only for a model routed without a policy or an entity key (the lane does not route),
        and filed under "" too for the default version."""
        self.name = name
        self.seed = model_seed(name)
        self.targets = dict(targets)
        self.default = default
        self.sticky_key = sticky_key
        self.remember = remember
        self.policy = policy
        self.entity_key = entity_key
        self.keys = tuple(k for k in (sticky_key, entity_key) if k)
        """The header / metadata names the fronts collect for this model."""
        self.lanes: dict[str, Any] = {}
        if lanes and arms is None and not entity_key:
            self.lanes = dict(lanes)
            if default in self.lanes:
                self.lanes[""] = self.lanes[default]
        live = [(v, w) for v, w in (arms or {}).items() if w > 0]
        if arms is None or not live:
            self.arms: tuple[str, ...] = ()
            self.arm_targets: tuple[Target, ...] = ()
            self.cum: tuple[float, ...] = ()
            return
        stable_last = sorted(live, key=lambda vw: (vw[0] == default, int(vw[0])))
        total = sum(w for _, w in stable_last)
        acc, cum = 0.0, []
        for _, w in stable_last:
            acc += w / total
            cum.append(acc)
        cum[-1] = 1.0
        self.arms = tuple(v for v, _ in stable_last)
        wrapped = arm_targets or {}
        self.arm_targets = tuple(wrapped.get(v) or self.targets[v] for v in self.arms)
        self.cum = tuple(cum[:-1])  # bisect over the inner bounds: index = arm

    @property
    def has_policy(self) -> bool:
        return bool(self.arms)

    def arm_at(self, point: float) -> int:
        return bisect_right(self.cum, point)


class Router:
    def __init__(self, miss: Miss) -> None:
        self.table: dict[str, ModelRoute] = {}
        self.miss = miss
        self.sticky_headers: dict[bytes, str] = {}
        """Lowercase header names some model's policy or precomputed route reads (the HTTP front
        keeps only these), to the key name the router looks up."""
        self.sticky_sizes: frozenset[int] = frozenset()

    def publish(self, name: str, route: ModelRoute | None) -> None:
        """Swap one model's entry (None: the model no longer serves)."""
        table = dict(self.table)
        if route is None:
            table.pop(name, None)
        else:
            table[name] = route
        keys = {k.encode(): k for r in table.values() for k in r.keys}
        self.table = table  # the atomic part: one reference
        self.sticky_headers = keys
        self.sticky_sizes = frozenset(len(k) for k in keys)

    def route(self, request: InferRequest, keys: Mapping[str, Any] | None = None) -> Target:
        """The target for ``request``; ``keys``: sticky-key candidates the front collected (lowercase
        header or metadata names). Raises the repository's error for what it does not serve."""
        r = self.table.get(request.model_name)
        if r is None:
            raise self.miss(request.model_name, request.model_version)
        if r.entity_key and keys:
            request.entity = keys.get(r.entity_key)
        version = request.model_version
        if version:
            t = r.targets.get(version)
            if t is None:
                raise self.miss(request.model_name, version)
            return t
        if not r.arms:
            return r.targets[r.default]
        key = None
        if r.sticky_key:
            if keys:
                key = keys.get(r.sticky_key)
            if key is None and request.parameters:
                key = request.parameters.get(r.sticky_key)
        if not r.cum:
            i = 0
        elif key is None:
            i = bisect_right(r.cum, random())
        else:
            if not isinstance(key, bytes):
                key = key.encode() if isinstance(key, str) else str(key).encode()
            i = bisect_right(r.cum, xxh3_64_intdigest(key, r.seed) * _SCALE)
        if r.remember is not None and request.id:
            r.remember(request.id, r.arms[i])
        return r.arm_targets[i]

    def arm_of_key(self, name: str, key: Any) -> str | None:
        """The arm a sticky key maps to now (for outcomes that name a key, on any replica)."""
        r = self.table.get(name)
        if r is None or not r.arms:
            return None
        return r.arms[r.arm_at(sticky_point(r.seed, key))]
