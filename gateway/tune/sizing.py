"""Right-sizing: which device to serve a model on, at a given load, from what ``tune`` measured.

Per device the pick is ``report.recommend`` over that device's rows. Across devices the rows are
compared by price, not by throughput: a CPU replica is billed as the cores its configuration keeps
busy (``cores x --core-hour-price``), a CUDA replica as one GPU (``--gpu-hour-price``; its host
cores aside). With ``--load-rps`` each device needs ``ceil(load / (capacity x headroom))``
replicas (the same rule as ``gateway_desired_replicas``), and the cheaper fleet wins; without it,
the cheaper price per million requests at full capacity wins. A tie goes to the CPU (no GPU to
provision).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.loadtest.sweep import replicas_needed
from gateway.tune.report import Row, recommend

__all__ = ["Sizing", "hourly_price", "right_size"]

DEVICE_NAMES = {"cpu": "CPU", "cuda": "CUDA"}


def hourly_price(row: Row, core_hour_price: float, gpu_hour_price: float) -> float:
    """What one replica of ``row`` costs per hour."""
    return gpu_hour_price if row.device == "cuda" else max(1, row.cores) * core_hour_price


@dataclass
class Sizing:
    chosen: Row | None
    sentence: str
    per_device: dict[str, dict[str, object]]
    """Per device: its pick's name, replicas (with a load) and price per hour or per million."""


def right_size(rows: Sequence[Row], *, devices: Sequence[str], load_rps: float | None, headroom: float,
               core_hour_price: float, gpu_hour_price: float) -> Sizing:
    picks = {d: p for d in devices if (p := recommend([r for r in rows if r.device == d])) is not None}
    missing = [DEVICE_NAMES.get(d, d) for d in devices if d not in picks]
    if not picks:
        return Sizing(None, "No variant met the SLO within the accuracy tolerance: relax the SLO or the tolerance.",
                      {})
    per: dict[str, dict[str, object]] = {}
    price: dict[str, float] = {}  # what decides: the fleet's price per hour, or the price per million
    parts = []
    for d, row in picks.items():
        hour = hourly_price(row, core_hour_price, gpu_hour_price)
        unit = "1 GPU" if d == "cuda" else f"{max(1, row.cores)} core{'s' if row.cores > 1 else ''}"
        info: dict[str, object] = {"variant": row.name, "capacity_rps": round(row.throughput_rps, 1),
                                   "replica_hour_price": hour}
        if load_rps:
            n = replicas_needed(load_rps, row.throughput_rps, headroom)
            info |= {"replicas": n, "fleet_hour_price": round(n * hour, 6)}
            price[d] = n * hour
            parts.append(f"{DEVICE_NAMES.get(d, d)} needs {n} replica{'s' if n > 1 else ''} of {row.name} "
                         f"({unit} each, {n * hour:.2f}/h)")
        else:
            info["cost_per_million"] = row.cost_per_million
            price[d] = math.inf if row.cost_per_million is None else row.cost_per_million
            parts.append(f"{DEVICE_NAMES.get(d, d)}: {row.name} at {row.throughput_rps:,.0f} req/s on {unit}, "
                         f"{row.cost_per_million or 0:.4f} per million requests")
        per[d] = info

    best = min(picks, key=lambda d: (price[d], d != "cpu"))
    head = f"At {load_rps:,.0f} req/s: " if load_rps else "At full capacity: "
    tail = f": use {DEVICE_NAMES.get(best, best)}." if len(picks) > 1 else "."
    note = ""
    if missing:
        note = f" {', '.join(missing)} not measured (see the table's excluded column)."
    return Sizing(picks[best], head + "; ".join(parts) + tail + note, per)
