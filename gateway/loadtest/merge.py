"""Turn per-process raw outcomes into HDR histograms, and merge processes into one run summary.

Each generator process summarises its own arrays (``summarize_worker``): one HdrHistogram of
successful latencies (microseconds, 1 us .. 1 h, 3 significant digits) for the measured window and
one per interval, encoded with HdrHistogram's compressed base64 form so they cross the process
boundary as short strings. ``merge`` decodes and adds them (HDR histograms add exactly, so merged
percentiles are as if one process had recorded everything) and computes the report numbers.

Histograms are filled and read in bulk through a numpy view of their counts array, with the same
index arithmetic HdrHistogram uses (recording one value at a time through its Python API costs ~2 us,
and its percentile iterator walks every bucket in Python): milliseconds for millions of requests.

Rates: a request belongs to the window by its *intended* time for "planned/intended" and by its
*completion* time for "achieved": achieved rate is what the server actually answered per second
inside the window, so a server that falls behind shows a lower achieved than intended rate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from gateway.loadtest.recorder import GRPC_BASE, status_label
from gateway.loadtest.runner import WorkerOutcome

__all__ = ["HIGHEST_US", "new_histogram", "hist_from_us", "latency_summary", "summarize_worker", "merge"]

HIGHEST_US = 3600 * 1_000_000
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9), ("p99_99", 99.99))


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, HIGHEST_US, 3)


# Index arithmetic of HdrHistogram(1, HIGHEST_US, 3) (unit magnitude 0, 2048 sub-buckets), vectorised.
_SUB_HALF_MAG = 10
_SUB_HALF = 1 << _SUB_HALF_MAG
_SUB_MASK = 2 * _SUB_HALF - 1


def _counts(h: HdrHistogram) -> np.ndarray:
    """The histogram's own counts array as a numpy view (writes go into the histogram)."""
    return np.ctypeslib.as_array(h.counts)


def _index_of(v: np.ndarray) -> np.ndarray:
    bucket = np.frexp((v | _SUB_MASK).astype(np.float64))[1].astype(np.int64) - (_SUB_HALF_MAG + 1)
    return ((bucket + 1) << _SUB_HALF_MAG) + (v >> bucket) - _SUB_HALF


