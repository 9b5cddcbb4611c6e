"""The shape of the students' modes, not one number: each exported generator's on-mode Mahalanobis-distance quantiles
over an exact sample's (MATH §7's mode profile, ``eval.gmm.mode_profile_ratios``) at q = 0.05 ... 0.90, with the mode
scale (one RMS) and the profile error (the mean |ratio - 1|) beside them; the teacher's own samples as the noise floor.
A group is ``label=glob`` over run folders (one per seed; mean ± std over them):

    python bench/gmm_mode_profile.py --teacher grid25 --out bench/results/gmm_mode_profile_grid25 \\
        "fkl 1x=runs/gmm_longer/ws099/x1/grid25/fdistill-fkl-s*" "fkl 4x=runs/gmm_longer/ws099/x4/grid25/fdistill-fkl-s*"

Writes ``<out>.json`` (every run's ratios and measures), ``<out>.md`` and ``<out>.png`` (ratio against q per group).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import sys

import numpy as np
import torch

import gmm_table
from common import save_figure, write_markdown


def measures(gmm, x: torch.Tensor) -> dict:
    """Mode scale, profile error and profile ratios of samples ``x`` (MATH §7)."""
    from eval.gmm import mode_profile, mode_profile_ratios, mode_scale, on_mode

    on, _, m2 = on_mode(x.double(), gmm)
    dim = math.prod(gmm.event_shape)
    return {"mode_scale": mode_scale(m2[on], dim), "mode_profile": mode_profile(m2[on], dim),
            "ratios": mode_profile_ratios(m2[on], dim), "off_mode": 1.0 - float(on.double().mean())}


def groups_of(specs: list[str]) -> dict[str, list[str]]:
    """``{label: sorted run folders}`` from ``label=glob`` words; an empty glob is an error that names it."""
    out = {}
    for spec in specs:
        if "=" not in spec:
            raise SystemExit(f"a group is label=glob (got {spec!r})")
        label, pattern = spec.split("=", 1)
        runs = sorted(glob.glob(pattern))
        if not runs:
            raise SystemExit(f"group {label!r}: no run folder matches {pattern!r}")
        out[label] = runs
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("groups", nargs="+", help="label=glob of run folders with an exported generator/")
    p.add_argument("--teacher", required=True)
    p.add_argument("--n", type=int, default=100_000, help="samples per generator (and of the teacher)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    import fdistill
    from eval.gmm import PROFILE_LEVELS

    gmm = gmm_table.teacher_of(a.teacher)
    groups = groups_of(a.groups)
    own = measures(gmm, gmm.sample(a.n, generator=torch.Generator().manual_seed(0)))
    rows = {label: [dict(run=r, **measures(gmm, fdistill.load_generator(r).sample(a.n, seed=0))) for r in runs]
            for label, runs in groups.items()}
    with open(a.out + ".json", "w") as fh:
        json.dump({"teacher": a.teacher, "n": a.n, "levels": list(PROFILE_LEVELS), "teacher_own": own,
                   "groups": rows}, fh, indent=1)

    def cell(v):
        return f"{np.mean(v):.3f} ± {np.std(v):.3f}"

    pick = [PROFILE_LEVELS.index(q) for q in (0.1, 0.25, 0.5, 0.75, 0.9)]
    lines = ["| group | seeds | mode scale | profile error | off-mode | " + " | ".join(
        f"Q({PROFILE_LEVELS[i]:g}) / exact" for i in pick) + " |", "|---|---|---|---|---|" + "---|" * len(pick)]
    lines.append(f"| teacher's own samples | – | {own['mode_scale']:.3f} | {own['mode_profile']:.3f} | "
                 f"{own['off_mode']:.3f} | " + " | ".join(f"{own['ratios'][i]:.3f}" for i in pick) + " |")
    for label, rs in rows.items():
        lines.append(f"| {label} | {len(rs)} | {cell([r['mode_scale'] for r in rs])} | "
                     f"{cell([r['mode_profile'] for r in rs])} | {cell([r['off_mode'] for r in rs])} | "
                     + " | ".join(cell([r['ratios'][i] for r in rs]) for i in pick) + " |")
    write_markdown(a.out + ".md", lines)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(PROFILE_LEVELS, own["ratios"], color="grey", ls=":", label="teacher's own samples")
    for label, rs in rows.items():
        v = np.array([r["ratios"] for r in rs])
        line, = ax.plot(PROFILE_LEVELS, v.mean(0), marker="o", ms=3, label=f"{label} ({len(rs)} seeds)")
        ax.fill_between(PROFILE_LEVELS, v.mean(0) - v.std(0), v.mean(0) + v.std(0), color=line.get_color(), alpha=0.15)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set(xlabel="q (share of the on-mode samples)", ylabel="Mahalanobis quantile / exact",
           title=f"{a.teacher}: the modes' radial profile (1 = the teacher's)")
    ax.legend(fontsize=7)
    save_figure(fig, a.out + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
