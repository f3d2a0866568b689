"""A model's traffic policy: the ``[traffic]`` table of its config.toml, or the admin API's JSON body.

Both take the same keys and go through ``parse_policy``, which names the bad field in its error
(``traffic.weights.7: ...``) and never half-applies. ``check_versions`` then checks the policy against
the versions that are loaded. Keys:

- ``weights = { "1" = 95, "2" = 5 }``: unpinned requests split by weight (any positive scale; shown
  as percent). Absent: all unpinned requests go to the default (highest) version.
- ``stable = "1"``: the arm canaries are judged against and rollback returns to (default: the arm
  with the largest weight, ties to the lowest version).
- ``sticky_key = "x-user-id"``: an HTTP header / gRPC metadata key, or a request parameter of that
  name, whose value picks the arm by a stable hash (sticky A/B).
- ``shadow = { version = "3", fraction = 0.2, atol = 1e-5, rtol = 1e-3 }``: mirror that fraction of
  unpinned requests to a version whose answers are compared, never returned.
- ``steps = [5, 25, 50, 100]``, ``step_interval_s = 60``: stepwise promotion of the one canary arm.
- ``[traffic.guard]``: bounds a canary must keep (``GuardConfig``'s fields, plus ``outcome_metric`` /
  ``outcome_max_drop`` for an outcome guard). Guards act only when this table is present.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.pipeline.guard import GuardConfig

MAX_STICKY_KEY = 64


class PolicyError(ValueError):
    """A policy that cannot be applied; the message starts with the field's path."""


@dataclass(frozen=True, slots=True)
class ShadowSpec:
    version: str
    fraction: float
    atol: float = 1e-5
    rtol: float = 1e-3


@dataclass(frozen=True, slots=True)
class OutcomeGuard:
    """Roll back when ``metric``'s mean on the canary is below the stable arm's by more than
    ``max_drop``, with confidence (always-valid intervals, see ``outcomes``)."""

    metric: str
    max_drop: float


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    weights: Mapping[str, float] = field(default_factory=dict)  # version -> percent (sums to 100)
    stable: str = ""
    sticky_key: str = ""
    shadow: ShadowSpec | None = None
    guard: GuardConfig | None = None
    outcome_guard: OutcomeGuard | None = None
    steps: tuple[float, ...] = ()
    step_interval_s: float = 60.0

    @property
    def canaries(self) -> list[str]:
        """Arms other than the stable one that take traffic."""
        return [v for v, w in self.weights.items() if v != self.stable and w > 0]

    @property
    def rollout_canary(self) -> str:
        """The arm a stepwise rollout promotes: the one weighted arm besides the stable one."""
        others = [v for v in self.weights if v != self.stable]
        return others[0] if self.steps and len(others) == 1 else ""

    def with_weights(self, weights: Mapping[str, float]) -> TrafficPolicy:
        return dataclasses.replace(self, weights=_normalized(weights))

    def to_doc(self) -> dict[str, Any]:
        """The policy in the keys ``parse_policy`` reads (what GET returns and PUT accepts)."""
        doc: dict[str, Any] = {"weights": dict(self.weights), "stable": self.stable}
        if self.sticky_key:
            doc["sticky_key"] = self.sticky_key
        if self.shadow is not None:
            doc["shadow"] = dataclasses.asdict(self.shadow)
        if self.steps:
            doc["steps"] = list(self.steps)
            doc["step_interval_s"] = self.step_interval_s
        if self.guard is not None:
            doc["guard"] = dataclasses.asdict(self.guard)
            if self.outcome_guard is not None:
                doc["guard"].update(outcome_metric=self.outcome_guard.metric,
                                    outcome_max_drop=self.outcome_guard.max_drop)
        return doc


_KEYS = {"weights", "stable", "sticky_key", "shadow", "steps", "step_interval_s", "guard"}
_SHADOW_KEYS = {"version", "fraction", "atol", "rtol"}
_GUARD_FIELDS = {f.name: f for f in dataclasses.fields(GuardConfig)}
_OUTCOME_KEYS = {"outcome_metric", "outcome_max_drop"}


