"""How a shadow version's answers compare with the primary's, over every mirrored request.

A shadow's answer is never returned; it is compared with the primary's and counted here, once
per mirrored request, with a few vectorized numpy operations per output (identical outputs, the
common case, cost one elementwise comparison).

Agreement is what a client would notice: for classifier-shaped outputs (floating point, at
least 2-D, more than one class in the last dimension) the per-row argmax must be equal, noise in
the scores is not a disagreement; other floating point outputs must agree within
``atol + rtol * |primary|`` elementwise (NaN matches NaN, not a number); integers and booleans
exactly; anything else (BYTES as object or ``S`` arrays) by equality. Every output the primary
returned must be in the shadow's answer with the same shape: a shadow that drops an output
would break the clients that read it once promoted; outputs only the shadow has are ignored
(a new version may add some). ``within_tolerance`` counts requests whose numeric outputs were all
within the tolerance (the stricter view for classifiers). ``max_rel_diff`` is taken where the
primary's value is non-zero and finite; a difference from a zero shows in ``max_abs_diff``. A
comparison never raises: whatever cannot be compared counts as a disagreement.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

_NUMERIC = frozenset("biufc")  # bool, signed, unsigned, float, complex
_EXACT = frozenset("biu")
_MAX_ERROR_TEXT = 500


def _equal(p: np.ndarray, s: np.ndarray) -> bool:
    """Elementwise equality of arrays of any dtype (object arrays of bytes, strings, ...)."""
    try:
        eq = p == s
        if isinstance(eq, np.ndarray) and eq.dtype == np.bool_ and eq.shape == p.shape:
            return bool(eq.all())
    except Exception:  # odd element types: fall back to Python equality
        pass
    return bool(p.tolist() == s.tolist())


class ShadowComparison:
    """Cumulative comparison counters of one shadow version (loop thread only)."""

    __slots__ = ("atol", "rtol", "mirrored", "compared", "agreed", "within_tolerance", "max_abs_diff",
                 "max_rel_diff", "latency_diff_s", "shadow_errors", "primary_errors", "last_shadow_error",
                 "shed")

    def __init__(self, atol: float = 1e-5, rtol: float = 1e-3) -> None:
        if not (atol >= 0 and rtol >= 0):
            raise ValueError("atol and rtol must be >= 0")
        self.atol = float(atol)
        self.rtol = float(rtol)
        self.mirrored = 0  # record() calls
        self.compared = 0  # both answered
        self.agreed = 0
        self.within_tolerance = 0
        self.max_abs_diff = 0.0
        self.max_rel_diff = 0.0
        self.latency_diff_s = 0.0  # sum of shadow - primary over compared requests
        self.shadow_errors = 0
        self.primary_errors = 0
        self.last_shadow_error: str | None = None
        self.shed = 0  # mirror copies skipped under load (incremented by the caller)

    def record(self, primary: Mapping[str, np.ndarray] | None, shadow: Mapping[str, np.ndarray] | None,
               primary_s: float, shadow_s: float, shadow_error: str | None = None) -> None:
        """One mirrored request: each side's outputs (None: it failed) and latency in seconds."""
        self.mirrored += 1
        shadow_failed = shadow is None or shadow_error is not None
        if primary is None:
            self.primary_errors += 1
        if shadow_failed:
            self.shadow_errors += 1
            self.last_shadow_error = (shadow_error or "no outputs")[:_MAX_ERROR_TEXT]
        if primary is None or shadow is None or shadow_failed:
            return
        self.compared += 1
        self.latency_diff_s += shadow_s - primary_s
        agree = within = True
        for name, p in primary.items():
            s = shadow.get(name)
            if s is None:
                agree = within = False
                continue
            try:
                a, w = self._compare(np.asarray(p), np.asarray(s))
            except Exception:  # a comparison must never fail the request path: count it as different
                a = w = False
            agree = agree and a
            within = within and w
        self.agreed += agree
        self.within_tolerance += within

    def _compare(self, p: np.ndarray, s: np.ndarray) -> tuple[bool, bool]:
        """(agree, within tolerance) of one output; updates the max differences."""
        if p.shape != s.shape:
            return False, False
        kp, ks = p.dtype.kind, s.dtype.kind
        if kp not in _NUMERIC or ks not in _NUMERIC:
            eq = _equal(p, s)
            return eq, eq
        if p.size == 0:
            return True, True
        eq = p == s
        if eq.all():
            return True, True
        # At least float32 (float64 for integers): no float16 overflow, no integer wrap-around, and
        # float32 outputs are not copied. In place where possible: large temporaries are the cost.
        ct = np.result_type(p.dtype, s.dtype, np.float32)
        a, b = p.astype(ct, copy=False), s.astype(ct, copy=False)
        with np.errstate(all="ignore"):
            diff = np.subtract(a, b)
            diff = np.abs(diff, out=diff) if diff.dtype.kind == "f" else np.abs(diff)
            same = eq
            nan = np.isnan(diff)  # NaN on either side, or inf - inf
            if nan.any():
                same = eq | (np.isnan(a) & np.isnan(b))
                np.copyto(diff, np.inf, where=nan & ~same)  # NaN against a number
                np.copyto(diff, 0.0, where=same)  # NaN against NaN, inf against the same inf
            mag = np.abs(a, out=a) if a is not p and a.dtype.kind == "f" else np.abs(a)
            work = np.multiply(mag, self.rtol)
            work += self.atol
            ok = np.less_equal(diff, work)
            ok &= np.isfinite(diff)
            ok |= same
            within = bool(ok.all())
            valid = mag > 0
            valid &= np.isfinite(mag)
            work.fill(0.0)
            np.divide(diff, mag, out=work, where=valid)  # relative difference where defined
        self.max_abs_diff = max(self.max_abs_diff, float(diff.max()))
        self.max_rel_diff = max(self.max_rel_diff, float(work.max()))
        if kp in _EXACT:
            return False, False  # integers and booleans agree exactly or not at all
        if kp == "f" and p.ndim >= 2 and p.shape[-1] > 1:
            return bool((np.argmax(p, axis=-1) == np.argmax(s, axis=-1)).all()), within
        return within, within

    def counts(self) -> tuple[int, int]:
        """(compared, disagreed), cumulative: the guard's window input."""
        return self.compared, self.compared - self.agreed

    def snapshot(self) -> dict[str, Any]:
        c, m = self.compared, self.mirrored
        return {
            "mirrored": m,
            "compared": c,
            "agreed": self.agreed,
            "agreement_rate": self.agreed / c if c else None,
            "within_tolerance": self.within_tolerance,
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "mean_latency_diff_ms": 1e3 * self.latency_diff_s / c if c else None,
            "shadow_errors": self.shadow_errors,
            "primary_errors": self.primary_errors,
            "shadow_error_rate": self.shadow_errors / m if m else None,
            "last_shadow_error": self.last_shadow_error,
            "shed": self.shed,
            "atol": self.atol,
            "rtol": self.rtol,
        }
