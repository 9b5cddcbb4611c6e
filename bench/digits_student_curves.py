"""FD-digits against student steps, one line per run, from the scores ``bench/digits_students.py`` keeps for each step
count (``OUT/results/<run>@<steps>.json``): how much of a table's spread is the training trajectory's.

    python bench/digits_student_curves.py --out bench/results/digits_students_curves \\
        runs/digits_students_df:"fake_updates 2" runs/pilot_fu5:"fake_updates 5"

Each argument is ``OUT[:label]``; runs are named by ``<mode>-<student>-s<seed>`` and grouped (one colour) by label
and, for a further EMA's export (``<run>-ema<d>``, ``train.ema=[d0,d1,...]``), by that EMA.
Writes ``--out``.json (every point) and ``--out``.png (FD-digits and class TV against steps; the teacher's FD as a
dashed line when ``OUT/results/teacher.json`` exists).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import save_figure, write_json  # noqa: E402

SCORE = re.compile(r"(?P<run>.+)@(?P<steps>\d+)\.json$")
EMA = re.compile(r"-(?P<ema>ema[0-9.]+)$")


def group_of(label: str, run: str) -> str:
    """The legend group of ``run`` in the sweep labelled ``label``: the label, plus ``[ema<d>]`` for a further EMA's
    export (the runs themselves are the first EMA's)."""
    m = EMA.search(run)
    return f"{label} [{m['ema']}]" if m else label


def read_curves(out: str) -> tuple[dict, dict | None]:
    """``{run: [(steps, scores), ...]}`` sorted by steps, and the teacher's scores (or None), of one sweep folder."""
    curves = {}
    for path in glob.glob(os.path.join(out, "results", "*@*.json")):
        m = SCORE.match(os.path.basename(path))
        if m is None:  # e.g. RUN@avgA-B.json (bench/digits_snapshot_average.py): not a point of the curve
            continue
        with open(path) as fh:
            curves.setdefault(m["run"], []).append((int(m["steps"]), json.load(fh)))
    path, teacher = os.path.join(out, "results", "teacher.json"), None
    if os.path.isfile(path):
        with open(path) as fh:
            teacher = json.load(fh)
    return {k: sorted(v, key=lambda p: p[0]) for k, v in sorted(curves.items())}, teacher


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweeps", nargs="+", help="OUT[:label] folders of bench/digits_students.py")
    p.add_argument("--out", required=True, help="path without extension for the .json and .png")
    a = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    record, teacher_fd = {"sweeps": []}, None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = {}  # legend group -> colour index, in order of appearance
    for spec in a.sweeps:
        folder, _, label = spec.partition(":")
        curves, teacher = read_curves(folder)
        if teacher is not None:
            teacher_fd = teacher["FD-digits"]
        record["sweeps"].append({"folder": folder, "label": label or folder, "runs": {
            run: [{"steps": s, **{k: v for k, v in sc.items() if isinstance(v, (int, float))}} for s, sc in pts]
            for run, pts in curves.items()}})
        for run, pts in curves.items():
            steps = [s for s, _ in pts]
            group = group_of(label or folder, run)
            first = group not in groups
            groups.setdefault(group, len(groups))
            kw = {"color": colours[groups[group] % len(colours)], "marker": "o", "ms": 3, "alpha": 0.8,
                  "label": group if first else None}
            axes[0].plot(steps, [sc["FD-digits"] for _, sc in pts], **kw)
            axes[1].plot(steps, [sc["class_tv"] for _, sc in pts], **kw)
    if teacher_fd is not None:
        for y, ax in ((teacher_fd, axes[0]), (1.25 * teacher_fd, axes[0])):
            ax.axhline(y, color="k", ls="--" if y == teacher_fd else ":", lw=1)
        record["teacher_fd"] = teacher_fd
    axes[0].set(xlabel="student steps", ylabel="FD-digits (2000 samples)", yscale="log",
                title="one-step students (dashed: teacher, dotted: 1.25 x)")
    axes[1].set(xlabel="student steps", ylabel="class TV (digits classifier)", title="class histogram vs the real")
    axes[0].legend(fontsize=8)
    save_figure(fig, a.out + ".png")
    write_json(a.out + ".json", record)
    print(f"wrote {a.out}.png and .json")


if __name__ == "__main__":
    main()
