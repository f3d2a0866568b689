"""Goodput vs offered load as an SVG, from the CSV that ``bench/overload.sh`` writes (``CSV=file``).

    python bench/plot_goodput.py OUT.svg TITLE=CSV [TITLE=CSV ...]

One panel per CSV, one line per server (off, door, wait): goodput / capacity against offered /
capacity, and dashed, the share refused with 429. Plain SVG written here, so the benchmarks need
nothing beyond the gateway's own dependencies.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

W, H, PAD_L, PAD_B, PAD_T, PAD_R = 420, 300, 48, 40, 30, 16
COLOURS = {"off": "#c0392b", "door": "#2471a3", "wait": "#1e8449"}
X_MAX, Y_MAX = 3.0, 1.2


def _xy(x: float, y: float, left: float) -> tuple[float, float]:
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    return left + PAD_L + pw * x / X_MAX, PAD_T + ph * (1 - y / Y_MAX)


def panel(title: str, rows: list[dict[str, str]], left: float) -> list[str]:
    out = [f'<text x="{left + W / 2:.0f}" y="18" text-anchor="middle" font-size="13">{title}</text>']
    x0, y0 = _xy(0, 0, left)
    x1, y1 = _xy(X_MAX, Y_MAX, left)
    out.append(f'<rect x="{x0:.1f}" y="{y1:.1f}" width="{x1 - x0:.1f}" height="{y0 - y1:.1f}" '
               'fill="none" stroke="#888"/>')
    for gx in (0.5, 1, 1.5, 2, 2.5, 3):
        x, _ = _xy(gx, 0, left)
        out.append(f'<line x1="{x:.1f}" y1="{y0:.1f}" x2="{x:.1f}" y2="{y1:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{y0 + 14:.1f}" text-anchor="middle" font-size="10">{gx:g}</text>')
    for gy in (0, 0.25, 0.5, 0.75, 1.0):
        _, y = _xy(0, gy, left)
        out.append(f'<line x1="{x0:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{x0 - 4:.1f}" y="{y + 3:.1f}" text-anchor="end" font-size="10">{gy:g}</text>')
    out.append(f'<text x="{(x0 + x1) / 2:.0f}" y="{H - 6}" text-anchor="middle" font-size="11">'
               'offered load / capacity</text>')
    out.append(f'<text x="{left + 12}" y="{(y0 + y1) / 2:.0f}" font-size="11" text-anchor="middle" '
               f'transform="rotate(-90 {left + 12} {(y0 + y1) / 2:.0f})">goodput / capacity (dashed: 429 share)</text>')
    servers = sorted({r["server"] for r in rows}, key=list(COLOURS).index)
    for i, server in enumerate(servers):
        mine = sorted((r for r in rows if r["server"] == server), key=lambda r: float(r["factor"]))
        colour = COLOURS[server]
        good = " ".join("{:.1f},{:.1f}".format(*_xy(float(r["factor"]), float(r["good_per_cap"]), left)) for r in mine)
        refused = " ".join("{:.1f},{:.1f}".format(*_xy(float(r["factor"]), float(r["refused"]), left)) for r in mine)
        out.append(f'<polyline points="{good}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<polyline points="{refused}" fill="none" stroke="{colour}" stroke-width="1" '
                   'stroke-dasharray="4 3"/>')
        lx, ly = x0 + 8, y1 + 14 + 13 * i
        out.append(f'<line x1="{lx:.1f}" y1="{ly - 4:.1f}" x2="{lx + 16:.1f}" y2="{ly - 4:.1f}" '
                   f'stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{lx + 20:.1f}" y="{ly:.1f}" font-size="10">{server}</text>')
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2 or any("=" not in a for a in argv[1:]):
        print(__doc__, file=sys.stderr)
        return 2
    out, panels = Path(argv[0]), [a.split("=", 1) for a in argv[1:]]
    parts: list[str] = []
    for i, (title, path) in enumerate(panels):
        with open(path, newline="") as f:
            parts += panel(title, list(csv.DictReader(f)), i * W)
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * len(panels)}" height="{H}" '
           f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>{"".join(parts)}</svg>\n')
    out.write_text(svg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
