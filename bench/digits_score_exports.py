"""Score exported one-step digits students: every ``<run>/snap/step-<N>/generator*`` folder under the runs folder
(what ``bench/h100.sh decay`` / ``pool`` bring back from a GPU machine; tars given with ``--tars`` are unpacked there
first) and every ``<run>/gen_snapshots/step-<N>[-ema<d>]`` (what ``bench/digits_students.py --keep-snapshots``
keeps), with the scorer of ``bench/digits_score.py`` (FD-digits, precision / recall with k = 3, class TV, FD-check),
and a table of mean ± std over seeds per variant, EMA and step count.

    python bench/digits_score_exports.py --out runs/gpu_decay --work runs/pilot_fu5_ema998 --tars decay_*.tar
    python bench/digits_score_exports.py --out runs/pilot_fu5_ema998 --num-samples 10000 --steps 2800 4000 \
        --teacher bench/results/digits_teacher     # a sweep's snapshots on more samples

``--work`` is a folder whose classifier, check network and real-digits PNGs are reused (the ones that scored the runs
being compared, so the numbers are on one scale); a run ``<variant>-s<seed>`` is grouped with its other seeds. Each
score is written once (``OUT/results/<run>[-ema<d>]@<N>[-n<samples>][-seed<s>].json``, the names
``bench/digits_students.py`` gives) and reused when run again; the table is ``OUT/scores[-n<N>][-seeds…][-steps…]``.
``--teacher`` scores the teacher (Heun, 35 evaluations) on the same samples for the ratio column. With several
``--sample-seeds`` every model (the teacher too) is scored on each and its score is the mean: one FD-digits on 10000
samples moves by about ±0.25 with the samples alone (``bench/digits_pool_fd.py``). ``--stored`` adds the models whose
export is gone but whose scores are in ``OUT/results`` on every sample seed asked for (a fresh machine: copy a
``bench/results/*_scores`` folder there, and new seeds of a recipe join the old seeds' rows). A stored score that
names other feature networks than this scorer's (``"networks"``, another scale) is scored again, or refused when its
model is gone; scores from before the networks were recorded are reused, and a table that mixes them with recorded
ones says so (``"networks"`` in its JSON lists every set, ``null`` for unrecorded).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from common import write_json  # noqa: E402
from digits_score import DEFAULT_SAMPLE_SEED, DEFAULT_SAMPLES, read_score, result_tag  # noqa: E402
from digits_students import TARGET_DATAFREE, mean_std  # noqa: E402

TARGET_SEEDS = 3  # issue 24: the target is on a mean over 3 training seeds

SNAP = re.compile(r"(?P<run>[^/]+)/(?:snap/step-(?P<step>\d+)/generator(?:-ema(?P<ema>[0-9.]+))?"
                  r"|gen_snapshots/step-(?P<kstep>\d+)(?:-ema(?P<kema>[0-9.]+))?)$")


def exports(runs_dir: str) -> list[dict]:
    """Every exported generator folder under ``runs_dir`` (either layout): run, seed, variant, step, EMA tag ('' =
    the first EMA)."""
    found = []
    paths = (glob.glob(os.path.join(runs_dir, "*", "snap", "step-*", "generator*"))
             + glob.glob(os.path.join(runs_dir, "*", "gen_snapshots", "step-*")))
    for path in sorted(paths):
        m = SNAP.search(os.path.relpath(path, runs_dir).replace(os.sep, "/"))
        if not m or not os.path.isdir(path):
            continue
        run = m["run"]
        variant, _, seed = run.rpartition("-s")
        found.append({"path": path, "run": run, "variant": variant or run, "seed": seed,
                      "step": int(m["step"] or m["kstep"]), "ema": m["ema"] or m["kema"] or ""})
    return found


STORED = re.compile(r"^(?P<run>.+?)(?:-ema(?P<ema>[0-9.]+))?@(?P<step>\d+)$")


def stored_exports(results_dir: str, num_samples: int, sample_seeds: list[int]) -> list[dict]:
    """The models scored into ``results_dir`` on every one of ``sample_seeds`` (``num_samples`` each) whose export
    need not be on disk any more (``--stored``: a fresh machine, the runs deleted, the scores kept): the entries
    ``exports`` would give, with no path."""
    suffix = result_tag("", num_samples, sample_seeds[0]) + ".json"
    found = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*@*" + suffix))):
        base = os.path.basename(path)[: -len(suffix)]
        m = STORED.match(base)
        if not m or not all(os.path.isfile(os.path.join(results_dir, result_tag(base, num_samples, s) + ".json"))
                            for s in sample_seeds):
            continue
        variant, _, seed = m["run"].rpartition("-s")
        found.append({"path": None, "run": m["run"], "variant": variant or m["run"], "seed": seed,
                      "step": int(m["step"]), "ema": m["ema"] or ""})
    return found


def tag(e: dict, num_samples: int, sample_seed: int) -> str:
    return result_tag(f"{e['run']}{'-ema' + e['ema'] if e['ema'] else ''}@{e['step']}", num_samples, sample_seed)


SCORE_KEYS = ("FD-digits", "FD-check", "precision", "recall", "class_tv")


def mean_score(scores: list[dict]) -> dict:
    """One model's scores on several sample seeds: the mean of each measure, and each seed's FD-digits."""
    out = {k: sum(s[k] for s in scores) / len(scores) for k in SCORE_KEYS if all(k in s for s in scores)}
    return out | {"FD-digits_each": [round(s["FD-digits"], 3) for s in scores]}


def summarise(scored: list[dict]) -> list[dict]:
    """Mean ± std of FD-digits (and FD-check, recall, class TV) over seeds, per (variant, EMA, step)."""
    groups: dict[tuple, list[dict]] = {}
    for e in scored:
        groups.setdefault((e["variant"], e["ema"], e["step"]), []).append(e)
    rows = []
    for (variant, ema, step), es in sorted(groups.items()):
        es = sorted(es, key=lambda e: (not e["seed"].isdigit(), int(e["seed"]) if e["seed"].isdigit() else e["seed"]))
        row = {"variant": variant, "ema": ema or "first", "step": step, "seeds": [e["seed"] for e in es]}
        for key in ("FD-digits", "FD-check", "precision", "recall", "class_tv"):
            if all(key in e["score"] for e in es):
                row[key], row[key + "_std"] = mean_std([e["score"][key] for e in es])
        row["fd_values"] = [e["score"]["FD-digits"] for e in es]  # unrounded: tables round once, where they print
        rows.append(row)
    return rows


def datafree_verdicts(rows: list[dict], teacher_fd: float | None) -> list[dict]:
    """Issue 24's data-free target per (step, EMA): the best ``datafree-*`` variant's mean FD-digits over seeds within
    ``TARGET_DATAFREE`` x the teacher's, on at least ``TARGET_SEEDS`` seeds."""
    if not teacher_fd:
        return []
    out = []
    for step, ema in sorted({(r["step"], r["ema"]) for r in rows if r["variant"].startswith("datafree")}):
        group = [r for r in rows if r["variant"].startswith("datafree") and (r["step"], r["ema"]) == (step, ema)]
        best = min(group, key=lambda r: r["FD-digits"])
        ratio = best["FD-digits"] / teacher_fd
        out.append({"step": step, "ema": ema, "variant": best["variant"], "ratio": ratio, "seeds": len(best["seeds"]),
                    "met": ratio <= TARGET_DATAFREE and len(best["seeds"]) >= TARGET_SEEDS})
    return out


