"""Issue 24, item 4: the per-class histogram of each digits student against its teacher's — the image-side
counterpart of the mixtures' on-mode mass TV.

Reads the scores that ``bench/digits_students.py`` / ``bench/digits_score_exports.py`` stored (each holds the
``class_histogram`` of its samples under the digits classifier) from one or more results folders, and writes

- ``OUT.md`` / ``OUT.json``: per class, the real digits' label frequencies, the teacher's histogram and each
  student variant's (mean ± std over training seeds), with two totals per variant: the TV to the teacher's histogram
  (per seed, then mean ± std) and the stored class TV to the real digits;
- ``OUT.png``: grouped bars, one group per class, error bars = std over seeds.

A model scored on several sample seeds (``-seed<S>`` files) counts with the mean of its histograms.

    python bench/digits_class_histogram.py --results runs/ds-pool32k/results --step 4000 --num-samples 10000 \
        --out bench/results/digits_class_histogram
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from common import save_figure, write_json, write_markdown  # noqa: E402
from digits_score import DEFAULT_SAMPLES  # noqa: E402
from digits_students import mean_std  # noqa: E402

from eval.digits_classifier import class_tv  # noqa: E402

NUM_CLASSES = 10
# <variant>-s<seed>[-ema<d>]@<step>[-n<N>][-seed<S>].json, and teacher[-n<N>][-seed<S>].json
STUDENT = re.compile(r"^(?P<variant>.+)-s(?P<seed>\d+)(?:-ema(?P<ema>[0-9.]+))?@(?P<step>\d+)"
                     r"(?:-n(?P<n>\d+))?(?:-seed(?P<sseed>\d+))?\.json$")
TEACHER = re.compile(r"^teacher(?:-n(?P<n>\d+))?(?:-seed(?P<sseed>\d+))?\.json$")


def real_label_frequencies() -> np.ndarray:
    """The 1797 real digits' label frequencies (scikit-learn's digits, the set every FD-digits is measured against)."""
    from sklearn.datasets import load_digits

    labels = load_digits().target
    return np.bincount(labels, minlength=NUM_CLASSES) / len(labels)


def collect(folders: list[str], step: int, num_samples: int, ema: str = "") -> tuple[list, dict]:
    """The teacher's histograms (one per sample seed) and, per student variant, per training seed, its histograms
    (one per sample seed), with the stored class TV to the real digits. Only scores on ``num_samples`` samples, of
    ``step`` and of the EMA ``ema`` ('' = the first) count; each file is read once even if folders overlap."""
    teacher, students, seen = [], {}, set()
    want_n = None if num_samples == DEFAULT_SAMPLES else str(num_samples)
    for folder in folders:
        for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
            name = os.path.basename(path)
            if name in seen:
                continue
            t, s = TEACHER.match(name), STUDENT.match(name)
            m = t or s
            if m is None or m["n"] != want_n:
                continue
            if s is not None and (int(s["step"]) != step or (s["ema"] or "") != ema):
                continue
            with open(path) as fh:
                score = json.load(fh)
            if "class_histogram" not in score:
                continue
            seen.add(name)
            if t is not None:
                teacher.append(score["class_histogram"])
            else:
                runs = students.setdefault(s["variant"], {}).setdefault(int(s["seed"]), {"hist": [], "class_tv": []})
                runs["hist"].append(score["class_histogram"])
                runs["class_tv"].append(score["class_tv"])
    return teacher, students


def summarise(teacher: list, students: dict) -> dict:
    """Per-class means and the TVs of ``collect``'s histograms (see the module docstring)."""
    if not teacher:
        raise SystemExit("no teacher score with a class histogram among the results (score it with --teacher)")
    t_hist = np.mean(np.asarray(teacher, float), axis=0)
    out = {"teacher": {"histogram": t_hist.tolist(), "sample_seeds": len(teacher)}, "students": {}}
    for variant, seeds in sorted(students.items()):
        per_seed = {seed: np.mean(np.asarray(r["hist"], float), axis=0) for seed, r in sorted(seeds.items())}
        hists = np.stack(list(per_seed.values()))
        tv_teacher = [class_tv(h, t_hist) for h in per_seed.values()]
        tv_real = [float(np.mean(r["class_tv"])) for _, r in sorted(seeds.items())]
        out["students"][variant] = {
            "seeds": list(per_seed), "histogram_mean": hists.mean(0).tolist(),
            "histogram_std": (hists.std(0, ddof=1) if len(hists) > 1 else np.zeros(NUM_CLASSES)).tolist(),
            "tv_to_teacher": tv_teacher, "class_tv_to_real": tv_real}
    return out


