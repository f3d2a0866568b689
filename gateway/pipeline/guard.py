"""Rollback guards and stepwise promotion for canary versions: the rules, without I/O.

Data. Once per tick the glue reads each arm's *cumulative* counters from the version statistics
into a ``Sample``: requests answered (successes plus the server-side failures it counts),
those failures, and the ``"total"`` latency histogram's per-bucket counts (bounds
``LATENCY_BUCKETS`` in seconds, Prometheus ``le`` semantics, the last count is the +Inf
bucket). Only successes are timed, so the latency sample is the histogram's count, not
``requests``. ``WindowTracker`` keeps the samples of the last ``window_s`` seconds per arm; a
window is the newest sample minus the oldest one still inside. A counter that goes down means
the version was reloaded (or one worker of several restarted): the window starts over at that
sample and its counts are dropped, because a partly reset sum says nothing about when they
happened. A shadow's ``(compared, disagreed)`` counters fit the same tracker as
``Sample(compared, disagreed, ())``.

Rule. No verdict ("insufficient") while the canary has fewer than ``min_requests`` requests in
the window: tools that judge on a handful abort good canaries. With enough, each enabled check
runs; any breach is a breach, else any check short of data is "insufficient", else "ok".
Every bound on a rate is judged one-sided at ``alpha``: the bound is exceeded only when the
Wilson score lower confidence bound of the observed rate exceeds it, so 3 errors in 200
requests do not break a 1 % bound (7 or more do, at the default ``alpha``), and a long window
converges to the plain comparison.

* Errors: the canary's error rate is above ``max_error_rate`` (as above) and, when the stable
  arm has ``min_requests`` in the same window, a one-sided pooled two-proportion z-test says the
  canary's rate exceeds stable's at ``alpha``. A canary no worse than stable during an incident
  that fails both is not blamed; without a comparable stable arm the bound alone decides.
* p99 over ``max_p99_ms``: "p99 above B" is "more than 1 % of requests slower than B", so the
  check is the error check on the fraction of the canary's latency samples in buckets whose
  lower edge is at least B (and, against stable, the same z-test on stable's fraction slower
  than B). Latencies are known only to bucket edges: a bound between edges acts as the next
  edge up (300 ms judges against 500 ms), which may let a slow canary pass, never abort a good
  one; put bounds on edges. The p99 shown in reasons is the upper edge of its bucket.
* p99 over ``max_p99_ratio`` x stable's p99 (needs ``min_requests`` latency samples on both
  arms): the same check with B = ratio x the upper edge of stable's p99 bucket. With identical
  windows on both arms this can never trip (ratio >= 1 is enforced).
* Shadow disagreement: ``compared >= min_requests`` and the disagreement rate above
  ``max_disagreement`` (Wilson, as above).

Why not a sequential test (SPRT, always-valid p-values)? Those bound the error over unlimited
looks at *accumulating* evidence; a guard must judge recent behaviour, and a canary that
degrades after an hour (a leak, a shifted traffic mix) is diluted by its good past in a
cumulative test, while the sliding window that fixes this voids the sequential guarantee. The
comparison with stable over the same window also cancels what changes for both arms (load,
input mix, a shared dependency failing), which a test against a fixed baseline would not.
Repeated looks are paid for with a small ``alpha`` instead: looks within one window are highly
correlated, so false alarms accrue roughly at ``alpha`` per window length (with 60 s windows
and 0.001, about one spurious test per 17 hours of identical arms), and a spurious z-test alone
does not breach: the rate must be confidently over the bound too.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

from gateway.observe.stats import LATENCY_BUCKETS

# Bucket i covers (LOWER[i], UPPER[i]] seconds; the last is +Inf.
_UPPER: tuple[float, ...] = (*LATENCY_BUCKETS, math.inf)
_LOWER: tuple[float, ...] = (0.0, *LATENCY_BUCKETS)
_NBUCKETS = len(_UPPER)
_P99_TAIL = 0.01  # "p99 above B" == more than this fraction slower than B


def _check_buckets(buckets: tuple[int, ...]) -> None:
    if len(buckets) not in (0, _NBUCKETS):
        raise ValueError(f"latency buckets: {len(buckets)} counts, expected {_NBUCKETS} (LATENCY_BUCKETS + +Inf) or 0")


@dataclass(frozen=True, slots=True)
class GuardConfig:
    window_s: float = 60.0
    min_requests: int = 200  # no verdict on fewer (tools that judge on a handful abort good canaries)
    max_error_rate: float = 0.01  # bound on the canary's error rate in the window (0: off)
    max_p99_ms: float = 0.0  # bound on the canary's p99 (0: off)
    max_p99_ratio: float = 2.0  # canary p99 / stable p99 (0: off)
    max_disagreement: float = 0.0  # bound on the shadow's disagreement rate (0: off)
    alpha: float = 0.001  # one-sided significance of every test

    def __post_init__(self) -> None:
        if not self.window_s > 0:
            raise ValueError("window_s must be > 0")
        if self.min_requests < 1:
            raise ValueError("min_requests must be >= 1")
        for name in ("max_error_rate", "max_disagreement"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1)")
        if not self.max_p99_ms >= 0:
            raise ValueError("max_p99_ms must be >= 0")
        if not (self.max_p99_ratio == 0 or self.max_p99_ratio >= 1):
            raise ValueError("max_p99_ratio must be 0 (off) or >= 1")
        if not 0.0 < self.alpha < 0.5:
            raise ValueError("alpha must be in (0, 0.5)")


@dataclass(frozen=True, slots=True)
class Sample:
    """One arm's cumulative counters at one tick. ``requests`` includes the ``errors``."""

    requests: int
    errors: int
    buckets: tuple[int, ...]  # per-bucket counts (not cumulative), +Inf last; () when not timed

    def __post_init__(self) -> None:
        _check_buckets(self.buckets)