def markdown(rows: list[dict], teacher_fd: float | None) -> str:
    lines = ["| variant | EMA | step | FD-digits | / teacher | FD-check | precision | recall | class TV | seeds (FD each) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['FD-digits'] / teacher_fd:.2f}" if teacher_fd else "-"
        precision = f"{r['precision']:.3f}" if "precision" in r else "-"
        each = ", ".join(f"{s}: {v:.3f}" for s, v in zip(r["seeds"], r["fd_values"]))
        lines.append(f"| {r['variant']} | {r['ema']} | {r['step']} | {r['FD-digits']:.2f} ± {r['FD-digits_std']:.2f} | "
                     f"{ratio} | {r['FD-check']:.2f} ± {r['FD-check_std']:.2f} | {precision} | {r['recall']:.3f} | "
                     f"{r['class_tv']:.3f} | {each} |")
    for v in datafree_verdicts(rows, teacher_fd):
        lines.append(f"\nData-free target at step {v['step']} (EMA {v['ema']}): best {v['variant']} at "
                     f"{v['ratio']:.2f}x the teacher over {v['seeds']} seed(s) -> "
                     f"{'met' if v['met'] else 'NOT met'} (<= {TARGET_DATAFREE}x on >= {TARGET_SEEDS} seeds)")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder: runs/ (exports), results/ (scores), scores.json / .md")
    p.add_argument("--work", help="folder whose classifier / check network / digits PNGs to reuse (default: --out)")
    p.add_argument("--tars", nargs="*", default=[], help="tars of <run>/snap/step-N/generator* to unpack first")
    p.add_argument("--runs", help="folder of the runs (default: OUT/runs)")
    p.add_argument("--steps", type=int, nargs="*", help="score only these step counts (default: every one found)")
    p.add_argument("--teacher", help="the teacher's folder: scored on the same samples (Heun, --teacher-levels)")
    p.add_argument("--teacher-levels", type=int, default=18)
    p.add_argument("--teacher-score", help="a scored teacher's JSON (for the ratio column), instead of --teacher")
    p.add_argument("--num-samples", type=int, default=DEFAULT_SAMPLES)
    p.add_argument("--sample-seeds", type=int, nargs="+", default=[DEFAULT_SAMPLE_SEED],
                   help="score every model on each (its score: the mean; one 10000-sample FD-digits of the digits "
                        "teacher moves by +-0.25 with the samples alone, bench/results/digits_pool_fd.md)")
    p.add_argument("--classifier-steps", type=int, default=1500)
    p.add_argument("--stored", action="store_true",
                   help="also tabulate models whose export is gone but whose scores on every --sample-seeds are in "
                        "OUT/results (e.g. copied back from bench/results/*_scores on a fresh machine)")
    a = p.parse_args(argv)
    if a.teacher and a.teacher_score:
        raise SystemExit("give --teacher (scored here) or --teacher-score (a stored score), not both")
    runs_dir = a.runs or os.path.join(a.out, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    for t in a.tars:
        with tarfile.open(t) as tf:
            tf.extractall(runs_dir, filter="data")
    found = exports(runs_dir)
    if a.stored:
        on_disk = {(e["run"], e["ema"], e["step"]) for e in found}
        found += [e for e in stored_exports(os.path.join(a.out, "results"), a.num_samples, a.sample_seeds)
                  if (e["run"], e["ema"], e["step"]) not in on_disk]
    found = [e for e in found if not a.steps or e["step"] in a.steps]
    if not found:
        raise SystemExit(f"no <run>/snap/step-N/generator* or <run>/gen_snapshots/step-N folder under {runs_dir}"
                         + (" and no stored score in OUT/results" if a.stored else "")
                         + (f" at steps {a.steps}" if a.steps else ""))
    import torch

    import digits_score
    import fdistill

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    scorer = None
    os.makedirs(os.path.join(a.out, "results"), exist_ok=True)
    def scorer_():
        nonlocal scorer
        scorer = scorer or digits_score.DigitsScorer(a.work or a.out, a.classifier_steps, seed=0)
        return scorer

    def stored_score(path: str, rescorable: bool) -> dict | None:
        """The score at ``path`` if it may be reused: made by this scorer's networks, or by unrecorded ones (scores
        from before they were recorded). One that names other networks is on another scale: ``None`` (score it
        again) when the model is here, else an error."""
        stored = read_score(path)
        if stored is None:
            return None
        if "networks" in stored and not scorer_().same_scale(stored):  # (no scorer built for unrecorded ones)
            if not rescorable:
                raise SystemExit(f"{path} was scored with the feature networks {stored['networks']}, this scorer has "
                                 f"{scorer_().networks} (another scale), and its model is not on disk to score "
                                 "again: leave it out of OUT/results or score with its networks (--work)")
            return None
        return stored

    for e in found:
        each = []
        for seed in a.sample_seeds:
            path = os.path.join(a.out, "results", tag(e, a.num_samples, seed) + ".json")
            stored = stored_score(path, e["path"] is not None)
            if stored is None:
                stored = scorer_().score(fdistill.load_generator(e["path"]), a.num_samples, seed)
                write_json(path, stored)
            each.append(stored)
        e["score"], e["each"] = mean_score(each), each
        print(f"{tag(e, a.num_samples, a.sample_seeds[0])}: FD-digits {e['score']['FD-digits']:.3f} "
              f"{e['score']['FD-digits_each']}", flush=True)
    teacher_fd, teacher_each = None, []
    if a.teacher_score:
        with open(a.teacher_score) as fh:
            teacher_each = [json.load(fh)]
    elif a.teacher:
        for seed in a.sample_seeds:
            path = os.path.join(a.out, "results", result_tag("teacher", a.num_samples, seed) + ".json")
            stored = stored_score(path, True)
            if stored is None or stored.get("teacher") != a.teacher:  # none yet, another scale or another teacher's
                from fdistill.saved_models import load_denoiser
                from samplers import MultiStepGenerator

                gen = MultiStepGenerator(load_denoiser(a.teacher), "heun", a.teacher_levels)
                stored = scorer_().score(gen, a.num_samples, seed) | {"teacher": a.teacher}
                write_json(path, stored)
            teacher_each.append(stored)
    if teacher_each:
        teacher_fd = mean_score(teacher_each)["FD-digits"]
        print(f"teacher: FD-digits {teacher_fd:.3f} {[round(t['FD-digits'], 3) for t in teacher_each]}", flush=True)
    made_by = sorted({json.dumps(s.get("networks"), sort_keys=True) for s in
                      [*teacher_each, *(x for e in found for x in e.pop("each"))]})
    if len(made_by) > 1:  # unrecorded (older) scores beside recorded ones: say so, the table mixes two scorers
        print(f"warning: the scores were made by {len(made_by)} sets of feature networks ('null': unrecorded): "
              + "; ".join(made_by), file=sys.stderr)
    rows = summarise(found)
    name = (result_tag("scores", a.num_samples, a.sample_seeds[0]) if len(a.sample_seeds) == 1 else
            result_tag("scores", a.num_samples, DEFAULT_SAMPLE_SEED) + "-seeds" + "-".join(map(str, a.sample_seeds)))
    name += "-steps" + "-".join(map(str, sorted(a.steps))) if a.steps else ""  # a table of other steps is kept apart
    write_json(os.path.join(a.out, name + ".json"), {"rows": rows, "teacher_fd": teacher_fd,
                                                    "teacher_fd_each": [t["FD-digits"] for t in teacher_each],
                                                    "num_samples": a.num_samples, "sample_seeds": a.sample_seeds,
                                                    "networks": [json.loads(m) for m in made_by],
                                                    "exports": [{k: v for k, v in e.items() if k != "path"}
                                                                | {"stored_only": e["path"] is None}
                                                                for e in found]})
    md = markdown(rows, teacher_fd)
    with open(os.path.join(a.out, name + ".md"), "w") as fh:
        fh.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
