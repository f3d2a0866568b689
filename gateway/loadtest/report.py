"""Report files: JSON (the full result), CSV (one row per interval or per sweep step), PNG plots
(latency over time; latency vs throughput for sweeps) and a one-page HTML report that shows both.

JSON is the contract other tools read (``schema`` names its version; see ``SCHEMA_RUN`` and
``SCHEMA_SWEEP``). Plots use matplotlib's Agg backend: no display needed, safe in CI and containers.
"""

from __future__ import annotations

import csv
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_RUN", "SCHEMA_SWEEP", "write_run_reports", "write_sweep_reports", "plot_latency_over_time",
           "plot_latency_vs_throughput", "sweep_timeline"]

SCHEMA_RUN = "gateway.loadtest.run/1"
SCHEMA_SWEEP = "gateway.loadtest.sweep/1"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency_over_time(path: Path, intervals: Sequence[dict[str, Any]], title: str,
                           marks: Sequence[tuple[float, str]] = ()) -> Path:
    """p50/p99/max per interval (log scale) with offered and achieved rate on a second axis."""
    plt = _plt()
    rows = [r for r in intervals if not r.get("tail")]
    t = [r["t"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    for key, style in (("p50", "-"), ("p99", "-"), ("max", ":")):
        ax.plot(t, [max(r["latency_ms"][key], 1e-3) for r in rows], style, label=f"{key} latency")
    ax.set_yscale("log")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("latency (ms)")
    ax2 = ax.twinx()
    ax2.plot(t, [r["intended_rps"] for r in rows], "--", color="grey", label="offered req/s")
    ax2.plot(t, [r["achieved_rps"] for r in rows], "-", color="black", alpha=0.5, label="answered req/s")
    ax2.set_ylabel("requests/s")
    top = max([r["intended_rps"] for r in rows] + [r["achieved_rps"] for r in rows] + [1.0])
    ax2.set_ylim(0, top * 1.15)  # keep the rate lines off the frame
    for x, label in marks:
        ax.axvline(x, color="lightgrey", lw=0.8)
        ax.text(x, ax.get_ylim()[1], label, fontsize=7, rotation=90, va="top", ha="right", color="grey")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_latency_vs_throughput(path: Path, sweep: dict[str, Any], title: str) -> Path:
    plt = _plt()
    steps = sorted(sweep["steps"], key=lambda s: s["rate"])
    x = [s["summary"]["achieved_rps"] for s in steps]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for key in ("p50", "p99", "p99_9"):
        ax.plot(x, [max(s["summary"]["latency_ms"][key], 1e-3) for s in steps], "o-", ms=4, label=key)
    fails = [s for s in steps if not s["passed"]]
    ax.plot([s["summary"]["achieved_rps"] for s in fails],
            [max(s["summary"]["latency_ms"][sweep["slo"]["percentile"]], 1e-3) for s in fails],
            "x", color="red", ms=9, label="broke the SLO")
    ax.axhline(sweep["slo"]["p99_ms"], color="red", ls="--", lw=1, label=f"SLO {sweep['slo']['p99_ms']:g} ms")
    if sweep["knee_rps"]:
        ax.axvline(sweep["knee_achieved_rps"], color="green", ls=":", lw=1.2,
                   label=f"knee {sweep['knee_rps']:.0f} req/s")
    ax.set_yscale("log")
    ax.set_xlabel("answered requests/s")
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def sweep_timeline(sweep: dict[str, Any], gap: float = 0.0) -> tuple[list[dict[str, Any]], list[tuple[float, str]]]:
    """All steps' intervals on one time axis, and a mark at the start of each step."""
    rows, marks, offset = [], [], 0.0
    for s in sweep["steps"]:
        ivs = [r for r in s["summary"]["intervals"] if not r.get("tail")]
        marks.append((offset, f"{s['rate']:.0f}/s"))
        for r in ivs:
            rows.append({**r, "t": r["t"] + offset})
        offset += s["summary"]["window_s"] + s["summary"].get("warmup_s", 0.0) + gap
    return rows, marks


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"
    return html.escape(str(v))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = ("body{font-family:sans-serif;max-width:1000px;margin:1em auto;color:#222}"
        "table{border-collapse:collapse;font-size:13px;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 7px;"
        "text-align:right}th{background:#f3f3f3}img{max-width:100%}.warn{color:#a40}pre{font-size:12px}")


def _page(title: str, parts: Sequence[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")


def _summary_rows(s: dict[str, Any]) -> list[tuple[str, Any]]:
    lat = s["latency_ms"]
    rows: list[tuple[str, Any]] = [("mode", s["mode"]), ("window (s)", s["window_s"])]
    if s.get("intended_rps") is not None:
        rows.append(("intended req/s", s["intended_rps"]))
    rows += [("answered req/s", s["achieved_rps"]), ("ok req/s", s["ok_rps"]),
             ("requests sent", s["requests"]["sent"]), ("ok", s["requests"]["ok"]),
             ("errors", s["requests"]["errors"]), ("late sends", s["requests"]["late"])]
    rows += [(f"latency {k} (ms)", lat[k]) for k in ("p50", "p90", "p99", "p99_9", "p99_99", "max", "mean")]
    rows += [("errors by kind", ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "none"),
             ("generator CPU (cores)", s["generator"]["cpu_cores_used"]),
             ("connections (max open)", s["connections"]["max_open"])]
    return rows


def write_run_reports(out: Path, result: dict[str, Any]) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "loadtest.json", "csv": out / "intervals.csv", "png_time": out / "latency_over_time.png",
             "html": out / "report.html"}
    files["json"].write_text(json.dumps(result, indent=1))
    s = result["summary"]
    with files["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "intended_rps", "answered_rps", "ok", "errors", "p50_ms", "p99_ms", "max_ms"])
        for r in s["intervals"]:
            if not r.get("tail"):
                w.writerow([r["t"], r["intended_rps"], r["achieved_rps"], r["ok"], r["errors"],
                            r["latency_ms"]["p50"], r["latency_ms"]["p99"], r["latency_ms"]["max"]])
    title = f"loadtest {result['target']['protocol']} {result['target']['model']} ({result['config']['load']})"
    plot_latency_over_time(files["png_time"], s["intervals"], title)
    parts = [f"<p>{html.escape(result['target']['url'])} &middot; {html.escape(result['started'])}</p>",
             _table(["", "value"], _summary_rows(s)),
             f"<h2>Latency over time</h2><img src='{files['png_time'].name}' alt='latency over time'>",
             "<h2>Intervals</h2>",
             _table(["t (s)", "intended/s", "answered/s", "errors", "p50 ms", "p99 ms", "max ms"],
                    [(r["t"], r["intended_rps"], r["achieved_rps"], r["errors"], r["latency_ms"]["p50"],
                      r["latency_ms"]["p99"], r["latency_ms"]["max"]) for r in s["intervals"] if not r.get("tail")])]
    if result.get("server"):
        parts.append("<h2>Server counters (after - before)</h2><pre>"
                     + html.escape(json.dumps(result["server"], indent=1)[:20000]) + "</pre>")
    files["html"].write_text(_page(title, parts))
    return files


def write_sweep_reports(out: Path, result: dict[str, Any]) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "sweep.json", "csv": out / "steps.csv", "png_lvt": out / "latency_vs_throughput.png",
             "png_time": out / "latency_over_time.png", "html": out / "report.html"}
    files["json"].write_text(json.dumps(result, indent=1))
    sw = result["sweep"]
    cols = ["rate", "phase", "passed", "intended_rps", "answered_rps", "error_rate", "p50_ms", "p99_ms",
            "p99_9_ms", "max_ms", "late_fraction", "reasons"]
    table = []
    for st in sorted(sw["steps"], key=lambda s: s["rate"]):
        s = st["summary"]
        lat = s["latency_ms"]
        table.append([st["rate"], st["phase"], st["passed"], s["intended_rps"], s["achieved_rps"], s["error_rate"],
                      lat["p50"], lat["p99"], lat["p99_9"], lat["max"], s["late_fraction"], "; ".join(st["reasons"])])
    with files["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(table)
    title = f"sweep {result['target']['protocol']} {result['target']['model']}"
    plot_latency_vs_throughput(files["png_lvt"], sw, title)
    rows, marks = sweep_timeline(sw)
    plot_latency_over_time(files["png_time"], rows, title + ": all steps", marks)
    slo = sw["slo"]
    head = [f"<p>{html.escape(result['target']['url'])} &middot; {html.escape(result['started'])}</p>",
            f"<p><b>Knee: {sw['knee_rps']:,.0f} req/s</b> offered ({sw['knee_achieved_rps']:,.0f} answered) at "
            f"{slo['percentile']} &le; {slo['p99_ms']:g} ms, errors &le; {slo['error_budget']:.2%}.</p>"]
    cap = result.get("capacity")
    if cap:
        head.append(f"<p><b>{cap['replicas']} replicas</b> for {cap['target_rps']:,.0f} req/s at headroom "
                    f"{cap['headroom']:g} ({cap['planned_rps_per_replica']:,.0f} req/s planned per replica).</p>")
    head += [f"<p class='warn'>{html.escape(w)}</p>" for w in sw["warnings"]]
    parts = head + [f"<h2>Latency vs throughput</h2><img src='{files['png_lvt'].name}' alt='latency vs throughput'>",
                    "<h2>Steps</h2>", _table(cols, table),
                    f"<h2>Latency over time</h2><img src='{files['png_time'].name}' alt='latency over time'>"]
    files["html"].write_text(_page(title, parts))
    return files
