"""One-step digits students of one teacher, over seeds, in two data settings, with a table (mean ± std) and an image
grid (teacher and students from the same noise).

* ``datafree``: no real image anywhere. The discriminator's "real" samples are the teacher's own (a pool of
  ``data.pool_size`` Heun samples, ``data.kind=teacher``): the GAN term, if any, is on the teacher's samples.
* ``real``: the GAN term on the 1797 real digits (``data.kind=digits``, ``configs/digits.yaml`` as it is).
* ``staged``: the same, continuing the ``datafree`` student of each divergence and seed from its kept export at
  ``--init-steps`` (``network.generator_init``; DMD2's two stages: distillation first, the real data after).

    python bench/digits_students.py --teacher bench/results/digits_teacher \\
        --out runs/digits_students --modes datafree real --students fkl js rkl --seeds 0 1 2 --workers 2

Every run is ``train.py --config configs/digits.yaml`` (plus the mode's and the command line's overrides) in
``OUT/runs/<mode>-<student>-s<seed>``; a finished run (``done.json``) is reused and an interrupted one resumes, so the
sweep picks up where it stopped. Each model is scored once (``OUT/results/<name>.json``: FD-digits, precision,
recall with k = 3, class TV, and FD-check in an independent feature network, on ``--num-samples`` samples against
the real digits; a score on other samples than the default 2000 of seed 0 has ``-n<N>`` / ``-seed<S>`` at the end of
its name, so it is never mistaken for another). Run again with a larger ``--steps`` (or give several at once:
``--steps 1600 2400 3200 4000``) and every run continues from its checkpoint and is scored again at each: the scores
of each step count are kept (``OUT/results/<name>@<steps>.json``), a student's curve; with
``--keep-snapshots`` its exported generator at each step count is kept too
(``OUT/runs/<name>/gen_snapshots/step-<steps>``, what ``bench/digits_snapshot_average.py`` averages; a further EMA's
as ``step-<steps>-ema<d>``). A run of several EMAs (``train.ema=[d0,d1,...]``) has its further exports scored too, as
``OUT/results/<name>-ema<d>@<steps>.json`` (the table's row is the first EMA's). Writes ``OUT/students.json``,
``OUT/students.md`` and ``OUT/students.png``. The targets of the table: data-free, the best divergence's mean FD
<= 1.25 x the teacher's; with the real digits, forward KL or JS <= the teacher's; the recall of forward KL and JS >=
reverse KL's.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import digits_score  # noqa: E402
from common import parse_with_overrides, write_json  # noqa: E402

MODES = {"datafree": ["data.kind=teacher"], "real": ["data.kind=digits"], "staged": ["data.kind=digits"]}
REAL_MODES = ("real", "staged")  # the GAN term on the real digits
DIVERGENCES = ("fkl", "js", "rkl", "hellinger", "jeffreys", "chi2")
TARGET_DATAFREE, TARGET_REAL = 1.25, 1.0


def student_words(student: str, overrides: list[str]) -> list[str]:
    """``fkl`` / ``js`` / ``rkl`` / ... (f-distill with that divergence) or ``uni`` (Uni-Instruct, its GAN weight on
    the per-pixel scale of its summed term: resolution^2 x the config's)."""
    if student in DIVERGENCES:
        return ["objective.name=fdistill", f"objective.divergence={student}"]
    if student == "uni":
        from digits_demo import per_pixel_gan_weight

        return ["objective.name=uni_instruct", f"objective.gan_weight={per_pixel_gan_weight(overrides):g}"]
    raise SystemExit(f"unknown student {student!r}; valid: {list(DIVERGENCES) + ['uni']}")


def mode_words(run: dict, a) -> list[str]:
    """The run's mode's overrides; data-free runs get ``data.pool_size=--pool-size`` unless the command line sets it: a
    pinned pool, since train.py's default follows ``train.steps`` and each larger ``--steps`` would draw another pool;
    with ``--pool-cache`` they keep it in that shared folder (``data.pool_cache``: one draw per teacher, size and seed).
    A ``staged`` run starts its generator from the data-free run of its divergence and seed as it was at
    ``--init-steps`` (``network.generator_init``, DMD2's two stages)."""
    mode = run["mode"]
    words = list(MODES[mode])
    if mode == "datafree" and not any(o.startswith("data.pool_size=") for o in a.overrides):
        words.append(f"data.pool_size={a.pool_size}")
    if mode == "datafree" and a.pool_cache:
        words.append(f"data.pool_cache={os.path.abspath(a.pool_cache)}")
    if mode == "staged":
        words.append(f"network.generator_init={stage_one(run, a)}")
    return words


def stage_one(run: dict, a) -> str:
    """The export a ``staged`` run starts from: ``OUT/runs/datafree-<student>-s<seed>/gen_snapshots/step-<init-steps>``
    (its first EMA's; kept by ``--keep-snapshots``), with ``--init-out`` in place of ``OUT`` when given (the data-free
    runs of another sweep, so that several second stages share one first)."""
    if not a.init_steps:
        raise SystemExit("--modes staged continues data-free students: give --init-steps N, the step count of their "
                         "kept exports")
    name = f"datafree-{run['student']}-s{run['seed']}"
    first = getattr(a, "init_out", None) or a.out
    path = os.path.join(os.path.abspath(first), "runs", name, "gen_snapshots", f"step-{a.init_steps}")
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise SystemExit(f"--modes staged: no export of {name} at {a.init_steps} steps ({path}); train it first: "
                         f"--modes datafree --steps {a.init_steps} --keep-snapshots --out {first} (same --students, "
                         f"--seeds)")
    return path


def runs_of(a) -> list[dict]:
    return [{"name": f"{m}-{s}-s{seed}", "mode": m, "student": s, "seed": seed}
            for m in a.modes for s in a.students for seed in a.seeds]


def train(run: dict, a) -> dict:
    """Train one student to ``a.steps`` (resumes an interrupted run; a run finished at ``a.steps`` or more is reused;
    one finished at fewer steps continues from its last checkpoint: the config's learning rate is constant)."""
    out = os.path.join(a.out, "runs", run["name"])
    done = os.path.join(out, "done.json")
    if os.path.isfile(done):
        with open(done) as fh:
            rec = json.load(fh)
        if rec["steps"] >= a.steps:
            return rec
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", "configs/digits.yaml", f"out_dir={out}",
           f"teacher.path={os.path.abspath(a.teacher)}", f"seed={run['seed']}", f"train.steps={a.steps}",
           "log.progress=false", "log.trackers=[]", "resume=latest", *mode_words(run, a),
           *student_words(run["student"], a.overrides), *a.overrides]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    os.makedirs(out, exist_ok=True)
    t = time.time()
    with open(os.path.join(out, "train.log"), "a") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if rc != 0:
        return {"error": f"train.py exited with {rc} (see {out}/train.log)"}
    rec = {"cmd": cmd[1:], "wall_s": round(time.time() - t, 1), "steps": a.steps}
    write_json(done, rec)
    if a.keep_snapshots:
        keep_snapshot(out, a.steps)
    return rec


