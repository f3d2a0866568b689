"""Downstream outcomes (click, conversion, revenue) per traffic-policy arm, and always-valid comparisons.

A traffic policy splits a model's requests between arms (model versions); users later report what
happened downstream. Each outcome is attributed to the arm that answered, then folded into three
numbers per (arm, metric): count, sum and sum of squares. Those are additive, so the per-replica
Prometheus counters summed over the fleet give exactly the totals one book would hold, and
``summarize`` on the summed totals gives the fleet-wide test. A rate (conversion) is the mean of 0/1
outcomes: callers report 0 for requests that did not convert, or the mean is 1 by construction.

Why confidence *sequences*: dashboards and rollback guards look at these numbers continuously, and a
fixed-n interval checked over and over declares a difference far more often than alpha says. We use
the asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas, "Time-uniform
central limit theory and asymptotic confidence sequences" (arXiv:2103.06476, Ann. Statist. 2024):
Robbins' normal-mixture boundary for a standardized sum, with the sample variance plugged in. For n
observations with sample mean m and variance s^2, the two-sided (1 - alpha) sequence is

    m +- s * sqrt( 2 (n rho^2 + 1) / (n^2 rho^2) * log( sqrt(n rho^2 + 1) / alpha ) )

and it covers the true mean at every n simultaneously, asymptotically. rho sets where the boundary
is tightest: with x = n* rho^2 the width at n* is smallest when x = log(1 + x) + 2 log(1/alpha) (the
usual closed form, x = c + log(1 + c) with c = 2 log(1/alpha), is one step of this fixed point); we
solve it for ``TARGET_N`` = 5,000. Before that the boundary is deliberately wide (at n = 200 it is
~2.6 times the fixed-n 95% interval, at n* ~1.5 times), after it grows only like sqrt(log n).

The difference of two independent arms' means uses the same boundary on the summed variance
v = s_a^2 + s_b^2 at the effective size n_eff = v / (s_a^2/n_a + s_b^2/n_b) (n_eff = n when both arms
have n), i.e. a normal mixture in the intrinsic time 1/SE^2 of the difference. Its argument assumes
the split between the arms stays roughly fixed while the data come in, which a traffic policy with
fixed weights gives. Small samples: with n < 2 in an arm, or a zero sample variance (every value
equal, so the plug-in variance says nothing about the spread), intervals are unbounded and verdicts
inconclusive. Several arms or metrics are not corrected for multiplicity; alpha is per comparison.

Request ids are attributed through a bounded local table (``OutcomeBook.remember``); an id answered
by another replica, expired, or never seen counts as unattributed.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from gateway.errors import Code, GatewayError

INF = math.inf
MAX_ITEMS = 10_000  # outcomes per record() call
TARGET_N = 5_000  # sample size (per arm) at which the default boundary is tightest
METRIC_PATTERN = "[A-Za-z_][A-Za-z0-9_]{0,63}"
_METRIC_RE = re.compile(METRIC_PATTERN)
_REF_FIELDS = ("request_id", "key", "arm")
_FIELDS = frozenset((*_REF_FIELDS, "metric", "value"))
# A variance below this fraction of the second moment is float rounding of equal values, not spread.
_REL_VAR_FLOOR = 1e-9

Moments = tuple[float, float, float]  # (count, sum, sum of squares): what Prometheus counters hold


class OutcomeError(GatewayError, ValueError):
    """A bad outcomes batch; the message names the item and field (``outcomes[3].value: ...``)."""

    __slots__ = ()

    def __init__(self, message: str) -> None:
        super().__init__(Code.INVALID_ARGUMENT, message)


# --- statistics (pure functions of the additive moments) -------------------------------------------


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def rho_for(target_n: float, alpha: float) -> float:
    """The mixture scale rho whose boundary is narrowest at ``target_n`` observations."""
    _check_alpha(alpha)
    if not target_n > 0:
        raise ValueError(f"target_n must be > 0, got {target_n!r}")
    c = 2.0 * math.log(1.0 / alpha)
    x = c
    for _ in range(500):  # a contraction (slope 1/(1+x)): ~15 steps at alpha = 0.05
        nxt = c + math.log1p(x)
        if abs(nxt - x) <= 1e-12 * nxt:
            break
        x = nxt
    return math.sqrt(x / target_n)


@functools.lru_cache(maxsize=64)  # bounded: alpha may come from a query string
def _default_rho(alpha: float) -> float:
    return rho_for(TARGET_N, alpha)


def _rho(alpha: float, rho: float | None) -> float:
    if rho is None:
        return _default_rho(alpha)
    if not (rho > 0 and math.isfinite(rho)):
        raise ValueError(f"rho must be a finite number > 0, got {rho!r}")
    return rho


def mean_var(m: Moments) -> tuple[float, float]:
    """Sample mean and (unbiased) sample variance from (count, sum, sum of squares).

    Variance is ``INF`` for n < 2 or a non-finite result, 0.0 when the values are (up to rounding) equal.
    """
    n, s, ss = m
    if n < 1:
        return math.nan, INF
    mean = s / n
    if n < 2:
        return mean, INF
    var = (ss - s * mean) / (n - 1)
    if not math.isfinite(var):
        return mean, INF
    if var <= _REL_VAR_FLOOR * (ss / n):
        return mean, 0.0
    return mean, var


def _radius(n: float, var: float, alpha: float, rho: float) -> float:
    x = rho * rho * n
    return math.sqrt(var * 2.0 * (x + 1.0) / (n * x) * math.log(math.sqrt(x + 1.0) / alpha))


def confidence_sequence(
    n: float, mean: float, var: float, alpha: float, rho: float | None = None
) -> tuple[float, float]:
    """Always-valid (1 - alpha) interval for a mean after n observations (see the module docstring).

    ``var`` is the sample variance; ``rho`` defaults to the one tuned for ``TARGET_N``. Unbounded
    (``-inf, inf``) when n < 2 or the variance is zero or not finite.
    """
    _check_alpha(alpha)
    r = _rho(alpha, rho)
    if not (n >= 2 and var > 0 and math.isfinite(var) and math.isfinite(mean)):
        return -INF, INF
    h = _radius(n, var, alpha, r)
    return mean - h, mean + h


def diff_sequence(a: Moments, b: Moments, alpha: float, rho: float | None = None) -> tuple[float, float]:
    """Always-valid (1 - alpha) interval for mean(a) - mean(b), two independent arms' (count, sum, sumsq)."""
    _check_alpha(alpha)
    r = _rho(alpha, rho)
    if a[0] < 2 or b[0] < 2:
        return -INF, INF
    ma, va = mean_var(a)
    mb, vb = mean_var(b)
    se2 = va / a[0] + vb / b[0]
    if not (se2 > 0 and math.isfinite(se2)):  # both arms constant: no spread to go by
        return -INF, INF
    v = va + vb
    d = ma - mb
    h = _radius(v / se2, v, alpha, r)
    return d - h, d + h