def _version(value: Any, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.isdigit() or len(value) > 19:
        raise PolicyError(f"{where}: must be a version number, got {value!r}")
    return str(int(value))


def _number(value: Any, where: str, lo: float = 0.0, hi: float = math.inf, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PolicyError(f"{where}: must be a number, got {value!r}")
    if value < lo or value > hi or (lo_open and value == lo):
        bound = f"in ({lo:g}, {hi:g}]" if lo_open else f"in [{lo:g}, {hi:g}]"
        raise PolicyError(f"{where}: must be {bound}, got {value!r}")
    return float(value)


def _table(value: Any, where: str, keys: Collection[str] | None) -> Mapping[str, Any]:
    """``value`` as a table whose keys are among ``keys`` (None: any key)."""
    if not isinstance(value, Mapping):
        raise PolicyError(f"{where}: must be a table (a JSON object), got {type(value).__name__}")
    if keys is None:
        return value
    for k in value:
        if k not in keys:
            raise PolicyError(f"{where}.{k}: is not a known key (known: {', '.join(sorted(keys))})")
    return value


def _normalized(weights: Mapping[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    if total <= 0:
        return {v: 0.0 for v in weights}
    return {v: round(100.0 * w / total, 6) for v, w in sorted(weights.items(), key=lambda kv: int(kv[0]))}


def parse_policy(doc: Any, where: str = "traffic") -> TrafficPolicy:
    """Parse and check a policy document (graph- and version-independent checks only)."""
    doc = _table(doc, where, _KEYS)
    weights: dict[str, float] = {}
    if "weights" in doc:
        raw = _table(doc["weights"], f"{where}.weights", None)
        for k, w in raw.items():
            v = _version(k, f"{where}.weights.{k}")
            weights[v] = _number(w, f"{where}.weights.{k}", 0.0, 1e9)
        if weights and sum(weights.values()) <= 0:
            raise PolicyError(f"{where}.weights: at least one weight must be above 0")
    stable = ""
    if "stable" in doc:
        stable = _version(doc["stable"], f"{where}.stable")
        if weights and stable not in weights:
            raise PolicyError(f"{where}.stable: version {stable} has no entry in {where}.weights")
    elif weights:
        stable = min(weights, key=lambda v: (-weights[v], int(v)))
    sticky = ""
    if "sticky_key" in doc:
        sticky = doc["sticky_key"]
        if (not isinstance(sticky, str) or not sticky or len(sticky) > MAX_STICKY_KEY
                or not all(c.isalnum() or c in "-_." for c in sticky)):
            raise PolicyError(f"{where}.sticky_key: must be a header name (letters, digits, '-', '_', '.'; at "
                              f"most {MAX_STICKY_KEY}), got {sticky!r}")
        sticky = sticky.lower()
    shadow = None
    if "shadow" in doc:
        s = _table(doc["shadow"], f"{where}.shadow", _SHADOW_KEYS)
        if "version" not in s:
            raise PolicyError(f"{where}.shadow.version: is required")
        shadow = ShadowSpec(_version(s["version"], f"{where}.shadow.version"),
                            _number(s.get("fraction", 1.0), f"{where}.shadow.fraction", 0.0, 1.0, lo_open=True),
                            _number(s.get("atol", 1e-5), f"{where}.shadow.atol"),
                            _number(s.get("rtol", 1e-3), f"{where}.shadow.rtol"))
    steps: tuple[float, ...] = ()
    if "steps" in doc:
        raw_steps = doc["steps"]
        if not isinstance(raw_steps, list) or not raw_steps:
            raise PolicyError(f"{where}.steps: must be a non-empty list of percentages")
        steps = tuple(_number(x, f"{where}.steps[{i}]", 0.0, 100.0, lo_open=True) for i, x in enumerate(raw_steps))
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)) or steps[-1] != 100:
            raise PolicyError(f"{where}.steps: must increase and end at 100, got {list(raw_steps)}")
    interval = 60.0
    if "step_interval_s" in doc:
        interval = _number(doc["step_interval_s"], f"{where}.step_interval_s", 0.0, 86400.0 * 30, lo_open=True)
    guard, outcome = None, None
    if "guard" in doc:
        g = _table(doc["guard"], f"{where}.guard", set(_GUARD_FIELDS) | _OUTCOME_KEYS)
        values: dict[str, Any] = {}
        for k, v in g.items():
            if k in _OUTCOME_KEYS:
                continue
            at = f"{where}.guard.{k}"
            if k == "min_requests":
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise PolicyError(f"{at}: must be a positive integer, got {v!r}")
                values[k] = v
            elif k == "alpha":
                values[k] = _number(v, at, 0.0, 0.5, lo_open=True)
            elif k in ("max_error_rate", "max_disagreement"):
                values[k] = _number(v, at, 0.0, 1.0)
            elif k == "window_s":
                values[k] = _number(v, at, 0.0, 86400.0, lo_open=True)
            else:
                values[k] = _number(v, at)
        guard = GuardConfig(**values)
        if "outcome_metric" in g or "outcome_max_drop" in g:
            metric = g.get("outcome_metric")
            if not isinstance(metric, str) or not metric:
                raise PolicyError(f"{where}.guard.outcome_metric: must name an outcome metric, got {metric!r}")
            outcome = OutcomeGuard(metric, _number(g.get("outcome_max_drop", 0.0), f"{where}.guard.outcome_max_drop"))
    policy = TrafficPolicy(_normalized(weights), stable, sticky, shadow, guard, outcome, steps, interval)
    if steps and len([v for v in policy.weights if v != stable]) != 1:
        raise PolicyError(f"{where}.steps: a stepwise rollout needs exactly one canary besides the stable arm "
                          f"in {where}.weights")
    return policy


def check_versions(policy: TrafficPolicy, versions: Collection[str], where: str = "traffic") -> None:
    """Every version the policy names must be loaded (and ready)."""
    for v in policy.weights:
        if v not in versions:
            raise PolicyError(f"{where}.weights.{v}: version {v} is not loaded (loaded: {_list(versions)})")
    if policy.shadow is not None and policy.shadow.version not in versions:
        raise PolicyError(f"{where}.shadow.version: version {policy.shadow.version} is not loaded "
                          f"(loaded: {_list(versions)})")


def _list(versions: Collection[str]) -> str:
    return ", ".join(sorted(versions, key=int)) or "none"