def keep_snapshot(run_dir: str, steps: int) -> str:
    """Copy the run's exported pipeline (``generator/`` and the rest of the export) to ``gen_snapshots/step-<steps>``,
    and each further EMA's (``generator-ema<d>/``) to ``gen_snapshots/step-<steps>-ema<d>``; each copy is written
    under a temporary name and renamed, so a snapshot folder is always whole."""
    snaps = os.path.join(run_dir, "gen_snapshots")
    pairs = [(os.path.join(run_dir, "generator"), os.path.join(snaps, f"step-{steps}"))]
    for folder in sorted(glob.glob(os.path.join(run_dir, "generator-ema*"))):
        pairs.append((folder, os.path.join(snaps, f"step-{steps}-{os.path.basename(folder)[len('generator-'):]}")))
    for src, dst in pairs:
        if not os.path.isdir(dst):
            tmp = dst + ".part"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            os.replace(tmp, dst)
    return pairs[0][1]


def finished(a, name: str) -> bool:
    """Whether the run ``name`` has been trained (and exported) at exactly ``a.steps``."""
    path = os.path.join(a.out, "runs", name, "done.json")
    if not os.path.isfile(path):
        return False
    with open(path) as fh:
        return json.load(fh)["steps"] == a.steps


def score_all(a, runs: list[dict]) -> dict:
    """Scores of the teacher and every finished run (cached in ``OUT/results``)."""
    import fdistill
    from fdistill.saved_models import load_denoiser
    from samplers import MultiStepGenerator

    os.makedirs(os.path.join(a.out, "results"), exist_ok=True)
    scorer = digits_score.DigitsScorer(a.out, a.classifier_steps, seed=0)
    scores = {}
    for name in ["teacher"] + [r["name"] for r in runs]:
        tag = "teacher" if name == "teacher" else f"{name}@{a.steps}"  # a student's scores at a.steps
        path = os.path.join(a.out, "results", digits_score.result_tag(tag, a.num_samples, a.sample_seed) + ".json")
        stored = digits_score.read_score(path)
        if stored is not None and "FD-check" in stored and scorer.same_scale(stored):
            scores[name] = stored
            continue  # else none, or scored before the check network existed or by other networks: scored again
        if name == "teacher":
            gen = MultiStepGenerator(load_denoiser(a.teacher), "heun", a.teacher_levels)
        elif finished(a, name):
            gen = fdistill.load_generator(os.path.join(a.out, "runs", name))
        else:
            continue
        scores[name] = score_one(scorer, gen, a, path, name, one_step=name != "teacher")
    for name in [r["name"] for r in runs if finished(a, r["name"])]:  # the further EMAs of train.ema: [d0, d1, ...]
        for folder in sorted(glob.glob(os.path.join(a.out, "runs", name, "generator-ema*"))):
            tag = f"{name}-{os.path.basename(folder)[len('generator-'):]}"
            path = os.path.join(a.out, "results",
                                digits_score.result_tag(f"{tag}@{a.steps}", a.num_samples, a.sample_seed) + ".json")
            stored = digits_score.read_score(path)
            if stored is None or not scorer.same_scale(stored):
                score_one(scorer, fdistill.load_generator(folder), a, path, tag)
    return scores