def _mean_std(values: list[float]) -> str:
    return "{:.3f} ± {:.3f}".format(*mean_std(values))


def markdown(summary: dict, real: np.ndarray) -> list[str]:
    variants = list(summary["students"])
    lines = ["| class | real digits | teacher | " + " | ".join(variants) + " |",
             "|---|---|---|" + "---|" * len(variants)]
    t = summary["teacher"]["histogram"]
    for c in range(NUM_CLASSES):
        cells = [f"{summary['students'][v]['histogram_mean'][c]:.3f} ± {summary['students'][v]['histogram_std'][c]:.3f}"
                 for v in variants]
        lines.append(f"| {c} | {real[c]:.3f} | {t[c]:.3f} | " + " | ".join(cells) + " |")
    lines.append("| TV to the teacher | | 0 | " + " | ".join(
        _mean_std(summary["students"][v]["tv_to_teacher"]) for v in variants) + " |")
    lines.append("| class TV to the real digits (classifier) | | | " + " | ".join(
        _mean_std(summary["students"][v]["class_tv_to_real"]) for v in variants) + " |")
    lines.append("| training seeds | | | " + " | ".join(
        ", ".join(map(str, summary["students"][v]["seeds"])) for v in variants) + " |")
    return lines


def figure(path: str, summary: dict, real: np.ndarray) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [("real digits (labels)", real, None), ("teacher", np.asarray(summary["teacher"]["histogram"]), None)]
    bars += [(v, np.asarray(s["histogram_mean"]), np.asarray(s["histogram_std"]))
             for v, s in summary["students"].items()]
    width = 0.8 / len(bars)
    fig, (ax, dx) = plt.subplots(2, 1, figsize=(10, 5.4), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    x = np.arange(NUM_CLASSES)
    teacher = bars[1][1]
    for i, (label, h, err) in enumerate(bars):
        offset = (i - (len(bars) - 1) / 2) * width
        ax.bar(x + offset, h, width, yerr=err, label=label, capsize=2)
        if i != 1:  # the lower panel: each histogram less the teacher's
            dx.bar(x + offset, h - teacher, width, yerr=err, color=f"C{i}", capsize=2)
    ax.axhline(0.1, color="grey", lw=0.6, ls=":")
    dx.axhline(0.0, color="C1", lw=1.0)
    ax.set_ylabel("fraction of samples")
    dx.set_ylabel("minus the teacher's")
    dx.set_xticks(x)
    dx.set_xlabel("class (digits classifier)")
    ax.legend(fontsize=8, ncol=min(len(bars), 5))
    ax.set_title("class histogram: students (mean ± std over seeds) against the teacher")
    save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", nargs="+", required=True, help="folders of stored scores (OUT/results of a sweep)")
    p.add_argument("--step", type=int, required=True, help="the students' step count to compare")
    p.add_argument("--num-samples", type=int, default=DEFAULT_SAMPLES, help="the scores' sample count")
    p.add_argument("--ema", default="", help="the EMA decay of the exports to compare ('' = each run's first)")
    p.add_argument("--out", required=True, help="OUT.{md,json,png}")
    a = p.parse_args(argv)
    missing = [f for f in a.results if not os.path.isdir(f)]
    if missing:
        p.error(f"--results: no such folder {missing}")
    teacher, students = collect(a.results, a.step, a.num_samples, a.ema)
    if not students:
        p.error(f"no student score of step {a.step} on {a.num_samples} samples (EMA {a.ema or 'first'}) with a "
                f"class histogram in {a.results}")
    summary = summarise(teacher, students)
    real = real_label_frequencies()
    summary.update(real_digits=real.tolist(), step=a.step, num_samples=a.num_samples, ema=a.ema or "first",
                   results=a.results, command=" ".join(sys.argv))
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    write_json(a.out + ".json", summary)
    write_markdown(a.out + ".md", markdown(summary, real))
    figure(a.out + ".png", summary, real)


if __name__ == "__main__":
    main()