def _value_bounds(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest value each counts index stands for."""
    bucket = (idx >> _SUB_HALF_MAG) - 1
    sub = (idx & (_SUB_HALF - 1)) + _SUB_HALF
    low_bucket = bucket < 0
    sub = np.where(low_bucket, sub - _SUB_HALF, sub)
    bucket = np.maximum(bucket, 0)
    lowest = sub << bucket
    return lowest, lowest + (np.int64(1) << bucket) - 1


def hist_from_us(values: np.ndarray) -> HdrHistogram:
    """An HdrHistogram of ``values`` (microseconds), filled in one numpy pass."""
    h = new_histogram()
    if len(values):
        v = np.clip(np.asarray(values, dtype=np.float64), 1, HIGHEST_US).astype(np.int64)
        counts = _counts(h)
        counts += np.bincount(_index_of(v), minlength=len(counts)).astype(counts.dtype)
        h.total_count = len(v)
        h.min_value, h.max_value = int(v.min()), int(v.max())
    return h


def _enc(h: HdrHistogram) -> str:
    return h.encode().decode("ascii")


def _dec(s: str) -> HdrHistogram:
    return HdrHistogram.decode(s.encode("ascii"))


def latency_summary(h: HdrHistogram) -> dict[str, float]:
    """Percentiles in milliseconds, HdrHistogram's definitions, computed with numpy (zeros when empty)."""
    counts = _counts(h).astype(np.int64)
    n = int(counts.sum())
    out: dict[str, float] = {"count": float(n)}
    if n == 0:
        out.update({k: 0.0 for k, _ in PERCENTILES})
        out.update(max=0.0, min=0.0, mean=0.0)
        return out
    cum = np.cumsum(counts)
    nz = np.flatnonzero(counts)
    low, high = _value_bounds(nz)
    for key, p in PERCENTILES:
        target = max(1, int(p / 100 * n + 0.5))
        i = int(np.searchsorted(cum, target, side="left"))
        out[key] = float(_value_bounds(np.array([i]))[1][0]) / 1e3
    out["max"] = float(high[-1]) / 1e3
    out["min"] = float(low[0]) / 1e3
    out["mean"] = float(np.sum(counts[nz] * (low + high) / 2) / n) / 1e3
    return out


def _ok_mask(status: np.ndarray) -> np.ndarray:
    return ((status >= 200) & (status < 300)) | (status == GRPC_BASE)


def summarize_worker(o: WorkerOutcome, *, interval: float, warmup: float, window_end: float) -> dict[str, Any]:
    """Picklable, compact summary of one process's run."""
    t, lat, st = o.t, o.lat, o.status
    done = ~np.isnan(lat)
    comp = np.where(done, t + np.nan_to_num(lat), np.inf)
    ok = done & _ok_mask(st)
    measured = t >= warmup
    codes, counts = np.unique(st[measured & done], return_counts=True)
    in_win = done & (comp >= warmup) & (comp < window_end)
    intervals = []
    n_int = max(1, math.ceil(window_end / interval - 1e-9))
    k_done = np.floor(np.where(done, comp, -1) / interval).astype(np.int64)
    k_plan = np.floor(t / interval).astype(np.int64)
    for k in range(n_int + int(np.any(k_done >= n_int))):
        last = k >= n_int  # everything completing after the window, in one tail interval
        sel = (k_done >= k) if last else (k_done == k)
        intervals.append({"k": k, "hist": _enc(hist_from_us(lat[sel & ok] * 1e6)),
                          "ok": int(np.count_nonzero(sel & ok)), "errors": int(np.count_nonzero(sel & ~ok & done)),
                          "planned": int(np.count_nonzero(k_plan == k)), "tail": last})
    return {
        "proc": o.proc,
        "hist": _enc(hist_from_us(lat[ok & measured] * 1e6)),
        "status": {int(c): int(n) for c, n in zip(codes.tolist(), counts.tolist(), strict=True)},
        "planned": int(np.count_nonzero(measured & (t < window_end))),
        "sent": int(np.count_nonzero(measured)),
        "completed": int(np.count_nonzero(done & measured)),
        "unanswered": int(np.count_nonzero(~done & measured)),
        "completed_in_window": int(np.count_nonzero(in_win)),
        "ok_in_window": int(np.count_nonzero(in_win & ok)),
        "late": o.late, "opened": o.opened, "max_open": o.max_open, "connect_errors": o.connect_errors,
        "cpu_s": o.cpu_s, "wall_s": o.wall_s,
        "last_t": float(t.max()) if len(t) else 0.0,
        "intervals": intervals,
    }


def merge(workers: Sequence[dict[str, Any]], *, interval: float, warmup: float, window_end: float,
          mode: str) -> dict[str, Any]:
    """One summary for the whole run (all processes)."""
    total = new_histogram()
    for w in workers:
        total.add(_dec(w["hist"]))
    status: dict[int, int] = {}
    for w in workers:
        for c, n in w["status"].items():
            status[int(c)] = status.get(int(c), 0) + n
    ok_codes = {c for c in status if 200 <= c < 300 or c == GRPC_BASE}
    n_ok = sum(status[c] for c in ok_codes)
    errors = {status_label(c): n for c, n in sorted(status.items()) if c not in ok_codes}

    def s(key: str) -> int:
        return sum(int(w[key]) for w in workers)

    unanswered = s("unanswered")
    if unanswered:
        errors["no_response"] = errors.get("no_response", 0) + unanswered
    n_err = sum(errors.values())
    span = max(window_end - warmup, 1e-9)
    cpu, wall = sum(w["cpu_s"] for w in workers), max((w["wall_s"] for w in workers), default=0.0)
    return {
        "mode": mode,
        "window_s": span,
        "intended_rps": s("planned") / span if mode == "open" else None,
        "achieved_rps": s("completed_in_window") / span,
        "ok_rps": s("ok_in_window") / span,
        "requests": {"planned": s("planned") if mode == "open" else s("sent"), "sent": s("sent"),
                     "completed": s("completed"), "ok": n_ok, "errors": n_err, "late": s("late")},
        "error_rate": n_err / max(1, n_ok + n_err),
        "errors": errors,
        "late_fraction": s("late") / max(1, s("sent")),
        "latency_ms": latency_summary(total),
        "generator": {"procs": len(workers), "cpu_s": cpu, "wall_s": wall,
                      "cpu_cores_used": cpu / wall if wall > 0 else 0.0},
        "connections": {"opened": s("opened"), "max_open": s("max_open"), "connect_errors": s("connect_errors")},
        "intervals": _merge_intervals(workers, interval),
        "histogram": _enc(total),
    }


def _merge_intervals(workers: Iterable[dict[str, Any]], interval: float) -> list[dict[str, Any]]:
    by_k: dict[int, dict[str, Any]] = {}
    for w in workers:
        for iv in w.get("intervals", ()):
            acc = by_k.setdefault(iv["k"], {"hist": new_histogram(), "ok": 0, "errors": 0, "planned": 0,
                                             "tail": iv["tail"]})
            acc["hist"].add(_dec(iv["hist"]))
            for key in ("ok", "errors", "planned"):
                acc[key] += iv[key]
    out = []
    for k in sorted(by_k):
        acc = by_k[k]
        lat = latency_summary(acc["hist"])
        out.append({"t": k * interval, "tail": acc["tail"], "intended_rps": acc["planned"] / interval,
                    "achieved_rps": (acc["ok"] + acc["errors"]) / interval, "ok": acc["ok"],
                    "errors": acc["errors"], "latency_ms": {key: lat[key] for key in ("p50", "p99", "max")}})
    return out
