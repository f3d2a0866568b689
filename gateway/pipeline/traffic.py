"""Traffic control: each model's policy in force, its guards, rollout, shadow comparison and outcome
book, and the routes it publishes to the router.

The policy in force starts as the config.toml ``[traffic]`` table (or an admin PUT, which then wins
over the file until the next PUT, reloads included) and moves at run time: a guard breach sets the
canary's weight to 0 at once, a rollout step raises it, rollback puts everything on the stable arm,
promote makes the canary the stable arm. Every change builds a new ``ModelRoute`` and swaps it in.

Guards read no per-request data: once per ``tick_s`` the control samples each arm's cumulative
counters (answered, failed with a server-side code, the latency histogram) and judges the window of
differences (``guard``), so the request path pays nothing for them. An arm is a version: pinned
requests to a canary count in its window too (they are its traffic as much as the split's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import Code, GatewayError, invalid
from gateway.observe.stats import ModelStats
from gateway.pipeline.admit import Admit
from gateway.pipeline.guard import Rollout, Sample, Verdict, WindowTracker, judge
from gateway.pipeline.load import LoopLoad
from gateway.pipeline.outcomes import OutcomeBook, OutcomeError
from gateway.pipeline.policy import PolicyError, TrafficPolicy, check_versions, parse_policy
from gateway.pipeline.route import ModelRoute, Router
from gateway.pipeline.shadow import ShadowTarget
from gateway.pipeline.shadow_compare import ShadowComparison
from gateway.pipeline.target import Target

log = logging.getLogger(__name__)

NOT_BLAMED = frozenset({"RESOURCE_EXHAUSTED", "CANCELLED"})
"""Failures a guard does not count against a version: load shedding and callers that left. Everything
else counts, client errors included: a canary that rejects inputs the stable arm takes (onnxruntime
reports a data-dependent kernel failure as INVALID_ARGUMENT) is failing, and an error both arms
share does not make the canary look worse, as the guard compares it with the stable arm."""


OUTCOME_ALPHA = 0.05


class VersionView(Protocol):
    """What traffic control needs of a loaded version (the repository's ModelVersion)."""

    version: str
    admit: Admit
    target: Target
    stats: ModelStats
    entity_key: str
    """The precomputed route's key name ("" without one)."""
    lane: Any
    """The version's native lane for the HTTP front, or None (``ModelVersion.lane``)."""


@dataclass(frozen=True, slots=True)
class TrafficSettings:
    tick_s: float = 1.0
    shadow_max_outstanding: int = 64
    outcome_ids: int = 100_000
    outcome_ttl_s: float = 3600.0
    shadow_max_loop_busy: float = 0.85


class ModelTraffic:
    """One model's traffic state."""

    def __init__(self, name: str, settings: TrafficSettings, clock: Callable[[], float],
                 load: LoopLoad | None = None) -> None:
        self.name = name
        self.load = load
        self.settings = settings
        self.clock = clock
        self.versions: dict[str, VersionView] = {}
        self.configured: TrafficPolicy | None = None
        self.override: TrafficPolicy | None = None
        self.policy: TrafficPolicy | None = None
        self.tracker: WindowTracker | None = None
        self.rollout: Rollout | None = None
        self.comparisons: dict[str, ShadowComparison] = {}  # primary version -> its comparison with the shadow
        self.book = OutcomeBook(settings.outcome_ids, settings.outcome_ttl_s)
        self.verdicts: dict[str, Verdict] = {}
        self.rollbacks: dict[tuple[str, str], int] = {}  # (version, kind) -> times rolled back
        self.events: deque[dict[str, Any]] = deque(maxlen=50)

    @property
    def default(self) -> str:
        return max(self.versions, key=int) if self.versions else ""

    @property
    def stable(self) -> str:
        p = self.policy
        return p.stable if p is not None and p.stable else self.default

    def weight(self, version: str) -> float:
        """Percent of unpinned requests ``version`` takes under the policy in force."""
        p = self.policy
        if p is not None and p.weights:
            return p.weights.get(version, 0.0)
        return 100.0 if version == self.stable else 0.0

    def event(self, kind: str, version: str, reason: str) -> None:
        self.events.append({"time": time.time(), "event": kind, "version": version, "reason": reason})

    def apply(self, policy: TrafficPolicy | None, reset: bool) -> None:
        """Put ``policy`` in force (restricted to the loaded versions). ``reset``: a new policy, so
        windows, rollout and shadow comparison start over."""
        if policy is not None:
            weights = {v: w for v, w in policy.weights.items() if v in self.versions}
            if policy.weights and not any(w > 0 for w in weights.values()):
                weights = {}
            if weights != dict(policy.weights):
                policy = policy.with_weights(weights) if weights else TrafficPolicy(
                    sticky_key=policy.sticky_key, shadow=policy.shadow)
            if policy.shadow is not None and policy.shadow.version not in self.versions:
                policy = dataclasses.replace(policy, shadow=None)
            if not policy.weights and policy.shadow is None:
                policy = None
        self.policy = policy
        if reset:
            self.verdicts.clear()
            self.rollout = None
            self.tracker = None
            self.comparisons = {}
        if policy is None:
            return
        if policy.guard is not None and self.tracker is None:
            self.tracker = WindowTracker(policy.guard.window_s)
        if reset and policy.rollout_canary:
            canary = policy.rollout_canary
            self.rollout = Rollout(policy.steps, policy.step_interval_s, self.clock())
            w = self.rollout.weight()
            self.policy = policy.with_weights({canary: w, policy.stable: 100.0 - w})

    def route(self) -> ModelRoute | None:
        if not self.versions:
            return None
        targets = {v: mv.target for v, mv in self.versions.items()}
        entity_key = next(iter(self.versions.values())).entity_key  # one config.toml: every version's the same
        p = self.policy
        if p is None:
            lanes = {v: mv.lane for v, mv in self.versions.items() if getattr(mv, "lane", None) is not None}
            return ModelRoute(self.name, targets, self.default, entity_key=entity_key, lanes=lanes)
        stable = self.stable
        arms = dict(p.weights) if p.weights else {stable: 100.0}
        wrapped: dict[str, Target] = {}
        if p.shadow is not None:
            s = p.shadow
            shadow = self.versions[s.version]
            for v in arms:
                if v != s.version:
                    comparison = self.comparisons.get(v)
                    if comparison is None:
                        comparison = self.comparisons[v] = ShadowComparison(s.atol, s.rtol)
                    wrapped[v] = ShadowTarget(targets[v], shadow.admit, s.fraction, comparison,
                                              self.clock, self.settings.shadow_max_outstanding, self.load)
        live = [v for v, w in arms.items() if w > 0]
        remember = self.book.remember if len(live) > 1 else None
        return ModelRoute(self.name, targets, stable, arms, wrapped, p.sticky_key, remember, p, entity_key)

    # ---- guards ------------------------------------------------------------------------------
    def tick(self, now: float) -> bool:
        """Sample, judge, step. True when the policy changed (the route must be republished)."""
        p = self.policy
        if p is None or (p.guard is None and self.rollout is None):
            return False
        tracker = self.tracker
        if tracker is not None:
            for v, mv in self.versions.items():
                tracker.push(v, now, _sample(mv.stats))
            if self.comparisons and p.shadow is not None:
                counts = [c.counts() for c in self.comparisons.values()]
                tracker.push("shadow:" + p.shadow.version, now,
                             Sample(sum(n for n, _ in counts), sum(d for _, d in counts), ()))
        stable = self.stable
        candidates = set(p.canaries)
        if self.rollout is not None and p.rollout_canary:
            candidates.add(p.rollout_canary)
        changed = False
        for c in sorted(candidates, key=int):
            verdict = self.judge(c, now) if tracker is not None else Verdict("ok", ())
            self.verdicts[c] = verdict
            if verdict.state == "breach":
                self.roll_back_arm(c, "guard", "; ".join(verdict.reasons))
                changed = True
            elif self.rollout is not None and c == p.rollout_canary:
                step = self.rollout.advance(now, verdict)
                if step is not None:
                    self.step_to(c, stable, step)
                    changed = True
        return changed

    def judge(self, canary: str, now: float) -> Verdict:
        p = self.policy
        assert p is not None and p.guard is not None and self.tracker is not None
        stable = self.stable
        mine = self.tracker.window(canary, now)
        theirs = self.tracker.window(stable, now) if stable != canary else None
        disagreement = None
        if p.shadow is not None and p.shadow.version == canary:
            w = self.tracker.window("shadow:" + canary, now)
            disagreement = (w.requests, w.errors)
        verdict = judge(p.guard, mine, theirs, disagreement)
        og = p.outcome_guard
        # Always-valid intervals: judging them every tick does not inflate the error rate, so the
        # outcome guard keeps the report's 95 % (the window guards need a far smaller alpha).
        if verdict.state != "breach" and og is not None and self.book.significantly_below(
                og.metric, canary, stable, og.max_drop, OUTCOME_ALPHA):
            verdict = Verdict("breach", (f"outcome '{og.metric}' is below the stable arm's by more than "
                                         f"{og.max_drop:g} with confidence {1 - OUTCOME_ALPHA:g}",))
        return verdict

    def roll_back_arm(self, canary: str, kind: str, reason: str) -> None:
        p = self.policy
        assert p is not None
        weights = dict(p.weights)
        weights[canary] = 0.0
        if not any(w > 0 for v, w in weights.items()):
            weights[self.stable] = 100.0
        self.policy = p.with_weights(weights)
        if self.rollout is not None and p.rollout_canary == canary:
            self.rollout = None
        self.rollbacks[(canary, kind)] = self.rollbacks.get((canary, kind), 0) + 1
        self.event("rollback", canary, reason)
        log.warning("model %s: version %s rolled back (%s): %s", self.name, canary, kind, reason)

    def step_to(self, canary: str, stable: str, weight: float) -> None:
        p = self.policy
        assert p is not None
        if weight >= 100.0:
            self.promote_to(canary, "rollout reached 100%")
            return
        self.policy = p.with_weights({canary: weight, stable: 100.0 - weight})
        self.event("step", canary, f"weight {weight:g}%")
        log.info("model %s: version %s now takes %g%%", self.name, canary, weight)

    def promote_to(self, canary: str, reason: str) -> None:
        p = self.policy
        assert p is not None
        self.policy = dataclasses.replace(p.with_weights({canary: 100.0}), stable=canary, steps=())
        self.rollout = None
        self.verdicts.pop(canary, None)
        self.event("promote", canary, reason)
        log.info("model %s: version %s promoted: %s", self.name, canary, reason)

    # ---- the admin view ------------------------------------------------------------------------
    def view(self) -> dict[str, Any]:
        p = self.policy
        now = self.clock()
        arms: dict[str, Any] = {}
        for v in sorted(self.versions, key=int):
            arm: dict[str, Any] = {"weight": self.weight(v), "stable": v == self.stable}
            verdict = self.verdicts.get(v)
            if verdict is not None:
                arm["guard"] = {"state": verdict.state, "reasons": list(verdict.reasons)}
            if self.tracker is not None:
                w = self.tracker.window(v, now)
                p99 = w.p99_s()
                arm["window"] = {"requests": w.requests, "errors": w.errors, "error_rate": w.error_rate(),
                                 "p99_ms": None if p99 is None else p99 * 1e3}
            arms[v] = arm
        out: dict[str, Any] = {
            "model": self.name,
            "versions": sorted(self.versions, key=int),
            "default_version": self.default,
            "stable": self.stable,
            "source": "admin" if self.override is not None else "config" if self.configured is not None else "none",
            "policy": p.to_doc() if p is not None else None,
            "arms": arms,
            "rollout": None if self.rollout is None or p is None else {
                "canary": p.rollout_canary, "steps": list(p.steps), "weight": self.rollout.weight(),
                "step_interval_s": p.step_interval_s},
            "shadow": None if p is None or p.shadow is None else {
                "version": p.shadow.version, "fraction": p.shadow.fraction,
                "by_primary": {v: c.snapshot() for v, c in sorted(self.comparisons.items())}},
            "outcomes": self.book.report(self.stable),
            "events": list(self.events),
        }
        return out


def _sample(stats: ModelStats) -> Sample:
    t = stats.totals()
    errors = sum(n for code, n in t.fail_by_code.items() if code not in NOT_BLAMED)
    hist = t.hists.get("total")
    return Sample(t.success_count + errors, errors, tuple(hist[0]) if hist else ())


class TrafficControl:
    """All models' traffic state; the one writer of the router's table."""

    def __init__(self, router: Router, settings: TrafficSettings | None = None,
                 clock: Callable[[], float] = time.monotonic, locked: str = "") -> None:
        """``locked``: when set, run-time policy changes are refused with this message (``--workers N``:
        a change would reach one worker only)."""
        self.router = router
        self.settings = settings or TrafficSettings()
        self.clock = clock
        self.locked = locked
        self.models: dict[str, ModelTraffic] = {}
        self.load = LoopLoad(high=self.settings.shadow_max_loop_busy,
                             low=max(0.0, self.settings.shadow_max_loop_busy - 0.15))
        self._timer: asyncio.TimerHandle | None = None

    # ---- from the repository ---------------------------------------------------------------------
    def publish(self, name: str, versions: Mapping[str, VersionView] | None,
                configured: TrafficPolicy | None = None) -> None:
        """The repository's view of a model changed: these versions are ready (None: none serves)."""
        if not versions:
            self.models.pop(name, None)
            self.router.publish(name, None)
            return
        m = self.models.get(name)
        if m is None:
            m = self.models[name] = ModelTraffic(name, self.settings, self.clock, self.load)
        m.versions = dict(versions)
        new_config = configured != m.configured
        m.configured = configured
        if m.override is not None:
            m.apply(m.override if m.policy is None else m.policy, reset=False)
        elif new_config or m.policy is None:
            m.apply(configured, reset=True)
        else:
            m.apply(m.policy, reset=False)
        self.router.publish(name, m.route())

    # ---- the admin API ---------------------------------------------------------------------------
    def model(self, name: str) -> ModelTraffic:
        m = self.models.get(name)
        if m is None:
            raise self.router.miss(name, "")
        return m

    def get(self, name: str) -> dict[str, Any]:
        return self.model(name).view()

    def _check_changes(self) -> None:
        if self.locked:
            raise GatewayError(Code.UNAVAILABLE, self.locked)

    def put(self, name: str, doc: Any) -> dict[str, Any]:
        """Replace the policy (validated whole first: a bad field changes nothing)."""
        self._check_changes()
        m = self.model(name)
        try:
            policy = parse_policy(doc)
            check_versions(policy, m.versions)
        except PolicyError as exc:
            raise invalid(str(exc)) from None
        m.override = policy
        m.apply(policy, reset=True)
        m.event("policy", "", "set through the admin API")
        self.router.publish(name, m.route())
        return m.view()

    def rollback(self, name: str) -> dict[str, Any]:
        """All traffic to the stable version at once; the rollout stops."""
        self._check_changes()
        m = self.model(name)
        p = m.policy
        if p is None or not p.weights:
            raise invalid(f"model '{name}' has no traffic split to roll back")
        for c in p.canaries:
            m.rollbacks[(c, "manual")] = m.rollbacks.get((c, "manual"), 0) + 1
        m.policy = p.with_weights({m.stable: 100.0})
        m.rollout = None
        m.event("rollback", ",".join(p.canaries), "admin rollback: all traffic to the stable version")
        log.warning("model %s: rolled back to version %s (admin)", name, m.stable)
        self.router.publish(name, m.route())
        return m.view()

    def promote(self, name: str, version: str = "") -> dict[str, Any]:
        """The next rollout step now, or (no rollout) the canary becomes the stable version."""
        self._check_changes()
        m = self.model(name)
        p = m.policy
        if p is None:
            raise invalid(f"model '{name}' has no traffic policy to promote in")
        if version and version not in m.versions:
            raise invalid(f"version: {version} is not loaded (loaded: {', '.join(sorted(m.versions, key=int))})")
        if m.rollout is not None and not version:
            canary = p.rollout_canary
            rest = [s for s in p.steps if s > m.rollout.weight()] or [100.0]
            m.rollout = Rollout(rest, p.step_interval_s, m.clock())  # the interval starts over from this step
            m.step_to(canary, m.stable, rest[0])
        else:
            canaries = [version] if version else p.canaries
            if len(canaries) != 1:
                raise invalid(f"model '{name}': name the version to promote (canaries: {', '.join(canaries) or 'none'})")
            m.promote_to(canaries[0], "admin promote")
        self.router.publish(name, m.route())
        return m.view()

    def outcomes(self, name: str, items: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        m = self.model(name)
        try:
            return m.book.record(items, m.versions, lambda key: self.router.arm_of_key(name, key))
        except OutcomeError as exc:
            raise invalid(str(exc)) from None

    # ---- the clock -------------------------------------------------------------------------------
    def tick(self) -> None:
        now = self.clock()
        for name, m in list(self.models.items()):
            try:
                if m.tick(now):
                    self.router.publish(name, m.route())
            except Exception:  # a bug in one model's guard must not stop the others' (nor the timer)
                log.exception("model %s: traffic guard failed", name)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.load.start()

        def again() -> None:
            self.tick()
            self._timer = loop.call_later(self.settings.tick_s, again)

        self._timer = loop.call_later(self.settings.tick_s, again)

    def stop(self) -> None:
        self.load.stop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
