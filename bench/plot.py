#!/usr/bin/env python3
"""Picture of a bench_backward.py result: how far each implementation is from the roofline.

    python3 bench/plot.py bench.json bench.png

Left: every backward at every (T, D), as its time over the memory roofline (log scale; 1 is
the roofline). Right: the Triton backward's kernels over their own bytes, at each (T, D).
Needs only matplotlib and the JSON, so it runs anywhere, e.g. on results fetched from a GPU host.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _shapes(rows):
    return sorted({(r["T"], r["D"]) for r in rows})


def plot(doc: dict, path: str | Path) -> Path:
    """Write the figure of a bench_backward.py JSON document to `path` (PNG); returns it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc.get("rows") or []
    bwd = [r for r in rows if r.get("direction") == "backward"]
    kern = [r for r in rows if r.get("direction") == "kernel"]
    if not bwd:
        raise ValueError("no backward rows to plot (was the bench run with --no-bench?)")
    shapes = _shapes(bwd)
    impls = list(dict.fromkeys(r["impl"] for r in bwd))
    fig, axes = plt.subplots(1, 2 if kern else 1, figsize=(14 if kern else 8, 4.8), squeeze=False)
    _bars(axes[0][0], bwd, shapes, impls, "backward time / memory roofline")
    if kern:
        names = list(dict.fromkeys(r["impl"] for r in kern))
        _bars(axes[0][1], kern, _shapes(kern), names, "Triton kernel time / its own bytes' bound")
    bw = doc.get("bandwidth_Bps")
    fig.suptitle(f"{doc.get('device', '?')}"
                 + (f", copy bandwidth {bw / 1e12:.2f} TB/s" if bw else "")
                 + f", x {rows[0].get('dtype', '')}, n={rows[0].get('n', '')}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bars(ax, rows, shapes, impls, title):
    by = {(r["T"], r["D"], r["impl"]): r["x_roofline"] for r in rows}
    width = 0.8 / max(1, len(impls))
    for i, name in enumerate(impls):
        xs = [j + (i - (len(impls) - 1) / 2) * width for j in range(len(shapes))]
        ys = [by.get((T, D, name), float("nan")) for T, D in shapes]
        ax.bar(xs, ys, width, label=name)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(shapes)))
    ax.set_xticklabels([f"T={T}\nD={D}" for T, D in shapes], fontsize=8)
    ax.set_ylabel("x roofline (1 = at the bound)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", which="both", alpha=0.3)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    src, dst = argv
    try:
        doc = json.loads(Path(src).read_text())
        print(plot(doc, dst))
    except (OSError, ValueError) as exc:
        print(f"plot: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