def verdict(lo: float, hi: float) -> str:
    """Higher is better: "better" when the whole interval of arm - stable is above 0, "worse" below."""
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "inconclusive"


def _json_num(x: float) -> float | None:
    return x if math.isfinite(x) else None


def summarize(
    totals: Mapping[tuple[str, str], Moments],
    stable: str,
    alpha: float = 0.05,
    unattributed: int = 0,
    metrics: Iterable[str] = (),
) -> dict[str, Any]:
    """The report for (arm, metric) -> (count, sum, sumsq) totals: one book's, or a fleet's summed counters.

    JSON-ready: unbounded interval ends and undefined differences are ``None``. Arms without data for
    a metric are left out; ``metrics`` names metrics to list even when they have no data yet.
    """
    _check_alpha(alpha)
    by_metric: dict[str, dict[str, Moments]] = {m: {} for m in metrics}
    for (arm, metric), mom in totals.items():
        if mom[0] >= 1:
            by_metric.setdefault(metric, {})[arm] = mom
    out: dict[str, Any] = {}
    for metric in sorted(by_metric):
        per_arm = by_metric[metric]
        arms_out: dict[str, Any] = {}
        for arm in sorted(per_arm):
            mom = per_arm[arm]
            mean, var = mean_var(mom)
            lo, hi = confidence_sequence(mom[0], mean, var, alpha)
            arms_out[arm] = {"n": int(mom[0]), "mean": _json_num(mean), "ci": [_json_num(lo), _json_num(hi)]}
        vs: dict[str, Any] = {}
        base = per_arm.get(stable)
        for arm in sorted(per_arm):
            if arm == stable:
                continue
            if base is None:
                vs[arm] = {"diff": None, "ci": [None, None], "verdict": "inconclusive"}
                continue
            lo, hi = diff_sequence(per_arm[arm], base, alpha)
            diff = per_arm[arm][1] / per_arm[arm][0] - base[1] / base[0]
            vs[arm] = {
                "diff": _json_num(diff),
                "ci": [_json_num(lo), _json_num(hi)],
                "verdict": verdict(lo, hi),
            }
        out[metric] = {"arms": arms_out, "vs_stable": vs}
    return {"alpha": alpha, "stable": stable, "unattributed": unattributed, "metrics": out}