@dataclass(frozen=True, slots=True)
class Window:
    """What one arm did between two samples."""

    requests: int
    errors: int
    buckets: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_buckets(self.buckets)

    def error_rate(self) -> float:
        return min(1.0, self.errors / self.requests) if self.requests > 0 else 0.0

    def timed(self) -> int:
        """Requests in the latency histogram (successes)."""
        return sum(self.buckets)

    def p99_bucket(self) -> int | None:
        """Index of the bucket holding the 99th percentile (nearest rank), None when nothing was timed."""
        n = sum(self.buckets)
        if n <= 0:
            return None
        rank = -(-99 * n // 100)  # ceil(0.99 n) in integers
        seen = 0
        for i, c in enumerate(self.buckets):
            seen += c
            if seen >= rank:
                return i
        return len(self.buckets) - 1  # unreachable with non-negative counts

    def p99_s(self) -> float | None:
        """Upper edge (seconds) of the bucket holding the 99th percentile: ``math.inf`` when it is
        the +Inf bucket (slower than the last edge), None for an empty window."""
        i = self.p99_bucket()
        return None if i is None else _UPPER[i]

    def slower_than(self, bound_s: float) -> tuple[int, float]:
        """Requests certainly slower than ``bound_s`` (in buckets whose lower edge is >= it), and
        that edge (``math.inf`` when no bucket qualifies)."""
        for i, lo in enumerate(_LOWER):
            if lo >= bound_s and i > 0:
                return sum(self.buckets[i:]), lo
        return 0, math.inf


_EMPTY = Window(0, 0, ())


def _decreased(old: Sample, new: Sample) -> bool:
    if new.requests < old.requests or new.errors < old.errors or len(new.buckets) != len(old.buckets):
        return True
    return any(b < a for a, b in zip(old.buckets, new.buckets, strict=True))


class WindowTracker:
    """Cumulative samples per arm over the last ``window_s`` seconds (``now`` never decreases)."""

    __slots__ = ("window_s", "_arms")

    def __init__(self, window_s: float) -> None:
        if not window_s > 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        self._arms: dict[str, deque[tuple[float, Sample]]] = {}

    def push(self, arm: str, now: float, sample: Sample) -> None:
        q = self._arms.get(arm)
        if q is None:
            q = self._arms[arm] = deque()
        elif q and (now < q[-1][0] or _decreased(q[-1][1], sample)):
            q.clear()  # reset (or a clock going back): start the window over here
        q.append((now, sample))
        self._prune(q, now)

    def window(self, arm: str, now: float) -> Window:
        q = self._arms.get(arm)
        if not q:
            return _EMPTY
        self._prune(q, now)
        if len(q) < 2:
            return _EMPTY
        old, new = q[0][1], q[-1][1]
        return Window(new.requests - old.requests, new.errors - old.errors,
                      tuple(b - a for a, b in zip(old.buckets, new.buckets, strict=True)))

    def forget(self, arm: str) -> None:
        self._arms.pop(arm, None)

    def _prune(self, q: deque[tuple[float, Sample]], now: float) -> None:
        start = now - self.window_s
        while q and q[0][0] < start:
            q.popleft()


@dataclass(frozen=True, slots=True)
class Verdict:
    state: str  # "insufficient" | "ok" | "breach"
    reasons: tuple[str, ...] = ()  # why (breach: the breaches; insufficient: what is missing)


@lru_cache(maxsize=8)
def _z_crit(alpha: float) -> float:
    return NormalDist().inv_cdf(1.0 - alpha)


def _wilson_lower(k: int, n: int, z: float) -> float:
    """Wilson score lower confidence bound of a proportion k/n (one-sided, quantile z)."""
    if n <= 0:
        return 0.0
    k = min(max(k, 0), n)
    p = k / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z2 / n))


