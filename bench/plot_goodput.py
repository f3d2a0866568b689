"""Goodput vs offered load, from the CSV that ``bench/overload.sh`` writes (``CSV=file``).

    python bench/plot_goodput.py OUT.svg|OUT.png TITLE=CSV [TITLE=CSV ...]

One panel per CSV, one line per server (off, door, wait): goodput / capacity against offered /
capacity, solid, and the share refused with 429, dashed. matplotlib comes with the loadtest extra,
which ``bench/overload.sh`` needs anyway.
"""

from __future__ import annotations

import csv
import sys

COLOURS = {"off": "#c0392b", "door": "#2471a3", "wait": "#1e8449"}
LABELS = {"off": "no shedding", "door": "door (loop lag)", "wait": "door + expected wait"}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or any("=" not in a for a in argv[1:]):
        print(__doc__, file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: a small, diffable file
    import matplotlib.pyplot as plt

    panels = [a.split("=", 1) for a in argv[1:]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, (title, path) in zip(axes[0], panels, strict=True):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        for server in COLOURS:
            mine = sorted((r for r in rows if r["server"] == server), key=lambda r: float(r["factor"]))
            if not mine:
                continue
            x = [float(r["factor"]) for r in mine]
            ax.plot(x, [float(r["good_per_cap"]) for r in mine], color=COLOURS[server], marker="o",
                    label=LABELS[server])
            ax.plot(x, [float(r["refused"]) for r in mine], color=COLOURS[server], linestyle="--", linewidth=1)
        ax.plot([0, 1, 3], [0, 1, 1], color="#999", linewidth=0.8, linestyle=":", label="ideal")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("offered load / capacity")
        ax.set_ylabel("goodput / capacity (dashed: share refused, 429)")
        ax.set_xlim(0, 3.1)
        ax.set_ylim(0, 1.2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(argv[0], dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