# --- the book --------------------------------------------------------------------------------------


class OutcomeBook:
    """One model's outcomes: attribution of reported outcomes to arms, and per-(arm, metric) totals.

    Not thread-safe (the gateway calls it from its event loop). Memory: the totals are bounded by
    arms x ``max_metrics``; the request-id table by ``max_ids`` entries. Measured with tracemalloc on
    CPython 3.11 (tests/test_outcomes.py): 127 B of table per entry when full (dict slot, deque slot,
    a (time, arm) tuple and its float), up to ~165 B while ids churn through (dict resize slack), plus
    the id string it keeps alive (85 B for a 36-character uuid): 21-25 MB for the default 100,000 ids. Entries older than ``ttl_s`` (default 1 h) are ignored, and dropped from the
    front of the table on each ``record`` call.
    """

    def __init__(
        self,
        max_ids: int = 100_000,
        ttl_s: float = 3600.0,
        max_metrics: int = 16,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_ids < 0 or not ttl_s >= 0 or max_metrics < 1:
            raise ValueError("need max_ids >= 0, ttl_s >= 0 and max_metrics >= 1")
        self.max_ids = max_ids
        self.ttl_s = ttl_s
        self.max_metrics = max_metrics
        self._clock = clock
        self._ids: dict[str, tuple[float, str]] = {}
        self._order: deque[str] = deque()  # each id in _ids once, in first-remembered order
        self._metrics: list[str] = []  # distinct metric names, in order of arrival
        self._metric_set: set[str] = set()
        self._totals: dict[tuple[str, str], list[float]] = {}
        self.unattributed = 0

    # Hot path: once per policy-routed response. A dict insert, a deque append, at most one eviction.
    def remember(self, request_id: str, arm: str) -> None:
        """Note which arm answered ``request_id``, so a later outcome for it can be attributed here."""
        ids = self._ids
        if request_id not in ids:
            order = self._order
            if len(order) >= self.max_ids:
                if not order:  # max_ids == 0: remember nothing
                    return
                del ids[order.popleft()]
            order.append(request_id)
        ids[request_id] = (self._clock(), arm)

    @property
    def ids_held(self) -> int:
        """Entries in the request-id table (<= ``max_ids``)."""
        return len(self._ids)

    @property
    def metrics(self) -> list[str]:
        """Distinct metric names seen so far, in order of arrival."""
        return list(self._metrics)

    def _expire(self, now: float) -> None:
        ids, order, cutoff = self._ids, self._order, now - self.ttl_s
        # An id remembered twice keeps its first place with a fresh time; it stops the sweep early,
        # which only delays dropping what is behind it (lookups check the age anyway).
        while order and ids[order[0]][0] < cutoff:
            del ids[order.popleft()]

    def _parse(self, i: int, item: Any, new_metrics: list[str]) -> tuple[str, str, str, float]:
        if not isinstance(item, Mapping):
            raise OutcomeError(f"outcomes[{i}]: must be an object")
        for name in item:
            if name not in _FIELDS:
                shown = repr(name) if len(repr(name)) <= 40 else repr(name)[:37] + "..."
                raise OutcomeError(
                    f"outcomes[{i}]: unknown field {shown} (fields: request_id | key | arm, metric, value)"
                )
        refs = [f for f in _REF_FIELDS if f in item]
        if len(refs) != 1:
            raise OutcomeError(f"outcomes[{i}]: needs exactly one of request_id, key, arm (got {len(refs)})")
        how = refs[0]
        ref = item[how]
        if not isinstance(ref, str):
            raise OutcomeError(f"outcomes[{i}].{how}: must be a string")
        metric = item.get("metric")
        if not isinstance(metric, str) or _METRIC_RE.fullmatch(metric) is None:
            raise OutcomeError(f"outcomes[{i}].metric: required, a name matching {METRIC_PATTERN}")
        value = item.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OutcomeError(f"outcomes[{i}].value: must be a finite number")
        try:
            fvalue = float(value)
        except OverflowError:  # an int beyond float range
            fvalue = INF
        if not math.isfinite(fvalue):
            raise OutcomeError(f"outcomes[{i}].value: must be a finite number")
        if metric not in self._metric_set and metric not in new_metrics:
            if len(self._metrics) + len(new_metrics) >= self.max_metrics:
                raise OutcomeError(
                    f"outcomes[{i}].metric: {metric!r} would be a new metric; "
                    f"at most {self.max_metrics} distinct metrics per model ({', '.join(self._metrics)})"
                )
            new_metrics.append(metric)
        return how, ref, metric, fvalue

    def record(
        self,
        items: Sequence[Mapping[str, Any]],
        arms: Collection[str],
        arm_of_key: Callable[[str], str | None],
    ) -> dict[str, int]:
        """Attribute and add a batch of outcomes; all or nothing.

        Every item is validated (and attributed) before anything changes, so a bad item anywhere, or
        an exception from ``arm_of_key``, leaves the book as it was. ``arms`` are the model's arms now:
        an outcome whose arm (from the token, the key, or the id table) is not one of them counts as
        unattributed, as do unknown or expired request ids and keys ``arm_of_key`` maps to None.
        """
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise OutcomeError("outcomes: must be a list")
        if len(items) > MAX_ITEMS:
            raise OutcomeError(f"outcomes: at most {MAX_ITEMS} items per call, got {len(items)}")
        new_metrics: list[str] = []
        parsed = [self._parse(i, item, new_metrics) for i, item in enumerate(items)]

        now = self._clock()
        self._expire(now)
        ids, cutoff = self._ids, now - self.ttl_s
        resolved: list[tuple[str | None, str, float]] = []
        for how, ref, metric, value in parsed:
            arm: str | None
            if how == "arm":
                arm = ref
            elif how == "key":
                arm = arm_of_key(ref)
            else:
                entry = ids.get(ref)
                arm = entry[1] if entry is not None and entry[0] >= cutoff else None
            resolved.append((arm if arm is not None and arm in arms else None, metric, value))

        # Apply: nothing below can fail.
        for m in new_metrics:
            self._metrics.append(m)
            self._metric_set.add(m)
        totals = self._totals
        accepted = 0
        for arm, metric, value in resolved:
            if arm is None:
                continue
            acc = totals.get((arm, metric))
            if acc is None:
                acc = totals[(arm, metric)] = [0, 0.0, 0.0]
            acc[0] += 1
            acc[1] += value
            acc[2] += value * value
            accepted += 1
        unattributed = len(resolved) - accepted
        self.unattributed += unattributed
        return {"accepted": accepted, "unattributed": unattributed}

    def totals(self) -> dict[tuple[str, str], tuple[int, float, float]]:
        """(arm, metric) -> (count, sum, sum of squares): additive, the numbers to export as counters."""
        return {k: (int(v[0]), v[1], v[2]) for k, v in self._totals.items()}

    def report(self, stable: str, alpha: float = 0.05) -> dict[str, Any]:
        """Per metric: each arm's n, mean and always-valid interval, and each arm against ``stable``."""
        return summarize(self._totals_view(), stable, alpha, self.unattributed, self._metrics)

    def _totals_view(self) -> dict[tuple[str, str], Moments]:
        return {k: (v[0], v[1], v[2]) for k, v in self._totals.items()}

    def significantly_below(self, metric: str, arm: str, stable: str, max_drop: float, alpha: float) -> bool:
        """True when, with confidence 1 - alpha, mean(arm) - mean(stable) < -max_drop.

        For a rollback guard ("conversion dropped by more than max_drop"): the upper end of the
        always-valid interval for the difference is below -max_drop, so polling it is safe. ``max_drop``
        is in the metric's units (0.01 = one percentage point of a 0/1 rate). False without data.
        """
        _check_alpha(alpha)
        if not math.isfinite(max_drop):
            raise ValueError(f"max_drop must be finite, got {max_drop!r}")
        a = self._totals.get((arm, metric))
        b = self._totals.get((stable, metric))
        if a is None or b is None:
            return False
        _, hi = diff_sequence((a[0], a[1], a[2]), (b[0], b[1], b[2]), alpha)
        return hi < -max_drop