def _z_two(k1: int, n1: int, k2: int, n2: int) -> float:
    """Pooled two-proportion z statistic of k1/n1 > k2/n2 (0 when the pooled rate is 0 or 1)."""
    k1, k2 = min(max(k1, 0), n1), min(max(k2, 0), n2)
    pooled = (k1 + k2) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    return (k1 / n1 - k2 / n2) / math.sqrt(var) if var > 0 else 0.0


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _ms(s: float) -> str:
    return "+Inf" if math.isinf(s) else f"{s * 1e3:g} ms"


def _rate_over(what: str, k: int, n: int, bound: float, z: float, alpha: float) -> str | None:
    """A reason when k/n is confidently above ``bound``, else None."""
    lo = _wilson_lower(k, n, z)
    if lo <= bound:
        return None
    return (f"{what} {_pct(k / n)} ({k}/{n}) above the {_pct(bound)} bound "
            f"(>= {_pct(lo)} at {100 * (1 - alpha):g}% confidence)")


def _worse(k: int, n: int, ks: int, ns: int, z: float) -> tuple[bool, str]:
    zs = _z_two(k, n, ks, ns)
    return zs > z, f"stable {_pct(ks / ns)} ({ks}/{ns}), z = {zs:.2f} vs {z:.2f}"


def judge(cfg: GuardConfig, canary: Window, stable: Window | None,
          disagreement: tuple[int, int] | None = None) -> Verdict:
    """The canary's verdict over one window (see the module docstring for the rule).
    ``disagreement``: the shadow's (compared, disagreed) in the same window."""
    mn = cfg.min_requests
    n = canary.requests
    if n < mn:
        return Verdict("insufficient", (f"canary answered {n} requests in the window, {mn} needed",))
    z = _z_crit(cfg.alpha)
    breaches: list[str] = []
    missing: list[str] = []
    stable_n = stable.requests if stable is not None else 0

    if cfg.max_error_rate > 0:
        reason = _rate_over("error rate", canary.errors, n, cfg.max_error_rate, z, cfg.alpha)
        if reason is not None:
            if stable is not None and stable_n >= mn:
                worse, vs = _worse(canary.errors, n, stable.errors, stable_n, z)
                if worse:
                    breaches.append(f"{reason}, worse than {vs}")
            else:
                breaches.append(f"{reason}; stable has {stable_n} requests in the window, too few to compare")

    if cfg.max_p99_ms > 0 or cfg.max_p99_ratio > 0:
        nt = canary.timed()
        if nt < mn:
            missing.append(f"canary has {nt} timed requests in the window, {mn} needed for p99")
        else:
            p99 = _ms(canary.p99_s() or 0.0)
            st = stable if stable is not None and stable.timed() >= mn else None
            if cfg.max_p99_ms > 0:
                k, edge = canary.slower_than(cfg.max_p99_ms / 1e3)
                reason = _rate_over(f"requests slower than {_ms(edge)} (the {cfg.max_p99_ms:g} ms p99 bound's "
                                    f"bucket edge; p99 <= {p99})", k, nt, _P99_TAIL, z, cfg.alpha)
                if reason is not None:
                    if st is not None:
                        ks, _ = st.slower_than(cfg.max_p99_ms / 1e3)
                        worse, vs = _worse(k, nt, ks, st.timed(), z)
                        if worse:
                            breaches.append(f"{reason}, worse than {vs}")
                    else:
                        breaches.append(f"{reason}; stable has too few timed requests to compare")
            if cfg.max_p99_ratio > 0 and st is not None:
                stable_p99 = st.p99_s() or 0.0
                if math.isfinite(stable_p99):
                    k, edge = canary.slower_than(cfg.max_p99_ratio * stable_p99)
                    reason = _rate_over(f"requests slower than {_ms(edge)} (>= {cfg.max_p99_ratio:g}x stable's "
                                        f"p99 <= {_ms(stable_p99)}; canary p99 <= {p99})", k, nt, _P99_TAIL,
                                        z, cfg.alpha)
                    if reason is not None:
                        breaches.append(reason)

    if cfg.max_disagreement > 0 and disagreement is not None:
        compared, disagreed = disagreement
        if compared < mn:
            missing.append(f"shadow compared {compared} requests in the window, {mn} needed")
        else:
            reason = _rate_over("shadow disagreement", disagreed, compared, cfg.max_disagreement, z, cfg.alpha)
            if reason is not None:
                breaches.append(reason)

    if breaches:
        return Verdict("breach", tuple(breaches))
    if missing:
        return Verdict("insufficient", tuple(missing))
    return Verdict("ok")


