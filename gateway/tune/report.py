"""What ``gateway tune`` found, as a document (``tune.json``), a table and a page.

One row per variant and device: its precision, the best serving configuration found for it, the
throughput at the SLO (the median of the confirmation rounds, with their range) and the p99 there,
its size, its accuracy against fp32 on the sample and what a million requests cost at the given
core-hour (CPU) or GPU-hour (CUDA) price. The Pareto set is taken per device over (throughput up,
max abs difference down) among the rows that were measured; a row outside the accuracy tolerance
or that failed to build or serve stays in the table with the reason, never dropped.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.tune.rounds import overlaps

SCHEMA = "gateway.tune/2"
"""2: rows per device (``device``), confirmation rounds (``rounds``, ``throughput_range``,
``search_throughput_rps``)."""


@dataclass
class Row:
    """One variant's result."""

    name: str
    precision: str
    size_bytes: int
    device: str = "cpu"
    config: dict[str, Any] | None = None
    throughput_rps: float = 0.0
    p99_ms: float = 0.0
    accuracy: dict[str, Any] | None = None
    cost_per_million: float | None = None
    cores: int = 0
    excluded: str | None = None
    """Why the variant cannot be recommended (build failure, tolerance, no rate met the SLO)."""
    bounded: bool = False
    """The budget ended the search for its knee before a rate failed: the throughput is a lower bound."""
    generator_bound: bool = False
    """The load generator fell behind before the server did: the throughput is a lower bound."""
    pareto: bool = False
    points: list[dict[str, Any]] = field(default_factory=list)
    path: str | None = None
    search_rps: float = 0.0
    """The search's own knee for ``config``; ``throughput_rps`` is the rounds' median when there were any."""
    rounds: list[dict[str, Any]] = field(default_factory=list)
    """The confirmation rounds' points (``tune.rounds``)."""
    spread: tuple[float, float] | None = None
    """(least, most) throughput over the rounds that met the SLO."""
    compute: dict[str, Any] | None = None
    """onnxruntime alone, one thread: µs per row at 1 and at 64 rows (``tune.compute``)."""

    @property
    def label(self) -> str:
        return self.name if self.device == "cpu" else f"{self.name}@{self.device}"

    def to_doc(self) -> dict[str, Any]:
        return {"name": self.name, "device": self.device, "precision": self.precision, "config": self.config,
                "throughput_rps": round(self.throughput_rps, 1), "p99_ms": round(self.p99_ms, 3),
                "search_throughput_rps": round(self.search_rps, 1),
                "throughput_range": None if self.spread is None else
                [round(x, 1) if math.isfinite(x) else None for x in self.spread],
                "rounds": self.rounds, "compute": self.compute,
                "size_bytes": self.size_bytes, "accuracy": self.accuracy,
                "cost_per_million": self.cost_per_million, "cores": self.cores, "pareto": self.pareto,
                "throughput_is_lower_bound": self.bounded or self.generator_bound,
                "generator_bound": self.generator_bound,
                "excluded": self.excluded, "path": self.path, "points": self.points}


def cost_per_million(throughput_rps: float, cores: int, core_hour_price: float) -> float | None:
    """Price of a million requests at ``throughput_rps`` on ``cores`` billed at ``core_hour_price``."""
    if throughput_rps <= 0 or core_hour_price <= 0:
        return None
    return round(core_hour_price * cores / (throughput_rps * 3600.0) * 1e6, 6)


def mark_pareto(rows: Sequence[Row]) -> None:
    """Set ``pareto`` on the measured rows no other measured row of the same device beats on both
    throughput and max abs difference (at least as good on both, better on one)."""
    for r in rows:
        r.pareto = False
    for device in {r.device for r in rows}:
        _mark_pareto([r for r in rows if r.device == device])


def _mark_pareto(rows: Sequence[Row]) -> None:
    measured = [r for r in rows if r.throughput_rps > 0 and r.accuracy is not None]
    for r in measured:
        d = r.accuracy["max_abs_diff"]  # type: ignore[index]
        r.pareto = not any(
            (o.throughput_rps >= r.throughput_rps and o.accuracy["max_abs_diff"] <= d  # type: ignore[index]
             and (o.throughput_rps > r.throughput_rps or o.accuracy["max_abs_diff"] < d))  # type: ignore[index]
            for o in measured if o is not r)


def tied_with(rows: Sequence[Row], best: Row) -> list[Row]:
    """The rows the run does not tell apart from ``best``: their rounds' ranges overlap."""
    return [r for r in rows if r is best or overlaps(r.spread, best.spread)]


