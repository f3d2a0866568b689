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
runs; any breach is a breach, else a check short of data makes it "insufficient", else "ok".
Every check is an exact one-sided test at ``alpha``:

* Errors: a binomial test says the canary's error rate is above ``max_error_rate`` and, when the
  stable arm has ``min_requests`` in the same window, Fisher's exact test says it is above
  stable's. So a bound never trips on a handful (200 requests against a 1 % bound take 11
  errors at the default ``alpha``), and a canary no worse than stable during an incident that
  fails both is not blamed; without a comparable stable arm the bound alone decides.
* p99 over ``max_p99_ms``: "p99 above B" is "more than 1 % of requests slower than B", so this
  is the error check on the canary's timed requests in buckets whose lower edge is at least B,
  against stable's above the same edge. Latencies are known only to bucket edges: a bound
  between edges acts as the next edge up (300 ms is judged at 500 ms), which may let a slightly
  slow canary pass but never aborts a good one; put bounds on edges. The p99 quoted in reasons
  is the upper edge of its bucket.
* p99 over ``max_p99_ratio`` x stable's p99 (``min_requests`` timed requests on both arms): the
  same test with B = ratio x the upper edge of stable's p99 bucket, so identical arms never trip
  it (a ratio below 1 is refused).
* Shadow disagreement: ``compared >= min_requests`` and a binomial test says the disagreement
  rate is above ``max_disagreement``.

Exact tests, not normal approximations: a window holds few errors, and a two-proportion z-test
on half a dozen expected errors fires three to six times as often as its ``alpha`` says.

