"""The digits teacher's training curve: train in stages of ``--every`` steps (one resumed ``train.py`` per stage)
and score the teacher after each (Heun, 18 levels = 35 evaluations; FD-digits, precision / recall with k = 3 and
the class histogram's TV against the real digits' on ``--num-samples`` samples). Stops when the FD has not improved
on its best by ``--rel-tol`` for ``--patience`` evaluations (the teacher has stopped improving), at ``--max-steps``,
or when ``--budget-min`` minutes of this and earlier launches are spent. Resumable: run it again with the same
``--out`` and it continues from the last scored stage (the training run resumes from its checkpoint).

    python bench/digits_teacher_curve.py --out runs/digits_teacher_curve                 # configs/digits-teacher.yaml
    python bench/digits_teacher_curve.py --out runs/dtc_small network.channels=[16,32,32] train.lr=5e-4

Writes ``OUT/curve.json`` (one row per stage, the settings, the stopping reason), ``OUT/curve.png`` (FD, recall and
class TV against steps) and keeps every stage's teacher (``OUT/teachers/step-NNNNNN``) so that a student can be
distilled from any point of the curve. The run itself is ``OUT/run`` (``--config`` plus the overrides).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import digits_score  # noqa: E402
from common import parse_with_overrides, save_figure, write_json  # noqa: E402


def score_teacher(teacher_dir: str, scorer, num_samples: int, num_steps: int, seed: int) -> dict:
    """The teacher's scores with Heun at ``num_steps`` levels (``2 num_steps - 1`` evaluations)."""
    from fdistill.saved_models import load_denoiser
    from samplers import MultiStepGenerator

    gen = MultiStepGenerator(load_denoiser(teacher_dir), "heun", num_steps)
    return {**scorer.score(gen, num_samples, seed), "nfe": gen.nfe}


def plateau(rows: list[dict], patience: int, rel_tol: float) -> str | None:
    """Why the curve has stopped improving, or ``None``: the last ``patience`` scores all came after the best one
    and none of them improved on the best score before it by ``rel_tol`` (relative FD)."""
    if len(rows) <= patience:
        return None
    head, tail = rows[:-patience], rows[-patience:]
    best = min(r["FD-digits"] for r in head)
    if all(r["FD-digits"] > best * (1 - rel_tol) for r in tail):
        return f"no gain of {rel_tol:.0%} on the best FD ({best:.3f}) in the last {patience} scores"
    return None


def plot(curve: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = curve["rows"]
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, key, label in zip(axes, ("FD-digits", "recall", "class_tv"),
                              ("FD-digits (35 NFE, lower is better)", "recall (k = 3)", "class TV vs real digits")):
        ax.plot(steps, [r[key] for r in rows], "o-")
        ax.set_xlabel("teacher training steps")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")  # the plateau is a few FD units after a fall of two orders of magnitude
    best = curve.get("best")
    if best:
        axes[0].axvline(best["step"], color="gray", ls=":", label=f"best {best['FD-digits']:.2f} at {best['step']}")
        axes[0].legend(fontsize=8)
    stop = f"; stopped at {steps[-1]}: {curve['stopped']}" if curve.get("stopped") else ""
    fig.suptitle(f"digits teacher: {curve['settings']['label']}{stop}", fontsize=9)
    save_figure(fig, path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/digits_teacher_curve")
    p.add_argument("--config", default="configs/digits-teacher.yaml")
    p.add_argument("--every", type=int, default=1000, help="steps between scores")
    p.add_argument("--max-steps", type=int, default=20000)
    p.add_argument("--patience", type=int, default=3, help="scores without a gain of --rel-tol on the best")
    p.add_argument("--rel-tol", type=float, default=0.03)
    p.add_argument("--budget-min", type=float, default=60.0, help="wall minutes for training and scoring, all "
                                                                   "launches together")
    p.add_argument("--num-samples", type=int, default=2000)
    p.add_argument("--num-steps", type=int, default=18, help="Heun levels (2 n - 1 evaluations)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of the scores")
    p.add_argument("--classifier-steps", type=int, default=1500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--label", default=None)
    p.add_argument("overrides", nargs="*", help="train.py key=value overrides (not out_dir / train.steps)")
    a = parse_with_overrides(p, argv)  # key=value overrides anywhere, even right after a list option
    for o in a.overrides:
        if o.split("=", 1)[0] in ("out_dir", "train.steps", "resume"):
            raise SystemExit(f"{o!r}: the curve sets out_dir, train.steps and resume itself")
    import torch

    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "curve.json")
    settings = {"config": a.config, "overrides": a.overrides, "every": a.every, "num_samples": a.num_samples,
                "num_steps": a.num_steps, "seed": a.seed, "rel_tol": a.rel_tol, "patience": a.patience,
                "label": a.label or " ".join([os.path.basename(a.config)] + a.overrides)}
    curve = {"benchmark": "digits_teacher_curve", "settings": settings, "rows": [], "spent_s": 0.0}
    if os.path.isfile(path):
        with open(path) as fh:
            old = json.load(fh)
        if {k: v for k, v in old["settings"].items() if k != "label"} != \
                {k: v for k, v in settings.items() if k != "label"}:
            raise SystemExit(f"{path} was made with other settings ({old['settings']}); use another --out")
        curve = old
    scorer = digits_score.DigitsScorer(a.out, a.classifier_steps, a.seed, check=False)
    run_dir = os.path.join(a.out, "run")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    while True:
        rows = curve["rows"]
        best = min(rows, key=lambda r: r["FD-digits"]) if rows else None
        curve["best"] = best
        reason = plateau(rows, a.patience, a.rel_tol)
        step = (rows[-1]["step"] if rows else 0) + a.every
        if reason is None and step > a.max_steps:
            reason = f"max steps {a.max_steps}"
        if reason is None and curve["spent_s"] >= 60 * a.budget_min:
            reason = f"budget of {a.budget_min} min spent"
        if reason:
            curve["stopped"] = reason
            write_json(path, curve)
            plot(curve, os.path.join(a.out, "curve.png"))
            print(f"stopped: {reason}; best FD-digits {best['FD-digits']:.3f} at step {best['step']}")
            return 0
        t = time.time()
        cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", a.config, f"out_dir={run_dir}",
               f"train.steps={step}", "resume=latest", "log.progress=false", f"train.checkpoint_every={a.every}",
               f"train.sample_every={a.every}"] + a.overrides
        with open(os.path.join(a.out, "train.log"), "a") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        train_s = time.time() - t
        kept = os.path.join(a.out, "teachers", f"step-{step:06d}")
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(os.path.join(run_dir, "teacher"), kept)
        row = {"step": step, "train_wall_s": round(train_s, 1)}
        row.update(score_teacher(kept, scorer, a.num_samples, a.num_steps, a.seed))
        curve["spent_s"] += time.time() - t
        rows.append(row)
        write_json(path, curve)
        plot(curve, os.path.join(a.out, "curve.png"))
        print(f"step {step}: FD-digits {row['FD-digits']:.3f}, precision {row['precision']:.3f}, recall "
              f"{row['recall']:.3f}, class TV {row['class_tv']:.3f} ({train_s:.0f} s training, "
              f"{row['eval_wall_s']:.0f} s scoring)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