def recommend(rows: Sequence[Row]) -> Row | None:
    """The highest throughput within tolerance. Rows whose rounds' ranges overlap the highest's are
    a tie (the run did not show one faster), and a tie goes to the one that needs fewer cores (the
    search's own rule: a replica's price), then to the more accurate (accuracy is not traded for a
    speed-up the measurement cannot show), then to the smaller."""
    ok = [r for r in rows if r.excluded is None and r.throughput_rps > 0]
    if not ok:
        return None
    best = max(ok, key=lambda r: (r.throughput_rps, -(r.accuracy or {}).get("max_abs_diff", 0.0), -r.size_bytes))
    return min(tied_with(ok, best),
               key=lambda r: (r.cores, (r.accuracy or {}).get("max_abs_diff", 0.0), r.size_bytes, -r.throughput_rps))


def _fmt_acc(r: Row) -> tuple[str, str, str]:
    a = r.accuracy
    if a is None:
        return "-", "-", "-"
    agree = a.get("argmax_agreement")
    return f"{a['max_abs_diff']:.3g}", f"{a['max_rel_diff']:.3g}", "-" if agree is None else f"{agree:.4f}"


def _fmt_compute(r: Row) -> str:
    per = (r.compute or {}).get("us_per_row") or {}
    return " ".join(f"{v:.2f} ({k})" for k, v in per.items()) or "-"


def table_rows(rows: Sequence[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        abs_d, rel_d, agree = _fmt_acc(r)
        cfg = r.config or {}
        spread = "-" if r.spread is None else (f"{r.spread[0]:,.0f}-" + (f"{r.spread[1]:,.0f}" if math.isfinite(r.spread[1])
                                                                             else "?") + f" ({len(r.rounds)})")
        out.append([
            ("* " if r.pareto else "  ") + r.name, r.device, r.precision,
            (">=" if r.bounded or r.generator_bound else "") + f"{r.throughput_rps:,.0f}" if r.throughput_rps else "-",
            spread,
            f"{r.p99_ms:.2f}" if r.throughput_rps else "-",
            f"{r.size_bytes / 1e6:.2f} MB" if r.size_bytes else "-", _fmt_compute(r), abs_d, rel_d, agree,
            "-" if r.cost_per_million is None else f"{r.cost_per_million:.4f}",
            " ".join(f"{k}={v}" for k, v in cfg.items() if k != "device") or "-", r.excluded or "",
        ])
    return out


HEADERS = ["variant (* pareto)", "device", "precision", "req/s @SLO", "rounds' range (n)", "p99 ms", "size", "us/row (rows)", "max abs diff", "max rel diff",
           "argmax agree", "cost/1M", "config", "excluded"]


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table (the console's)."""
    body = table_rows(rows)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(HEADERS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip() for b in body]
    return "\n".join(lines)


def write_reports(out: Path, doc: dict[str, Any], rows: Sequence[Row]) -> dict[str, Path]:
    """``tune.json`` and ``report.html`` (with a throughput-vs-accuracy plot when matplotlib is
    installed: the ``loadtest`` extra)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "tune.json", "html": out / "report.html"}
    files["json"].write_text(json.dumps(doc, indent=2) + "\n")
    plot = _plot(out / "tradeoff.png", rows)
    parts = [f"<h1>gateway tune: {html.escape(str(doc['model']))}</h1>",
             f"<p>SLO p99 &le; {doc['slo_p99_ms']} ms; data: {html.escape(str(doc['data']['source']))}; "
             f"budget {doc['budget_s']} s, used {doc['elapsed_s']} s. {html.escape(doc.get('advice', ''))}</p>"]
    if plot is not None:
        parts.append(f'<img src="{plot.name}" alt="throughput against accuracy">')
    else:
        parts.append("<p>(no plot: matplotlib is not installed; pip install 'inference-gateway[loadtest]')</p>")
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in table_rows(rows))
    parts.append(f"<table border=1 cellspacing=0 cellpadding=4><tr>{cells}</tr>{body}</table>")
    files["html"].write_text("<!doctype html><meta charset=utf-8><title>gateway tune</title>" + "".join(parts))
    if plot is not None:
        files["plot"] = plot
    return files


def _plot(path: Path, rows: Sequence[Row]) -> Path | None:
    measured = [r for r in rows if r.throughput_rps > 0 and r.accuracy is not None]
    if not measured:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in measured:
        x = max(r.accuracy["max_abs_diff"], 1e-12)  # type: ignore[index]
        ax.scatter([x], [r.throughput_rps], marker="o" if r.pareto else "x", s=60)
        if r.spread is not None:  # the rounds' range: overlapping bars are not told apart
            ax.vlines(x, r.spread[0], r.spread[1] if math.isfinite(r.spread[1]) else 1.25 * r.spread[0], alpha=0.5)
        ax.annotate(r.label, (x, r.throughput_rps), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("max abs difference from fp32 (log)")
    ax.set_ylabel("throughput at the SLO (req/s)")
    ax.set_title("variants: o = Pareto, x = dominated")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
