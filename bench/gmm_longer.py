"""Does longer training hurt? The vector recipe at 1x, 2x and 4x its distillation steps (each run with its own
learning-rate schedule), several seeds, with the exact measures (MATH §7) every ``--every`` steps; the probability-flow
regression ceiling at the 1x budget as a line. Issue 23's "longer never hurts" check.

    python bench/gmm_longer.py --teacher ring8 --seeds 0 1 2 --multiples 1 2 4 --workers 2

Runs through ``bench/gmm_table.py`` (same run layout, resumable) under ``<runs>/x<k>``; writes ``<out>.json`` (final
measures of every run and the curves) and ``<out>.png`` (each measure against steps, mean ± std over seeds, one line
per length and divergence).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

import gmm_table
from common import earlier_rows, parse_with_overrides, save_figure, write_json

MEASURES = (("off_mode", "off-mode fraction"), ("tv_on_mode", "on-mode mass TV"), ("nll", "exact NLL"),
            ("nll_teacher_width", "NLL at the teacher's width"), ("mode_scale", "mode scale (1 = teacher's width)"),
            ("mode_profile", "mode profile error (0 = teacher's shape)"), ("mode_recall", "mode recall"))


def curves(runs: list[dict]) -> dict:
    """``{run: [eval rows]}`` from each run's ``eval.jsonl``."""
    out = {}
    for r in runs:
        path = os.path.join(r["run"], "eval.jsonl")
        if "error" not in r and os.path.isfile(path):
            with open(path) as fh:
                out[r["run"]] = [json.loads(line) for line in fh]
    return out


def figure(path, runs, curve, ceiling, ref):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.2 * len(MEASURES), 3.4))
    groups = sorted({(r["divergence"], r["multiple"]) for r in runs if r["run"] in curve})
    for ax, (key, label) in zip(axes, MEASURES):
        for div, k in groups:
            rs = [curve[r["run"]] for r in runs if (r["divergence"], r["multiple"]) == (div, k) and r["run"] in curve]
            steps = sorted({row["steps"] for c in rs for row in c})
            vals = np.array([[next((row.get(key, np.nan) for row in c if row["steps"] == s), np.nan) for s in steps]
                             for c in rs])
            mean, std = np.nanmean(vals, 0), np.nanstd(vals, 0)
            line, = ax.plot(steps, mean, marker="o", ms=3, label=f"{div} {k}x")
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        if ceiling and all(key in c for c in ceiling):  # runs measured before mode_scale existed have none
            v = np.array([c[key] for c in ceiling])
            ax.axhline(v.mean(), color="k", ls="--", lw=1, label="PF regression (1x budget)")
        if key in ref:
            ax.axhline(ref[key], color="grey", ls=":", lw=1, label="teacher's own samples")
        ax.set_xlabel("distillation steps")
        ax.set_title(label)
    axes[0].legend(fontsize=7)
    save_figure(fig, path, dpi=90)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="ring8")
    p.add_argument("--objectives", nargs="+", default=["fdistill:fkl", "fdistill:js", "fdistill:rkl"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--multiples", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--steps", type=int, default=500, help="the 1x distillation steps (the recipe's train.steps)")
    p.add_argument("--every", type=int, default=250, help="train.eval_every")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-baseline", action="store_true", help="leave out the regression ceiling (run it once per "
                   "teacher when several sweeps share it)")
    p.add_argument("--runs", default="runs/gmm_longer")
    p.add_argument("--out", default="bench/results/gmm_longer")
    p.add_argument("overrides", nargs="*")
    a = parse_with_overrides(p, argv)  # key=value overrides anywhere, even right after a list option
    for attr in ("objectives",):
        a.overrides += [o for o in getattr(a, attr) if "=" in o]
        setattr(a, attr, [o for o in getattr(a, attr) if "=" not in o])
    ref = gmm_table.teacher_reference(a.teacher)
    # the rows of the lengths this call does not run (an earlier call's --multiples) stay in the file, and the earlier
    # call's curves: a run reused from its recorded row (its directory gone) keeps its curve
    runs, earlier = earlier_rows(a.out + ".json", lambda r: r.get("multiple") in a.multiples)
    kept = earlier.get("curves", {})
    lengths = sorted({r["multiple"] for r in runs} | set(a.multiples))
    for i, k in enumerate(a.multiples):
        extra = [f"train.steps={k * a.steps}", f"train.eval_every={a.every}", *a.overrides]
        out = f"{a.out}_x{k}"
        base = ["--baseline"] if k == 1 and not a.no_baseline else []
        gmm_table.main(["--teachers", a.teacher, "--objectives", *a.objectives, *base, "--seeds",
                        *map(str, a.seeds), "--workers", str(a.workers), "--runs", os.path.join(a.runs, f"x{k}"),
                        "--out", out, *extra])
        with open(out + ".json") as fh:
            runs += [dict(r, multiple=k) for r in json.load(fh)["runs"]]
        # written after each length, so a sweep stopped before 4x keeps its 1x and 2x rows ("unfinished" lists the rest)
        ceiling = [r for r in runs if r["objective"] == "regress" and "error" not in r]
        students = [r for r in runs if r["objective"] != "regress"]
        curve = {**kept, **curves(students)}
        curve = {r["run"]: curve[r["run"]] for r in students if r["run"] in curve}
        write_json(a.out + ".json", {"teacher": a.teacher, "multiples": lengths, "steps": a.steps,
                                     "unfinished": a.multiples[i + 1:], "runs": runs, "curves": curve,
                                     "teacher_reference": {m: ref[m] for m, _ in MEASURES}})
        figure(a.out + ".png", students, curve, ceiling, ref)
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