class Rollout:
    """Stepwise promotion: the canary's weight (percent) climbs ``steps`` one at a time, at most
    once per ``step_interval_s`` and only on an "ok" verdict ("insufficient" holds it). Rolling
    back on a breach is the caller's; ``done`` once the last step (100) is reached."""

    __slots__ = ("steps", "step_interval_s", "_i", "_since")

    def __init__(self, steps: Sequence[float], step_interval_s: float, start: float) -> None:
        s = tuple(float(x) for x in steps)
        if not s or any(not 0 < x <= 100 for x in s) or any(b <= a for a, b in zip(s, s[1:])) or s[-1] != 100:
            raise ValueError(f"steps must increase within (0, 100] and end at 100, got {list(steps)}")
        if not step_interval_s >= 0:
            raise ValueError("step_interval_s must be >= 0")
        self.steps = s
        self.step_interval_s = step_interval_s
        self._i = 0
        self._since = start

    def weight(self) -> float:
        return self.steps[self._i]

    @property
    def done(self) -> bool:
        return self._i == len(self.steps) - 1

    def advance(self, now: float, verdict: Verdict) -> float | None:
        """The new weight when this call steps, else None."""
        if self.done or verdict.state != "ok" or now - self._since < self.step_interval_s:
            return None
        self._i += 1
        self._since = now
        return self.steps[self._i]