def score_one(scorer, gen, a, path: str, name: str, one_step: bool = True) -> dict:
    """Score ``gen`` (``--num-samples`` samples, ``--sample-seed``) into ``path`` and print a line. NFE: 1, or the
    multi-step generator's count (known once it has sampled)."""
    s = scorer.score(gen, a.num_samples, a.sample_seed)
    s["nfe"] = 1 if one_step else gen.nfe
    write_json(path, s)
    print(f"{name}: FD-digits {s['FD-digits']:.2f}, precision {s['precision']:.3f}, recall {s['recall']:.3f}, "
          f"class TV {s['class_tv']:.3f}", flush=True)
    return s


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(a, runs: list[dict], scores: dict) -> dict:
    """Rows per (mode, student): mean ± std over the seeds that have scores, the FD ratio to the teacher, and the
    three targets."""
    teacher = scores.get("teacher")
    rows = []
    for mode in a.modes:
        for student in a.students:
            got = [scores[r["name"]] for r in runs if r["mode"] == mode and r["student"] == student
                   and r["name"] in scores]
            if not got:
                continue
            row = {"mode": mode, "student": student, "seeds": len(got)}
            for key in ("FD-digits", "FD-check", "precision", "recall", "class_tv"):
                row[key], row[key + "_std"] = mean_std([g[key] for g in got])
            row["fd_values"] = [g["FD-digits"] for g in got]  # unrounded (tables round once)
            row["fd_ratio"] = row["FD-digits"] / teacher["FD-digits"] if teacher else None
            rows.append(row)
    targets = {}
    if teacher:
        free = [r for r in rows if r["mode"] == "datafree"]
        if free:
            best = min(free, key=lambda r: r["FD-digits"])
            targets["datafree_best_within_1.25x"] = {"student": best["student"], "ratio": best["fd_ratio"],
                                                     "met": best["fd_ratio"] <= TARGET_DATAFREE}
        real = [r for r in rows if r["mode"] in REAL_MODES and r["student"] in ("fkl", "js")]
        if real:
            best = min(real, key=lambda r: r["FD-digits"])
            targets["real_fkl_or_js_at_most_teacher"] = {"student": best["student"], "ratio": best["fd_ratio"],
                                                         "met": best["fd_ratio"] <= TARGET_REAL}
    for mode in a.modes:
        by = {r["student"]: r for r in rows if r["mode"] == mode}
        if "rkl" in by and any(s in by for s in ("fkl", "js")):
            recall = {s: by[s]["recall"] for s in ("fkl", "js") if s in by}
            targets[f"{mode}_recall_fkl_js_at_least_rkl"] = {"recall": recall, "rkl": by["rkl"]["recall"],
                                                             "met": min(recall.values()) >= by["rkl"]["recall"]}
    return {"teacher": teacher, "rows": rows, "targets": targets}


