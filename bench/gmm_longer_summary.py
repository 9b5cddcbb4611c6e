"""Issue 23's "longer never hurts" in one table and one figure: every teacher x divergence of the longer-training sweep
(``bench/gmm_longer.py`` results), each measure at 1x, 2x and 4x the distillation steps as mean ± std over seeds, and a
verdict per measure — a longer run is "not worse" when its mean is better than the 1x mean, or worse by no more than
the larger of the two seed spreads (std over seeds) and the measure's own sampling noise (its std over 5 draws of the
teacher's own samples, as many as a run is measured on); mode recall and the mode scale's distance from 1 likewise.

    python bench/gmm_longer_summary.py                        # today's default (DEFAULT_TAG: the rate budget)
    python bench/gmm_longer_summary.py --tag _ws750 --out bench/results/gmm_longer_summary_ws750  # the full rate
    python bench/gmm_longer_summary.py --tag _r1b --out bench/results/gmm_longer_summary_r1b \\
        --ceiling 'bench/results/gmm_ceiling_{teacher}.json' 'bench/results/gmm_ceiling70_{teacher}.json'  # before
    python bench/gmm_longer_summary.py --probe 'full rate=_ws750' --readme longer-default  # + a variant, README

Reads ``bench/results/gmm_longer_<teacher>_<div><tag>.json`` (pairs and lengths not yet measured are listed) and,
for the ceiling line, the probability-flow regression rows of the first ``--ceiling`` pattern that has them for the
teacher (``bench/gmm_table.py`` results with ``{teacher}`` in their names; by default the ceiling at today's budget,
``bench/results/gmm_table_ws750_<teacher>.json``, else the R1b recipe's, ``bench/results/gmm_ceiling_<teacher>.json``,
else the one made before it (loss in data units, Adam beta2 0.999), ``bench/results/gmm_ceiling70_<teacher>.json``;
none drawn where no pattern has rows; the file each teacher's line came from is recorded in ``<out>.json``). A longer
run worse than 1x but not worse than the ceiling (the same test) is marked "at the ceiling". Writes ``<out>.md``,
``<out>.json``, ``<out>.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from common import save_figure
from gmm_table import REPO

# (key, label, sense): +1 higher is better, -1 lower is better, 0 closer to 1 is better (MATH §7's measures)
MEASURES = (("mode_recall", "mode recall", 1), ("tv_on_mode", "on-mode mass TV", -1),
            ("off_mode", "off-mode fraction", -1), ("nll", "exact NLL", -1),
            ("nll_teacher_width", "NLL at the teacher's width", -1), ("mode_scale", "mode scale (1 = teacher)", 0),
            ("mode_profile", "mode profile error (0 = teacher)", -1))  # runs before 2026-12-05 have no profile: "–"


# today's default (the rate budget, 2026-12-06): bench/gmm_longer_sweep.sh's runs, the equal-rate runs of the probe
# that set the same rates by hand (train.lr 2.5e-5 at 4x, 5e-5 at 2x: train.lr enters only the generator's rate), and
# the full-rate recipe's 1x runs, which are the budget's 1x runs too; and gmm16d forward KL's seeds 3-4 at 1x 2x 4x
DEFAULT_TAG = "_lrb+_ws750_lr25e-6+_ws750_lr50e-6+_ws750@1+_lrb_s34"
COLOURS = {"fkl": "C0", "js": "C2", "rkl": "C1"}  # one colour per divergence in every panel


def badness(key: str, v: np.ndarray) -> np.ndarray:
    """Each measure turned into 'lower is better'."""
    sense = next(s for k, _, s in MEASURES if k == key)
    return -v if sense > 0 else (np.abs(v - 1.0) if sense == 0 else v)


def not_worse(key: str, short: list[float], long: list[float], floor: float = 0.0) -> bool:
    """The longer runs' mean is worse than the 1x runs' (in the measure's sense) by at most the larger seed spread or
    ``floor``, the measure's sampling noise."""
    a, b = badness(key, np.asarray(short, float)), badness(key, np.asarray(long, float))
    return bool(b.mean() <= a.mean() + max(a.std(), b.std(), floor) + 1e-12)


def sampling_noise(teacher: str, n: int, draws: int = 5) -> dict:
    """Std of each measure over ``draws`` sets of ``n`` exact teacher samples: how much a measure moves between two
    draws of the same distribution (seeds 1..draws; ``bench/gmm_table.teacher_reference`` uses seed 0)."""
    import torch

    from eval.gmm import gmm_metrics
    from gmm_table import teacher_of

    gmm = teacher_of(teacher)
    ms = [gmm_metrics(gmm.sample(n, generator=torch.Generator().manual_seed(s)), gmm) for s in range(1, draws + 1)]
    return {key: float(np.std([m[key] for m in ms])) for key, _, _ in MEASURES if all(key in m for m in ms)}


def load_pair(path: str) -> dict[int, list[dict]]:
    """``{multiple: [final measures of each seed]}`` of one gmm_longer result (students only)."""
    with open(path) as fh:
        runs = json.load(fh)["runs"]
    out: dict[int, list[dict]] = {}
    for r in runs:
        if r.get("objective") != "regress" and "error" not in r:
            out.setdefault(int(r["multiple"]), []).append(r)
    return out


def merged_pair(results: str, teacher: str, div: str, tags: str) -> tuple[dict[int, list[dict]], list[str]]:
    """``load_pair`` of ``teacher`` x ``div`` merged over ``TAG[@K,K...]+TAG...`` (one recipe made by several commands:
    the first tag's run of each (length, seed) wins, and seeds that only another tag has join it, e.g. a call for
    seeds 3-4; ``@K,K`` takes only those lengths from its tag, e.g. ``_ws750@1``: the full-rate recipe's 1x runs,
    which are the rate budget's 1x runs too), and the files read."""
    by_k: dict[int, dict[int, dict]] = {}
    paths = []
    for spec in reversed(tags.split("+")):
        tag, _, lengths = spec.partition("@")
        keep = {int(k) for k in lengths.split(",")} if lengths else None
        path = os.path.join(results, f"gmm_longer_{teacher.replace('*', 'x')}_{div}{tag}.json")
        if os.path.isfile(path):
            paths.insert(0, path)
            for k, rows in load_pair(path).items():
                if keep is None or k in keep:
                    by_k.setdefault(k, {}).update({r["seed"]: r for r in rows})
    return {k: [runs[s] for s in sorted(runs)] for k, runs in sorted(by_k.items())}, paths


def ceiling_rows(patterns: list[str], teacher: str) -> tuple[str, list[dict]]:
    """The probability-flow regression rows of ``teacher`` in the first of ``patterns`` that has any, and that file
    (``("", [])`` where none has)."""
    for pattern in patterns:
        path = pattern.format(teacher=teacher.replace("*", "x"))
        if not os.path.isfile(path):
            continue
        with open(path) as fh:
            res = json.load(fh)
        rows = [r for r in res["runs"] if r.get("objective") == "regress" and r.get("teacher") == teacher
                and "error" not in r]
        if rows:
            return path, rows
    return "", []


def summarise(results: dict, noise: dict, ceilings: dict | None = None) -> tuple[list[str], list[dict]]:
    """Markdown lines and verdict records from ``{(teacher, div): {multiple: [rows]}}``. A longer run worse than 1x
    but not worse than the teacher's regression ceiling (``ceilings``: ``{teacher: [rows]}``, the same test) is
    marked "at the ceiling": it reached what the generator gets from regressing the exact flow map."""
    ceilings = ceilings or {}
    head = "| teacher | divergence | steps | seeds | " + " | ".join(lbl for _, lbl, _ in MEASURES) + " |"
    lines = [head, "|" + "---|" * (4 + len(MEASURES))]
    verdicts = []
    for (t, div), by_k in results.items():
        ks = sorted(by_k)
        for k in ks:
            rs = by_k[k]
            cells = []
            for key, _, _ in MEASURES:
                v = [r[key] for r in rs if key in r]
                if len(v) < len(rs):
                    cells.append("–")
                    continue
                mark = ""
                if k != ks[0] and all(key in r for r in by_k[ks[0]]):
                    floor = noise.get(t, {}).get(key, 0.0)
                    ok = not_worse(key, [r[key] for r in by_k[ks[0]]], v, floor)
                    ceil = [r[key] for r in ceilings.get(t, []) if key in r]
                    at_ceiling = bool(not ok and ceil and not_worse(key, ceil, v, floor))
                    mark = "" if ok else " **worse**" + (" (at the ceiling)" if at_ceiling else "")
                    verdicts.append({"teacher": t, "divergence": div, "multiple": k, "measure": key,
                                     "not_worse": ok, "at_ceiling": at_ceiling,
                                     "mean_1x": float(np.mean([r[key] for r in by_k[ks[0]]])),
                                     "mean": float(np.mean(v)), "seeds": len(v)})
                fmt = "{:.2f}" if key in ("mode_recall", "nll", "nll_teacher_width") else "{:.3f}"
                cells.append((fmt + " ± " + fmt).format(np.mean(v), np.std(v)) + mark)
            steps = rs[0]["steps"]
            lines.append(f"| {t} | {div} | {k}× ({steps}) | {len(rs)} | " + " | ".join(cells) + " |")
    return lines, verdicts


def figure(path: str, results: dict, ceilings: dict, refs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teachers = list(dict.fromkeys(t for t, _ in results))
    fig, axes = plt.subplots(len(teachers), len(MEASURES), figsize=(3.3 * len(MEASURES), 2.8 * len(teachers)),
                             squeeze=False)
    for row, t in zip(axes, teachers):
        for ax, (key, label, _) in zip(row, MEASURES):
            for (tt, div), by_k in results.items():
                if tt != t:
                    continue
                ks = [k for k in sorted(by_k) if all(key in r for r in by_k[k])]
                if not ks:
                    continue
                steps = [by_k[k][0]["steps"] for k in ks]
                v = [np.array([r[key] for r in by_k[k]], float) for k in ks]
                ax.errorbar(steps, [x.mean() for x in v], yerr=[x.std() for x in v], marker="o", ms=4, capsize=3,
                            label=div, color=COLOURS.get(div))
            ceil = [r[key] for r in ceilings.get(t, []) if key in r]
            if ceil:
                ax.axhline(np.mean(ceil), color="k", ls="--", lw=1, label="PF regression ceiling (1x budget)")
            if key in refs.get(t, {}):
                ax.axhline(refs[t][key], color="grey", ls=":", lw=1, label="teacher's own samples")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{t}: {label}", fontsize=9)
            ax.set_xlabel("distillation steps", fontsize=8)
            ax.tick_params(labelsize=7)
        row[0].legend(fontsize=6)
    save_figure(fig, path, dpi=90)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teachers", nargs="+", default=["ring8", "grid25", "gmm16d"])
    p.add_argument("--divergences", nargs="+", default=["fkl", "js", "rkl"])
    p.add_argument("--tag", default=DEFAULT_TAG, help="result-name suffix of the recipe (bench/gmm_longer_sweep.sh "
                                                    "OUT_TAG); TAG[@K,K]+TAG... merges one recipe made by several "
                                                    "commands (the first tag's lengths win; @K,K: only those lengths)")
    p.add_argument("--results", default="bench/results", help="folder of the gmm_longer results")
    p.add_argument("--ceiling", nargs="+", default=["bench/results/gmm_table_ws750_{teacher}.json",
                                                    "bench/results/gmm_ceiling_{teacher}.json",
                                                    "bench/results/gmm_ceiling70_{teacher}.json"],
                   help="gmm_table results holding the ceiling rows ({teacher} is filled in); the first with rows "
                        "for a teacher is drawn")
    p.add_argument("--probe", action="append", default=[], metavar="LABEL=TAG[+TAG...]",
                   help="a variant of the recipe (its gmm_longer results tagged TAG, e.g. _ws750_rw2), in a second "
                        "table as divergence 'DIV LABEL'; a variant with no 1x runs is compared with the recipe's 1x "
                        "(a rule that changes only the longer runs). Several tags (the same variant made by other "
                        "commands, e.g. the rate budget and the lower train.lr it gives) are merged per length, the "
                        "first tag's runs first, as in --tag. Repeatable")
    p.add_argument("--out", default="bench/results/gmm_longer_summary_lrb")
    p.add_argument("--readme", metavar="MARKER", help="replace README.md's text between <!-- MARKER --> and "
                                                       "<!-- /MARKER --> with the summary (e.g. longer-default)")
    p.add_argument("--readme-path", default=os.path.join(REPO, "README.md"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    bad = [spec for spec in a.probe if not all(spec.partition("=")[::2])]
    if bad:
        p.error(f"--probe takes LABEL=TAG (e.g. 'lambda 2=_ws750_rw2'); got {bad}")
    results, missing, refs = {}, [], {}
    for t in a.teachers:
        for div in a.divergences:
            by_k, paths = merged_pair(a.results, t, div, a.tag)
            if not by_k:
                missing.append(f"{t}:{div}")
                continue
            results[(t, div)] = by_k
            for path in paths:
                with open(path) as fh:
                    res = json.load(fh)
                refs.setdefault(t, res.get("teacher_reference", {}))
                missing += [f"{t}:{div} {k}x" for k in res.get("unfinished", [])  # a sweep stopped between lengths
                            if k not in by_k]
    if not results:
        p.error(f"no gmm_longer results for {a.teachers} x {a.divergences} with tag {a.tag!r} in {a.results}")
    probes = {}
    for label, _, tags in (spec.partition("=") for spec in a.probe):
        for t in a.teachers:
            for div in a.divergences:
                by_k, _ = merged_pair(a.results, t, div, tags)
                if by_k:
                    base = results.get((t, div), {})
                    by_k = by_k if 1 in by_k or 1 not in base else {1: base[1], **by_k}
                    probes[(t, f"{div} {label}")] = dict(sorted(by_k.items()))
    found = {t: ceiling_rows(a.ceiling, t) for t in a.teachers}
    ceilings = {t: rows for t, (_, rows) in found.items()}
    noise = {t: sampling_noise(t, next(iter(by_k.values()))[0].get("n", 20000))
             for (t, _), by_k in {**results, **probes}.items()}
    lines, verdicts = summarise(results, noise, ceilings)
    worse = [v for v in verdicts if not v["not_worse"]]
    at_ceiling = sum(v["at_ceiling"] for v in worse)
    lines += ["", f"Longer not worse on {len(verdicts) - len(worse)}/{len(verdicts)} (pair, length, measure) "
              "comparisons with 1x" + (": worse on " + ", ".join(
                  f"{v['teacher']} {v['divergence']} {v['multiple']}x {v['measure']} ({v['mean_1x']:.3f} -> "
                  f"{v['mean']:.3f}{', at the ceiling' if v['at_ceiling'] else ''})" for v in worse) +
                  f"; {at_ceiling} of these {len(worse)} at the ceiling" if worse else ".")]
    if missing:
        lines.append("Not measured yet: " + ", ".join(missing) + ".")
    probe_lines, probe_verdicts = summarise(probes, noise, ceilings)
    if probes:
        worse = [v for v in probe_verdicts if not v["not_worse"]]
        lines += ["", "Variants of the recipe (" + "; ".join(a.probe) + "; a variant's 1x row is the recipe's where "
                  "it has none):", "", *probe_lines, "",
                  f"Variants: longer not worse on {len(probe_verdicts) - len(worse)}/{len(probe_verdicts)} comparisons"
                  + (": worse on " + ", ".join(f"{v['teacher']} {v['divergence']} {v['multiple']}x {v['measure']} "
                                               f"({v['mean_1x']:.3f} -> {v['mean']:.3f})" for v in worse)
                     if worse else "") + "."]
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with open(a.out + ".json", "w") as fh:
        json.dump({"verdicts": verdicts, "probe_verdicts": probe_verdicts, "probes": a.probe, "missing": missing,
                   "tag": a.tag, "sampling_noise": noise,
                   "ceiling_seeds": {t: len(c) for t, c in ceilings.items()},
                   "ceiling_from": {t: path for t, (path, _) in found.items()}}, fh, indent=1)
    figure(a.out + ".png", results, ceilings, refs)
    if a.readme:
        from gmm_table_merge import replace_between_markers

        replace_between_markers(a.readme_path, a.readme, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
