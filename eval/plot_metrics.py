"""Plot metrics (FD, recall, any key; MATH §7) against training images seen, for several runs.

    python -m eval.plot_metrics runs/rkl runs/fkl --keys FD-digits recall --out fig.png

Each argument is a run folder (its ``metrics.jsonl`` and any ``*results*.jsonl`` are read) or a JSON-lines file.
Training rows give ``row[key]`` at ``row[x]``; result rows (with ``"metric"``) give ``value`` for ``metric == key``
at their ``x`` (``images_seen``; rows without it are skipped). One panel per key, one line per run.
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import re
from collections import defaultdict

from .results import read_jsonl

DEFAULT_KEYS = re.compile(r"(fid|fd|recall|precision|tv|nll)", re.IGNORECASE)


def run_files(path: str) -> list[str]:
    """The JSON-lines files of a run folder (metrics.jsonl, *results*.jsonl), or the file itself."""
    if os.path.isfile(path):
        return [path]
    files = [os.path.join(path, "metrics.jsonl")] + sorted(glob.glob(os.path.join(path, "*results*.jsonl")))
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        raise FileNotFoundError(f"no metrics.jsonl or *results*.jsonl in {path!r}")
    return files


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def collect(path: str, x: str = "images_seen") -> dict[str, list[tuple[float, float]]]:
    """``{key: sorted [(x, value), ...]}`` from all files of one run."""
    series = defaultdict(list)
    for f in run_files(path):
        for row in read_jsonl(f):
            if not _number(row.get(x)):
                continue
            if "metric" in row and "value" in row:
                if _number(row["value"]):
                    series[str(row["metric"])].append((row[x], row["value"]))
                continue
            for key, value in row.items():
                if key != x and _number(value):
                    series[key].append((row[x], value))
    return {k: sorted(v) for k, v in series.items()}


def plot(runs: list[str], keys: list[str] | None = None, x: str = "images_seen", out: str = "metrics.png",
         labels: list[str] | None = None, logy: bool = False) -> str:
    """Draw one panel per key with a line per run; returns the figure path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [collect(r, x) for r in runs]
    if not keys:
        keys = sorted({k for d in data for k in d if DEFAULT_KEYS.search(k)})
    if not keys:
        raise ValueError(f"no plottable keys found; pass --keys (available: {sorted({k for d in data for k in d})})")
    labels = labels or [os.path.basename(os.path.normpath(r)) for r in runs]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for d, label in zip(data, labels):
            if key in d:
                xs, ys = zip(*d[key])
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=label)
        ax.set_xlabel(x.replace("_", " "))
        ax.set_title(key)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None) -> str:
    p = argparse.ArgumentParser(prog="python -m eval.plot_metrics", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders or JSON-lines files")
    p.add_argument("--keys", nargs="+", help="metric keys (default: those matching fid|fd|recall|precision|tv|nll)")
    p.add_argument("--x", default="images_seen")
    p.add_argument("--labels", nargs="+")
    p.add_argument("--logy", action="store_true")
    p.add_argument("--out", default="metrics.png")
    args = p.parse_args(argv)
    path = plot(args.runs, args.keys, args.x, args.out, args.labels, args.logy)
    print(f"saved {path}")
    return path


if __name__ == "__main__":
    main()
