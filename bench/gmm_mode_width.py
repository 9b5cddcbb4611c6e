"""How wide are the students' modes? For each run of bench/gmm_table.py: the mean squared Mahalanobis distance per
dimension of its on-mode samples to their nearest mode (MATH §7's on-mode rule), against the same number for exact
teacher samples. Below the teacher's: modes narrower than the teacher's (which lowers the NLL and the off-mode
fraction without matching the teacher better); above: wider.

    python bench/gmm_mode_width.py --teachers ring8 grid25 gmm16d blobs6 aniso8d \\
        --roots runs/gmm_table runs/gmm_table_fitted_fake --out bench/results/gmm_mode_width
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

import gmm_table
from common import write_markdown


def mode_width(gmm, x: torch.Tensor) -> float:
    """Mean of ``||(x - mu_k) / s_k||^2 / d`` over on-mode samples, ``k`` the nearest mode (Mahalanobis; the squared
    counterpart of ``eval.gmm``'s mode scale, MATH §7, before dividing by the exact truncated mean)."""
    from eval.gmm import on_mode

    on, _, m2 = on_mode(x.double(), gmm)
    return float(m2[on].mean()) / x.shape[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teachers", nargs="+", default=["ring8", "grid25", "gmm16d", "blobs6", "aniso8d"])
    p.add_argument("--roots", nargs="+", default=["runs/gmm_table", "runs/gmm_table_fitted_fake"])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--out", default="bench/results/gmm_mode_width")
    a = p.parse_args(argv)
    import fdistill

    rows = []
    for t in a.teachers:
        gmm = gmm_table.teacher_of(t)
        own = mode_width(gmm, gmm.sample(a.n, generator=torch.Generator().manual_seed(0)))
        for root in a.roots:
            folder = os.path.join(root, t.replace("*", "x"))
            for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
                if os.path.isdir(os.path.join(folder, name, "generator")):
                    x = fdistill.load_generator(os.path.join(folder, name)).sample(a.n, seed=0)
                    rows.append({"teacher": t, "root": root, "run": name, "width": mode_width(gmm, x),
                                 "teacher_width": own})
    with open(a.out + ".json", "w") as fh:
        json.dump(rows, fh, indent=1)
    lines = ["| teacher | runs | student | width, mean ± std over seeds (teacher's own) |", "|---|---|---|---|"]
    for t in a.teachers:
        for root in a.roots:
            for student in sorted({r["run"].rsplit("-s", 1)[0] for r in rows if r["teacher"] == t and r["root"] == root}):
                v = np.array([r["width"] for r in rows if r["teacher"] == t and r["root"] == root
                              and r["run"].rsplit("-s", 1)[0] == student])
                own = next(r["teacher_width"] for r in rows if r["teacher"] == t)
                lines.append(f"| {t} | {root} | {student} | {v.mean():.3f} ± {v.std():.3f} ({own:.3f}) |")
    write_markdown(a.out + ".md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
