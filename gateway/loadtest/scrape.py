"""Server-side view of a run: ``/metrics`` and model statistics read before and after, as deltas.

Client latency says how long requests took; the server's own counters say where the time went. The
Triton statistics extension (HTTP ``GET /v2/models/{m}/stats``, gRPC ``ModelStatistics``) has
cumulative count/ns per stage, so (after - before) / count is the average queue, compute-input,
compute-infer and compute-output time per request over the run, and inference_count /
execution_count is the average batch size. For Prometheus text, every counter and histogram
``_sum``/``_count`` pair that moved is reported as a delta, and ``_sum``/``_count`` pairs as averages.
Scraping is best effort: a server without these endpoints yields ``None``, never a failed run.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any
from urllib.parse import urlsplit

from gateway.loadtest.targets import Target, http_get

__all__ = ["snapshot", "diff", "parse_prometheus"]

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+([-+0-9.eEinfINFaN]+)(?:\s+\d+)?$")
_STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


def parse_prometheus(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line.strip())
        if m:
            with contextlib.suppress(ValueError):
                out[m.group(1)] = float(m.group(2))
    return out


def _grpc_stats(target: Target) -> dict[str, Any]:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from gateway.pb import Stub
    from gateway.pb import service as pb

    with grpc.insecure_channel(f"{target.host}:{target.port}") as ch:
        msg = Stub(ch).ModelStatistics(pb.ModelStatisticsRequest(name=target.model, version=target.version),
                                       timeout=5.0)
    return MessageToDict(msg, preserving_proto_field_name=True)


def snapshot(target: Target, metrics_url: str | None) -> dict[str, Any]:
    """Read what the server exposes now; missing endpoints give None."""
    snap: dict[str, Any] = {"metrics": None, "stats": None}
    if metrics_url:
        u = urlsplit(metrics_url if "//" in metrics_url else "//" + metrics_url)
        with contextlib.suppress(OSError, ValueError):
            status, body = http_get(u.hostname or target.host, u.port or 80, u.path or "/metrics")
            if status == 200:
                snap["metrics"] = parse_prometheus(body.decode("utf-8", "replace"))
    try:
        if target.is_grpc:
            snap["stats"] = _grpc_stats(target)
        else:
            v = f"/versions/{target.version}" if target.version else ""
            status, body = http_get(target.host, target.port, f"/v2/models/{target.model}{v}/stats")
            if status == 200:
                snap["stats"] = json.loads(body)
    except Exception:  # best effort: servers without the statistics extension
        snap["stats"] = None
    return snap


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return 0.0


def _stats_diff(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    prev = {(m.get("name"), str(m.get("version", ""))): m for m in before.get("model_stats", [])}
    out = []
    for m in after.get("model_stats", []):
        b = prev.get((m.get("name"), str(m.get("version", ""))), {})
        row: dict[str, Any] = {"model": m.get("name"), "version": m.get("version", "")}
        d_inf = _num(m.get("inference_count")) - _num(b.get("inference_count"))
        d_exe = _num(m.get("execution_count")) - _num(b.get("execution_count"))
        row["inferences"] = d_inf
        row["executions"] = d_exe
        row["avg_batch"] = d_inf / d_exe if d_exe else None
        stages: dict[str, Any] = {}
        ia, ib = m.get("inference_stats", {}), b.get("inference_stats", {})
        for st in _STAGES:
            if st in ia:
                dc = _num(ia[st].get("count")) - _num(ib.get(st, {}).get("count"))
                dn = _num(ia[st].get("ns")) - _num(ib.get(st, {}).get("ns"))
                stages[st] = {"count": dc, "avg_ms": dn / dc / 1e6 if dc else None}
        row["stages"] = stages
        if d_inf or d_exe:
            out.append(row)
    return out


def diff(before: dict[str, Any], after: dict[str, Any], limit: int = 200) -> dict[str, Any]:
    """Deltas between two snapshots: moved Prometheus series, _sum/_count averages, per-stage stats."""
    res: dict[str, Any] = {"metrics_delta": None, "metrics_avg": None, "stats": None}
    mb, ma = before.get("metrics"), after.get("metrics")
    if mb is not None and ma is not None:
        # Histogram buckets are left out: their _sum/_count averages say more in less space.
        delta = {k: v - mb.get(k, 0.0) for k, v in ma.items()
                 if v != mb.get(k, 0.0) and "_bucket{" not in k and not k.endswith("_bucket")}
        res["metrics_delta"] = dict(sorted(delta.items())[:limit])
        avgs = {}
        for k, dsum in delta.items():
            name, sep, labels = k.partition("{")
            if name.endswith("_sum"):
                ck = name[:-4] + "_count" + sep + labels
                if delta.get(ck):
                    avgs[name[:-4] + sep + labels] = dsum / delta[ck]
        res["metrics_avg"] = dict(sorted(avgs.items())[:limit])
    sb, sa = before.get("stats"), after.get("stats")
    if sb is not None and sa is not None:
        res["stats"] = _stats_diff(sb, sa)
    return res