def markdown(a, res: dict) -> str:
    t = res["teacher"]
    lines = [f"# Digits students of `{a.teacher}`", "",
             f"{a.steps} student steps, seeds {a.seeds}, overrides {a.overrides or 'none'}; FD-digits, precision / "
             f"recall (k = 3) and class TV on {a.num_samples} samples (sampling seed {a.sample_seed}) against the "
             "1797 real digits. Mean ± std over seeds.", "",
             "| data | model | NFE | FD-digits | FD / teacher | FD-check | precision | recall | class TV | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    if t:
        lines.append(f"| - | teacher (Heun {a.teacher_levels}) | {t['nfe']} | {t['FD-digits']:.2f} | 1.00 | "
                     f"{t['FD-check']:.2f} | {t['precision']:.3f} | {t['recall']:.3f} | {t['class_tv']:.3f} | - |")
    for r in res["rows"]:
        ratio = "-" if r["fd_ratio"] is None else f"{r['fd_ratio']:.2f}"
        lines.append(f"| {r['mode']} | {r['student']} | 1 | {r['FD-digits']:.2f} ± {r['FD-digits_std']:.2f} | {ratio} | "
                     f"{r['FD-check']:.2f} ± {r['FD-check_std']:.2f} | "
                     f"{r['precision']:.3f} ± {r['precision_std']:.3f} | {r['recall']:.3f} ± {r['recall_std']:.3f} | "
                     f"{r['class_tv']:.3f} ± {r['class_tv_std']:.3f} | {r['seeds']} |")
    lines += ["", "Targets: " + "; ".join(f"{k}: {'met' if v['met'] else 'NOT met'}"
                                          for k, v in res["targets"].items())]
    return "\n".join(lines) + "\n"


def grid(a, runs: list[dict], path: str) -> None:
    """16 samples of the teacher and of each (mode, student)'s first finished seed, from the same noise."""
    import fdistill
    from fdistill.saved_models import load_denoiser
    from samplers import MultiStepGenerator
    from digits_demo import save_grid

    rows, labels = [MultiStepGenerator(load_denoiser(a.teacher), "heun", a.teacher_levels).sample(16, seed=0)], \
        [f"teacher\n{2 * a.teacher_levels - 1} NFE"]
    for mode in a.modes:
        for student in a.students:
            done = [r for r in runs if r["mode"] == mode and r["student"] == student and finished(a, r["name"])]
            if done:
                gen = fdistill.load_generator(os.path.join(a.out, "runs", done[0]["name"]))
                rows.append(gen.sample(16, seed=0))
                labels.append(f"{mode}\n{student} s{done[0]['seed']}")
    save_grid([r.float().cpu() for r in rows], labels, path, "teacher (Heun) and one-step students, same noise")


def train_and_tabulate(a, runs: list[dict]) -> None:
    """Train every run to ``a.steps`` (one step count), score what finished there, write the table and the grid."""
    if not a.score_only:
        with ThreadPoolExecutor(max(1, a.workers)) as pool:
            for run, rec in zip(runs, pool.map(lambda r: train(r, a), runs)):
                if "error" in rec:
                    print(f"{run['name']}: {rec['error']}", flush=True)
    import torch

    torch.set_num_threads(a.threads)
    res = table(a, runs, score_all(a, runs))
    res.update(settings={k: v for k, v in vars(a).items()}, date=time.strftime("%Y-%m-%d"))
    write_json(os.path.join(a.out, "students.json"), res)
    with open(os.path.join(a.out, "students.md"), "w") as fh:
        fh.write(markdown(a, res))
    grid(a, runs, os.path.join(a.out, "students.png"))
    print(markdown(a, res), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="a saved teacher folder (e.g. OUT/teachers/step-NNNNNN)")
    p.add_argument("--out", default="runs/digits_students")
    p.add_argument("--modes", nargs="+", default=["datafree", "real"], choices=sorted(MODES))
    p.add_argument("--students", nargs="+", default=["fkl", "js", "rkl"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", nargs="+", type=int, default=[800],
                   help="student steps; several (e.g. 1600 2400 3200 4000): every run is trained to each in turn, "
                        "continuing from its checkpoint, and scored (and its export kept) at each: a curve in one call")
    p.add_argument("--workers", type=int, default=2, help="training processes at a time")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per training process")
    p.add_argument("--pool-size", type=int, default=4096,
                   help="data-free runs' teacher pool (the tables' 4096; the recipe's config has 32768)")
    p.add_argument("--pool-cache", default=None,
                   help="data-free runs keep their teacher pool in this folder under its key (data.pool_cache), so a "
                        "run of another --out with the same teacher, size and seed reuses it instead of drawing it")
    p.add_argument("--init-steps", type=int, default=0,
                   help="--modes staged: continue the data-free student of each divergence and seed from its kept "
                        "export at this step count (the GAN term on the real digits; DMD2's second stage)")
    p.add_argument("--init-out", default=None,
                   help="--modes staged: the --out of the data-free runs to start from (default: --out itself)")
    p.add_argument("--num-samples", type=int, default=digits_score.DEFAULT_SAMPLES)
    p.add_argument("--sample-seed", type=int, default=digits_score.DEFAULT_SAMPLE_SEED)
    p.add_argument("--teacher-levels", type=int, default=18, help="Heun levels of the teacher's row")
    p.add_argument("--classifier-steps", type=int, default=1500, help="FD-digits classifier (trained once into OUT)")
    p.add_argument("--keep-snapshots", action="store_true",
                   help="keep each run's exported generator at each --steps (OUT/runs/<name>/gen_snapshots/step-N)")
    p.add_argument("--score-only", action="store_true", help="train nothing: score and tabulate what is finished")
    p.add_argument("overrides", nargs="*", help="train.py key=value overrides for every student")
    a = parse_with_overrides(p, argv)  # key=value overrides anywhere, even right after --steps N [N ...]
    for s in a.students:
        student_words(s, a.overrides)
    if not os.path.isdir(a.teacher):
        raise SystemExit(f"--teacher {a.teacher!r} is not a saved teacher folder")
    if min(a.steps) < 1:
        raise SystemExit(f"--steps {' '.join(map(str, a.steps))}: step counts must be positive")
    os.makedirs(a.out, exist_ok=True)
    runs = runs_of(a)
    for steps in sorted(set(a.steps)):
        train_and_tabulate(argparse.Namespace(**dict(vars(a), steps=steps)), runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
