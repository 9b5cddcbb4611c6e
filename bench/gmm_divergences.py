"""Every objective on the analytic 8-mode mixture, same budget, several seeds: mode recall, per-mode mass TV and exact
NLL (MATH §7), plus one scatter plot per objective. CPU; the defaults of configs/gmm2d.yaml.

    python bench/gmm_divergences.py --seeds 0 1 --workers 2 train.steps=1000
    python bench/gmm_divergences.py train.steps=4000 --seeds 0 1 2 --workers 3 --runs runs/gmm_long \
        --out bench/results/gmm_long --objectives fdistill:rkl fdistill:fkl fdistill:js

Writes ``<out>.json`` (every run), ``<out>.md`` (mean ± std table) and ``<out>.png`` (seed-0 students).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from common import parse_with_overrides, recipe_words, same_overrides, save_figure

OBJECTIVES = [("fdistill", d) for d in ("rkl", "srkl", "js", "sh", "fkl", "jeffreys", "pearson", "neyman",
                                        "alpha:0.5")] + [("uni_instruct", d) for d in ("rkl", "fkl")] + \
             [("sid", "rkl")]


def run_one(name, div, seed, root, extra):
    out = os.path.join(root, f"{name}-{div.replace(':', '')}-s{seed}")
    metrics = os.path.join(out, "final_metrics.json")
    extra = [*recipe_words(extra), *extra]  # the recipe stated: a run of another recipe is not reused
    if os.path.isfile(metrics) and not same_overrides(out, extra):
        shutil.rmtree(out)  # a finished run with other settings (e.g. train.steps): train again
    if not os.path.isfile(metrics):
        cmd = [sys.executable, "train.py", "--config", "configs/gmm2d.yaml", f"out_dir={out}", f"seed={seed}",
               f"objective.name={name}", f"objective.divergence={div}", "log.progress=false", "log.trackers=[]",
               *extra]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode:
            return {"objective": name, "divergence": div, "seed": seed, "error": r.stderr[-2000:]}
    with open(metrics) as fh:
        m = json.load(fh)
    m.update(objective=name, divergence=div, seed=seed, run=out, light_mass=light_mode_mass(out, seed))
    return m


def light_mode_mass(run_dir, seed, n=20000):
    """Mean mass the student gives each light mode of ring8 (true weight 0.05), from ``n`` of its samples."""
    import fdistill
    from eval.gmm import mode_mass
    from fdistill.data import gmm_preset

    teacher = gmm_preset("ring8")
    x = fdistill.load_generator(run_dir).sample(n, seed=12345 + seed).double()
    mass, w = mode_mass(x, teacher), teacher.weights
    return float(mass[w < w.max()].mean())


def table(rows, objectives):
    lines = ["| objective | divergence | mode recall | modes covered (of 8) | mass TV | light-mode mass (true 0.05) "
             "| NLL (nats) |", "|---|---|---|---|---|---|---|"]
    for name, div in objectives:
        rs = [r for r in rows if r["objective"] == name and r["divergence"] == div and "error" not in r]
        if not rs:
            lines.append(f"| {name} | {div} | failed | | | | |")
            continue

        def ms(key, fmt="{:.3f}"):
            v = np.array([r[key] for r in rs], dtype=float)
            return (fmt + " ± " + fmt).format(v.mean(), v.std())

        cov = "/".join(str(r["modes_covered"]) for r in rs)
        lines.append(f"| {name} | {div} | {ms('mode_recall', '{:.2f}')} | {cov} | {ms('tv')} | {ms('light_mass')} "
                     f"| {ms('nll', '{:.2f}')} |")
    return "\n".join(lines)


def figure(rows, path, objectives):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    import fdistill
    from fdistill.data import gmm_preset

    teacher = gmm_preset("ring8")
    panels = [("teacher (exact)", teacher.sample(4000, generator=torch.Generator().manual_seed(0)))]
    for name, div in objectives:
        r = next((r for r in rows if r["objective"] == name and r["divergence"] == div and r["seed"] == 0
                  and "error" not in r), None)
        if r is not None:
            panels.append((f"{name} {div}", fdistill.load_generator(r["run"]).sample(4000, seed=0)))
    cols = 5
    fig, axes = plt.subplots((len(panels) + cols - 1) // cols, cols, figsize=(3 * cols, 3 * ((len(panels) + cols - 1)
                                                                                             // cols)))
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, x) in zip(axes.flat, panels):
        x = x.detach().float().cpu()
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.3, linewidths=0)
        ax.scatter(teacher.means[:, 0], teacher.means[:, 1], marker="x", c="red", s=20)
        ax.set_xlim(-3, 3), ax.set_ylim(-3, 3), ax.set_aspect("equal"), ax.set_title(title, fontsize=9)
    save_figure(fig, path, dpi=90)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--runs", default="runs/gmm_divergences")
    p.add_argument("--out", default="bench/results/gmm_divergences")
    p.add_argument("--objectives", nargs="+", metavar="NAME:DIV", help="a subset, e.g. fdistill:rkl fdistill:fkl")
    p.add_argument("overrides", nargs="*", help="extra key=value for every run")
    a = parse_with_overrides(p, argv)  # key=value overrides anywhere, even right after a list option
    # nargs="+" also takes key=value words that follow --objectives: they are overrides
    a.overrides += [o for o in a.objectives or [] if "=" in o]
    named = [o for o in a.objectives or [] if "=" not in o]
    bad = [o for o in named if ":" not in o]
    if bad:
        p.error(f"--objectives takes NAME:DIVERGENCE (e.g. fdistill:rkl uni_instruct:fkl); got {bad}")
    objectives = [tuple(o.split(":", 1)) for o in named] or OBJECTIVES
    jobs = [(n, d, s) for n, d in objectives for s in a.seeds]
    with ThreadPoolExecutor(a.workers) as pool:
        rows = list(pool.map(lambda j: run_one(*j, a.runs, a.overrides), jobs))
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    meta = {"date": datetime.date.today().isoformat(), "device": "cpu", "config": "configs/gmm2d.yaml",
            "overrides": a.overrides, "seeds": a.seeds}
    with open(a.out + ".json", "w") as fh:
        json.dump({"meta": meta, "runs": rows}, fh, indent=1)
    md = table(rows, objectives)
    with open(a.out + ".md", "w") as fh:
        fh.write(md + "\n")
    print(md)
    figure(rows, a.out + ".png", objectives)
    failed = [r for r in rows if "error" in r]
    for r in failed:
        print("FAILED", r["objective"], r["divergence"], r["seed"], r["error"][-500:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