Repeated looks. The glue judges every tick over a sliding window, so the same evidence is tested
again and again and a per-look ``alpha`` is no per-rollout one. Simulated per-second judging of
60 s windows, both arms failing 2 % (a shared incident over a 1 % bound), gave false breaches
per hour: 0.4-0.7 at ``alpha`` 1e-3, 0.05-0.1 at 1e-4, 0.01 or fewer at 1e-5; hence the
default 1e-5 (tests/test_guard.py replays this). It costs little where it matters: a canary
at 5 requests/s failing half of them trips as soon as the window holds ``min_requests`` (40 s),
a marginal one (3 % against stable's 0.5 %) after about 3 minutes instead of 1 (medians).

Why not a sequential test (SPRT, always-valid p-values, CUSUM)? They bound the error over
unlimited looks, the problem above, but keep per-arm state across ticks and accumulate evidence:
a canary that degrades after an hour (a leak, a shifted traffic mix) is diluted by its good past,
and the sliding window that fixes this voids their guarantee. A window judge is stateless (the
same numbers give the same verdict, in the admin API as in the loop), compares with stable over
the same window, which cancels what changes for both arms (load, input mix, a shared
dependency), and matches how operators state bounds ("1 % over 60 s"); a small ``alpha`` pays
for the repeated looks.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from gateway.observe.stats import LATENCY_BUCKETS

# Bucket i covers (LOWER[i], UPPER[i]] seconds; the last is +Inf.
_UPPER: tuple[float, ...] = (*LATENCY_BUCKETS, math.inf)
_LOWER: tuple[float, ...] = (0.0, *LATENCY_BUCKETS)
_NBUCKETS = len(_UPPER)
_P99_TAIL = 0.01  # "p99 above B" == more than this fraction slower than B


def _check_buckets(buckets: tuple[int, ...]) -> None:
    if len(buckets) not in (0, _NBUCKETS):
        raise ValueError(f"latency buckets: {len(buckets)} counts, expected {_NBUCKETS} "
                         "(LATENCY_BUCKETS, then +Inf) or none")


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """One model's guard settings; a bound of 0 turns its check off."""

    window_s: float = 60.0
    min_requests: int = 200  # no verdict on fewer (tools that judge on a handful abort good canaries)
    max_error_rate: float = 0.01  # bound on the canary's error rate in the window (0: off)
    max_p99_ms: float = 0.0  # bound on the canary's p99 (0: off)
    max_p99_ratio: float = 2.0  # canary p99 / stable p99 (0: off)
    max_disagreement: float = 0.0  # bound on the shadow's disagreement rate (0: off)
    alpha: float = 1e-5  # one-sided significance of every test, per look (see "Repeated looks")

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
        if not isinstance(self.buckets, tuple):  # Totals.hists holds lists
            object.__setattr__(self, "buckets", tuple(self.buckets))
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
        """Add a tick's sample; one with any counter lower than the last (a reset) or an earlier
        ``now`` starts the arm's window over."""
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


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _tail(log_first: float, ratio: Callable[[int], float], j: int, last: int, alpha: float) -> float:
    """Sum of a unimodal pmf over ``j..last`` from log pmf(j) and pmf(i+1)/pmf(i) = ratio(i). Stops
    once the sum reaches ``alpha`` (the verdict is known) or the terms stop counting."""
    term = math.exp(log_first) if log_first > -745.0 else 0.0
    total = term
    while j < last and total < alpha:
        term *= ratio(j)
        j += 1
        total += term
        if term <= total * 1e-12:
            break
    return total


def _binom_sf(k: int, n: int, p: float, alpha: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), 0 < p < 1: exact below ``alpha``, else some value >= it."""
    k = min(max(k, 0), n)
    if k <= n * p:
        return 1.0  # at or below the mean: nowhere near significant (alpha < 0.5)
    odds = p / (1 - p)
    return _tail(_log_comb(n, k) + k * math.log(p) + (n - k) * math.log1p(-p),
                 lambda i: (n - i) / (i + 1) * odds, k, n, alpha)


def _fisher_sf(k1: int, n1: int, k2: int, n2: int, alpha: float) -> float:
    """One-sided Fisher exact test of k1/n1 > k2/n2 (P(X >= k1), X hypergeometric given k1 + k2)."""
    k1, k2 = min(max(k1, 0), n1), min(max(k2, 0), n2)
    n, k = n1 + n2, k1 + k2
    if k1 * n <= k * n1:
        return 1.0  # canary's rate not above the pooled one
    return _tail(_log_comb(k, k1) + _log_comb(n - k, n1 - k1) - _log_comb(n, n1),
                 lambda i: (k - i) * (n1 - i) / ((i + 1) * (n2 - k + i + 1)), k1, min(k, n1), alpha)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _ms(s: float) -> str:
    return "+Inf" if math.isinf(s) else f"{s * 1e3:g} ms"


def _over(what: str, k: int, n: int, bound: float, alpha: float) -> str | None:
    """A reason when k of n is significantly above the rate ``bound``, else None."""
    p = _binom_sf(k, n, bound, alpha)
    return f"{what}: {_pct(k / n)} ({k}/{n}), above {_pct(bound)} (p = {p:.1e})" if p < alpha else None


def _worse(k: int, n: int, ks: int, ns: int, alpha: float) -> str | None:
    """The comparison's words when k of n is significantly above stable's ks of ns, else None."""
    p = _fisher_sf(k, n, ks, ns, alpha)
    return f"stable {_pct(ks / ns)} ({ks}/{ns}; p = {p:.1e})" if p < alpha else None


def judge(cfg: GuardConfig, canary: Window, stable: Window | None,
          disagreement: tuple[int, int] | None = None) -> Verdict:
    """The canary's verdict over one window (the rule: the module docstring). ``stable``: the
    stable arm over the same window; ``disagreement``: the shadow's (compared, disagreed) in it."""
    mn, alpha = cfg.min_requests, cfg.alpha
    n = canary.requests
    if n < mn:
        return Verdict("insufficient", (f"canary answered {n} requests in the window, {mn} needed",))
    breaches: list[str] = []
    missing: list[str] = []

    if cfg.max_error_rate > 0:
        over = _over("error rate", canary.errors, n, cfg.max_error_rate, alpha)
        if over is not None:
            if stable is None or stable.requests < mn:
                ns = 0 if stable is None else stable.requests
                breaches.append(f"{over}; stable answered {ns} requests, too few to compare")
            elif (vs := _worse(canary.errors, n, stable.errors, stable.requests, alpha)) is not None:
                breaches.append(f"{over}, worse than {vs}")

    st = stable if stable is not None and stable.timed() >= mn else None
    if cfg.max_p99_ms > 0 or (cfg.max_p99_ratio > 0 and st is not None):
        nt = canary.timed()
        if nt < mn:
            missing.append(f"canary has {nt} timed requests in the window, {mn} needed for p99")
        else:
            p99 = f"p99 <= {_ms(canary.p99_s() or 0.0)}"
            if cfg.max_p99_ms > 0:
                k, edge = canary.slower_than(cfg.max_p99_ms / 1e3)
                over = _over(f"p99 above {cfg.max_p99_ms:g} ms ({p99}); slower than {_ms(edge)}",
                             k, nt, _P99_TAIL, alpha)
                if over is not None:
                    if st is None:
                        breaches.append(f"{over}; stable has too few timed requests to compare")
                    elif (vs := _worse(k, nt, st.slower_than(edge)[0], st.timed(), alpha)) is not None:
                        breaches.append(f"{over}, worse than {vs}")
            stable_p99 = st.p99_s() if st is not None else None
            if cfg.max_p99_ratio > 0 and stable_p99 is not None and math.isfinite(stable_p99):
                k, edge = canary.slower_than(cfg.max_p99_ratio * stable_p99)
                over = _over(f"p99 above {cfg.max_p99_ratio:g}x stable's p99 <= {_ms(stable_p99)} ({p99}); "
                             f"slower than {_ms(edge)}", k, nt, _P99_TAIL, alpha)
                if over is not None:
                    breaches.append(over)

    if cfg.max_disagreement > 0 and disagreement is not None:
        compared, disagreed = disagreement
        if compared < mn:
            missing.append(f"shadow compared {compared} requests in the window, {mn} needed")
        else:
            over = _over("shadow disagreement", disagreed, compared, cfg.max_disagreement, alpha)
            if over is not None:
                breaches.append(over)

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
        if not s or any(not 0 < x <= 100 for x in s) or any(b <= a for a, b in pairwise(s)) or s[-1] != 100:
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
