"""The README's digits demo end to end, with a report: teacher, FD-digits classifier, four one-step students, FD-digits
and precision/recall of each (teacher with Heun, 35 evaluations; students with 1), sampling and training speed.

    python3 bench/digits_demo.py --out OUT/digits                          # everything, GPU if any
    python3 bench/digits_demo.py --out OUT/digits --stages teacher classifier --save-teacher
    python3 bench/digits_demo.py --out OUT/digits --teacher-path OUT/digits/teacher.tar   # reuse a teacher
    python3 bench/digits_demo.py --out /tmp/dd --small                     # tiny CPU smoke run (about a minute)

Stages (``--stages``, default all; ``teacher`` is left out when ``--teacher-path`` is given):
1. ``teacher``: ``train.py --config configs/digits-teacher.yaml`` as a subprocess; ``classifier``: the FD-digits
   classifier and the real digits as PNGs (the reference), run concurrently with the teacher;
2. ``students``: ``configs/digits.yaml`` with rkl, fkl, js (``objective.name=fdistill``) and Uni-Instruct, up to
   ``--parallel`` at once (default all: the tiny networks leave a GPU mostly idle);
3. ``eval``: FD-digits, precision and recall on ``--num-samples`` images against the 1797 real digits through
   ``eval.fid.evaluate_generator``, and sampling images/s at ``--speed-batch``;
4. ``grid``: one row of 16 samples per model, same seed.

Writes to ``--out`` only ``digits_demo.json`` (rewritten after every stage; failures recorded with their error),
``digits_demo.md``, ``digits_demo.png``, ``logs.txt`` (progress and every subprocess's output) and, with
``--save-teacher``, ``teacher.tar``. Run folders live in ``--workdir`` (default: a new temporary folder).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("teacher", "classifier", "students", "eval", "grid")
# student name -> (objective.name, objective.divergence or None for the config's)
STUDENTS = {"rkl": ("fdistill", "rkl"), "fkl": ("fdistill", "fkl"), "js": ("fdistill", "js"),
            "uni": ("uni_instruct", None)}
TEACHER_RECORD = "teacher_train.json"
TARGET = 1.10  # a student meets the target when its FD-digits <= 1.10 x the teacher's
QUIET = ["log.trackers=[]", "log.progress=false"]
SMALL_TEACHER = ["train.batch_size=16", "network.channels=[8,16]", "train.log_every=5", "train.sample_every=1000000",
                 "train.checkpoint_every=1000000", "train.warmup_steps=0"]
SMALL_STUDENT = ["train.batch_size=8", "train.fake_updates=1", "train.log_every=5", "train.sample_every=1000000",
                 "train.checkpoint_every=1000000"]
_T0 = time.time()


# ---------------------------------------------------------------------------------------------- small helpers
def log(msg: str, logfile: str | None = None) -> None:
    """A progress line with wall-clock time and seconds since start (flushed; also appended to ``logfile``)."""
    line = f"[{time.strftime('%H:%M:%S')} +{time.time() - _T0:6.1f}s] {msg}"
    print(line, flush=True)
    if logfile:
        with open(logfile, "a") as fh:
            fh.write(line + "\n")


def write_json(path: str, obj: dict) -> None:
    """Atomic JSON write (a temporary file, then rename)."""
    tmp = path + ".part"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, default=str)
    os.replace(tmp, path)


def student_spec(name: str) -> tuple[str, str | None]:
    """``rkl``/``fkl``/``js``/``uni``, or ``OBJECTIVE:DIVERGENCE`` (e.g. ``uni_instruct:fkl``)."""
    if name in STUDENTS:
        return STUDENTS[name]
    if ":" in name:
        objective, div = name.split(":", 1)
        return objective, div
    raise ValueError(f"unknown student {name!r}; valid: {sorted(STUDENTS)} or OBJECTIVE:DIVERGENCE")


def per_pixel_gan_weight(overrides: list[str]) -> float:
    """configs/digits.yaml's GAN weight (after ``overrides``) on Uni-Instruct's scale.

    Uni-Instruct's distribution term sums over the pixels where f-distill's averages (docs/objectives.md), so the same
    GAN strength is resolution² times the weight (digits have one channel): 256 x 5e-2 = 12.8 at 16 x 16.
    """
    from fdistill.config import load_config

    cfg = load_config(os.path.join(REPO, "configs", "digits.yaml"), overrides)
    return cfg.objective.gan_weight * cfg.data.resolution ** 2


def train_speed(run_dir: str) -> dict:
    """Training images/s from ``metrics.jsonl``: median over logged windows after the first (which includes
    start-up), the last window, and the steps / images logged."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return {}
    with open(path) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    if not rows:
        return {}
    speeds = [r["images_per_s"] for r in rows if "images_per_s" in r]
    steady = speeds[1:] or speeds
    return {"images_per_s": statistics.median(steady), "images_per_s_last": speeds[-1],
            "steps": rows[-1].get("step"), "images_seen": rows[-1].get("images_seen"), "log_windows": len(rows)}


def tail(path: str, n: int = 2000) -> str:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()[-n:]
    except OSError:
        return ""


def child_env(threads: int) -> dict:
    """The environment for a subprocess: ``OMP_NUM_THREADS`` (unless set), repo on ``PYTHONPATH``."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, threads)))
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# ---------------------------------------------------------------------------------------------- subprocesses
class Job:
    """A subprocess whose stdout and stderr go to ``log_path``; ``wall_s`` and ``returncode`` when done. It is killed
    ``timeout`` seconds after its start or at the absolute time ``deadline``, whichever comes first.

    A ``train.py`` job (``soft_stop``) is first asked to stop by itself before then: at launch it gets
    ``train.time_limit_min`` set to the time it has left less a margin for its final checkpoint and export, so it ends
    with its generator exported; the kill is only the backstop."""

    def __init__(self, name: str, cmd: list[str], log_path: str, threads: int = 1, timeout: float | None = None,
                 deadline: float | None = None, soft_stop: bool = False):
        self.name, self.cmd, self.log_path, self.threads = name, cmd, log_path, threads
        self.timeout, self.deadline, self.soft_stop = timeout, deadline, soft_stop
        self.proc = self.start = self.wall_s = self.returncode = None
        self.timed_out = False

    def overdue(self) -> bool:
        now = time.time()
        return (self.timeout is not None and now - self.start >= self.timeout) or \
            (self.deadline is not None and now >= self.deadline)

    def time_left(self) -> float | None:
        """Seconds until the kill, counted from now (None: no limit)."""
        now = time.time()
        left = [t for t in (self.timeout, None if self.deadline is None else self.deadline - now) if t is not None]
        return min(left) if left else None

    def launch(self, logfile: str) -> None:
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        left = self.time_left()
        if self.soft_stop and left is not None:
            margin = min(120.0, max(30.0, 0.1 * left))  # the last checkpoint, the export and the final metrics
            self.cmd = self.cmd + [f"train.time_limit_min={max(left - margin, 1.0) / 60:.4f}"]
        self._fh = open(self.log_path, "w")
        self.start = time.time()
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=child_env(self.threads), stdout=self._fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log(f"started {self.name} (pid {self.proc.pid}): {' '.join(self.cmd[1:])}", logfile)

    def poll(self, logfile: str) -> bool:
        """True once finished (killed, with its process group, past its timeout)."""
        if self.proc.poll() is None:
            if not self.overdue():
                return False
            self.timed_out = True
            try:
                os.killpg(self.proc.pid, 9)
            except OSError:
                pass
            self.proc.wait()
        self._fh.close()
        self.wall_s, self.returncode = time.time() - self.start, self.proc.returncode
        state = "killed at its time limit" if self.timed_out else f"exit {self.returncode}"
        log(f"finished {self.name}: {state}, {self.wall_s:.1f} s", logfile)
        return True

    def result(self) -> dict:
        out = {"wall_s": self.wall_s, "returncode": self.returncode, "command": " ".join(self.cmd)}
        if self.timed_out:
            out["error"] = f"killed at its time limit after {self.wall_s:.0f} s"
        elif self.returncode:
            out["error"] = f"exit status {self.returncode}: " + tail(self.log_path)
        return out


def run_jobs(jobs: list[Job], parallel: int, logfile: str) -> None:
    """Run ``jobs``, at most ``parallel`` at a time; each job's output is appended to ``logfile`` when it ends."""
    waiting, running = list(jobs), []
    while waiting or running:
        while waiting and len(running) < max(1, parallel):
            job = waiting.pop(0)
            job.launch(logfile)
            running.append(job)
        time.sleep(0.2)
        for job in [j for j in running if j.poll(logfile)]:
            running.remove(job)
            with open(logfile, "a") as fh:
                fh.write(f"\n===== {job.name}: {' '.join(job.cmd)}\n{tail(job.log_path, 10**7)}\n===== end {job.name}"
                         "\n\n")


# ---------------------------------------------------------------------------------------------- the demo
class Demo:
    def __init__(self, a):
        self.a = a
        self.work = a.workdir
        self.logfile = os.path.join(a.out, "logs.txt")
        self.json_path = os.path.join(a.out, "digits_demo.json")
        self.res: dict = {}
        self.teacher_dir = None

    # ---------------------------------------------------------------- record
    def save(self) -> None:
        self.res["total_wall_s"] = time.time() - _T0
        self.res["summary"] = self.summary()
        write_json(self.json_path, self.res)
        with open(os.path.join(self.a.out, "digits_demo.md"), "w") as fh:
            fh.write(self.markdown())

    def stage(self, name: str, fn, wanted: bool) -> None:
        """Run one stage; record ok / failed (with the error) and its wall time; rewrite the report."""
        if not wanted:
            self.res["stages"][name] = {"status": "skipped"}
            return
        log(f"stage {name} ...", self.logfile)
        t = time.time()
        try:
            fn()
            status = {"status": "ok"}
        except Exception as e:  # recorded; the next stages go on where they can
            status = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc()[-3000:]}
            log(f"stage {name} FAILED: {type(e).__name__}: {e}", self.logfile)
        status["wall_s"] = time.time() - t
        self.res["stages"][name] = status
        self.save()

    def train_limits(self) -> dict:
        """``timeout`` (``--train-timeout``) and ``deadline`` (``--time-limit`` less ``--eval-reserve``) of a
        training job, which stops by itself before either (``Job.soft_stop``)."""
        deadline = None if self.a.time_limit is None else _T0 + self.a.time_limit - self.a.eval_reserve
        return {"timeout": self.a.train_timeout, "deadline": deadline, "soft_stop": True}

    # ---------------------------------------------------------------- stage 1: teacher + classifier
    def teacher_cmd(self) -> list[str]:
        a = self.a
        cmd = [sys.executable, "train.py", "--config", "configs/digits-teacher.yaml",
               f"out_dir={os.path.join(self.work, 'teacher')}", f"seed={a.seed}", *QUIET]
        if a.teacher_steps is not None:
            cmd.append(f"train.steps={a.teacher_steps}")
        return cmd + (SMALL_TEACHER if a.small else []) + list(a.teacher_override)

    def classifier_cmd(self) -> list[str]:
        return [sys.executable, "-m", "eval.digits_classifier", "--out", os.path.join(self.work, "classifier"),
                "--export-images", os.path.join(self.work, "digits_png"), "--steps", str(self.a.classifier_steps),
                "--seed", str(self.a.seed), "--threads", "1"]

    def classifier_job(self) -> Job:
        return Job("classifier", self.classifier_cmd(), os.path.join(self.work, "logs", "classifier.log"))

    def classifier_with_students(self) -> bool:
        """Without a teacher to train, the classifier trains beside the students instead of before them."""
        st = self.a.stages
        return "classifier" in st and "teacher" not in st and "students" in st

    def run_teacher_and_classifier(self) -> None:
        cpus = os.cpu_count() or 1
        jobs = []
        if "teacher" in self.a.stages:
            jobs.append(Job("teacher", self.teacher_cmd(), os.path.join(self.work, "logs", "teacher.log"),
                            threads=max(1, cpus - 1), **self.train_limits()))
            shutil.rmtree(os.path.join(self.work, "teacher"), ignore_errors=True)  # no stale metrics/checkpoints
        if "classifier" in self.a.stages and not self.classifier_with_students():
            jobs.append(self.classifier_job())
        run_jobs(jobs, len(jobs), self.logfile)
        rescued = self.export_from_checkpoints([j for j in jobs if j.name == "teacher"],
                                               {"teacher": os.path.join(self.work, "teacher")})
        for job in jobs:
            getattr(self, f"_after_{job.name}")(job, rescued.get(job.name))
            self.save()
        failed = [job.name for job in jobs if (job.returncode or job.timed_out) and not usable(rescued.get(job.name))]
        if failed:
            raise RuntimeError(f"{', '.join(failed)} failed (see the entries and logs.txt)")

    def _after_teacher(self, job: Job, rescue: dict | None) -> None:
        run_dir = os.path.join(self.work, "teacher")
        train = {**job.result(), **train_speed(run_dir), "run_dir": run_dir,
                 "concurrent_with_classifier": "classifier" in self.a.stages, **(rescue or {})}
        self.res["models"]["teacher"]["train"] = train
        if job.returncode == 0 or usable(rescue):
            self.teacher_dir = os.path.join(run_dir, "teacher")
            self.res["teacher_path"] = self.teacher_dir
            if self.a.save_teacher:
                self.res["teacher_tar"] = pack_teacher(self.teacher_dir, os.path.join(self.a.out, "teacher.tar"),
                                                       {**train, "date": self.res.get("date"),
                                                        "device_name": self.res.get("device_name")})
                log(f"teacher saved to {self.res['teacher_tar']}", self.logfile)

    def _after_classifier(self, job: Job, rescue=None) -> None:
        info = job.result()
        cfg = os.path.join(self.work, "classifier", "config.json")
        if os.path.isfile(cfg):
            with open(cfg) as fh:
                c = json.load(fh)
            info.update(test_accuracy=c.get("test_accuracy"), steps=c.get("steps"))
        info["real_images"] = len(os.listdir(os.path.join(self.work, "digits_png"))) \
            if os.path.isdir(os.path.join(self.work, "digits_png")) else 0
        self.res["classifier"] = info

    # ---------------------------------------------------------------- stage 2: students
    def student_cmd(self, name: str) -> list[str]:
        a = self.a
        objective, div = student_spec(name)
        cmd = [sys.executable, "train.py", "--config", "configs/digits.yaml",
               f"out_dir={self.student_dir(name)}", f"teacher.path={self.teacher_dir}",
               f"seed={a.seed}", f"objective.name={objective}", *QUIET]
        if div is not None:
            cmd.append(f"objective.divergence={div}")
        if a.student_steps is not None:
            cmd.append(f"train.steps={a.student_steps}")
        cmd += (SMALL_STUDENT if a.small else []) + list(a.student_override)
        if objective == "uni_instruct":
            cmd.append(f"objective.gan_weight={per_pixel_gan_weight(list(a.student_override)):g}")
        return cmd

    def student_dir(self, name: str) -> str:
        return os.path.join(self.work, "students", name.replace(":", "-"))

    def run_students(self) -> None:
        self.require_teacher()
        cpus = os.cpu_count() or 1
        parallel = max(1, min(self.a.parallel, len(self.a.students)))
        jobs = [Job(name, self.student_cmd(name), os.path.join(self.work, "logs", f"student-{name}.log"),
                    threads=max(1, cpus // parallel), **self.train_limits()) for name in self.a.students]
        for name in self.a.students:  # a stale run would be resumed or mixed in: start clean
            shutil.rmtree(self.student_dir(name), ignore_errors=True)
        self.res["students_concurrent"] = parallel > 1
        self.res["students_parallel"] = parallel
        extra = [self.classifier_job()] if self.classifier_with_students() else []  # CPU; beside the students
        run_jobs(extra + jobs, parallel + len(extra), self.logfile)
        for job in extra:
            self._after_classifier(job)
        rescued = self.export_from_checkpoints(jobs, {name: self.student_dir(name) for name in self.a.students})
        for job in jobs:
            run_dir = self.student_dir(job.name)
            self.res["models"][job.name]["train"] = {**job.result(), **train_speed(run_dir), "run_dir": run_dir,
                                                     "concurrent_students": parallel,
                                                     "config": resolved_objective(run_dir),
                                                     **(rescued.get(job.name) or {})}
        failed = [job.name for job in jobs if (job.returncode or job.timed_out) and not usable(rescued.get(job.name))]
        if failed:
            raise RuntimeError(f"students {failed} failed (see their entries and logs.txt)")

    def export_from_checkpoints(self, jobs: list[Job], run_dirs: dict) -> dict:
        """For runs killed at their timeout: export the model of the newest checkpoint (``train.py`` again with
        ``resume=latest train.steps=<its step>``: no step runs, only the export). ``{name: record}``."""
        from fdistill.checkpoint import list_checkpoints

        todo = []
        for job in jobs:
            found = list_checkpoints(os.path.join(run_dirs[job.name], "checkpoints")) if job.timed_out else []
            if found:
                step = found[-1][0]
                todo.append((job.name, step, Job(f"{job.name}-export", job.cmd + ["resume=latest",
                                                                                  f"train.steps={step}"],
                                                 job.log_path[:-4] + "-export.log", threads=job.threads)))
            elif job.timed_out:
                log(f"{job.name}: timed out before its first checkpoint; nothing to export", self.logfile)
        run_jobs([j for _, _, j in todo], len(todo), self.logfile)
        return {name: {"exported_from_checkpoint_step": step, "export_returncode": j.returncode,
                       "export_wall_s": j.wall_s} for name, step, j in todo}

    def require_teacher(self) -> str:
        if self.teacher_dir is None:
            default = os.path.join(self.work, "teacher", "teacher")
            if os.path.isdir(default):
                self.teacher_dir = default
            else:
                raise FileNotFoundError(f"no teacher: {default!r} does not exist; run the teacher stage or pass "
                                        "--teacher-path (a teacher dir or teacher.tar)")
        return self.teacher_dir

    # ---------------------------------------------------------------- stage 3: evaluation
    def generators(self):
        """``(name, generator or exception)`` for the teacher (Heun) and every student run that exists."""
        import fdistill
        from fdistill.saved_models import load_denoiser
        from samplers import MultiStepGenerator

        out = []
        try:
            gen = MultiStepGenerator(load_denoiser(self.require_teacher()), self.a.sampler, self.a.num_steps)
            self.res["models"]["teacher"]["sampler"] = {"name": self.a.sampler, "num_steps": self.a.num_steps,
                                                       "sigma_min": gen.sigma_min, "sigma_max": gen.sigma_max}
            out.append(("teacher", gen.to(self.device)))
        except Exception as e:
            out.append(("teacher", e))
        for name in self.a.students:
            try:
                out.append((name, fdistill.load_generator(self.student_dir(name), device=self.device)))
            except Exception as e:
                out.append((name, e))
        return out

    def reference(self):
        """The FD-digits feature extractor and the real-digits reference (trains the classifier if missing)."""
        from eval.digits_classifier import export_images, save_classifier, train_classifier
        from eval.features import build_features
        from eval.fid import reference_from_folder

        clf, png = os.path.join(self.work, "classifier"), os.path.join(self.work, "digits_png")
        if not os.path.isfile(os.path.join(clf, "model.safetensors")):
            log("no classifier yet: training it in-process", self.logfile)
            model, info = train_classifier(steps=self.a.classifier_steps, seed=self.a.seed, progress=False)
            save_classifier(model, clf, info)
            self.res["classifier"] = {"test_accuracy": info["test_accuracy"], "steps": info["steps"]}
        if not os.path.isdir(png) or not os.listdir(png):
            export_images(png)
        fx = build_features("digits", "clean", self.device, digits_classifier=clf)
        return fx, reference_from_folder(png, fx, batch_size=256, num_workers=0, device=self.device, verbose=False)

    def evaluate(self) -> None:
        import torch

        from eval.fid import evaluate_generator

        fx, ref = self.reference()
        self.res["reference"] = {"folder": ref.description, "n": len(ref.feats), "classifier": fx.meta}
        for name, gen in self.generators():
            entry = self.res["models"][name]
            if isinstance(gen, Exception):
                entry["eval"] = {"error": f"{type(gen).__name__}: {gen}"}
                log(f"eval {name} skipped: {gen}", self.logfile)
                self.save()
                continue
            t = time.time()
            try:
                rows = evaluate_generator(gen, fx, ref, self.a.num_samples, seeds=(self.a.seed,),
                                          batch_size=self.a.eval_batch, with_pr=True, pr_num=None,
                                          feature_batch_size=256, progress=False)
                ev = {r["metric"]: r["value"] for r in rows}
                ev["nfe"] = gen.nfe if name == "teacher" else 1
                ev["n"] = self.a.num_samples
                ev["eval_wall_s"] = time.time() - t
                ev.update(sampling_speed(gen, self.a.speed_batch, self.device, self.a.speed_iters, torch))
                entry["eval"] = ev
                log(f"eval {name}: FD-digits {ev['FD-digits']:.3f}, precision {ev['precision']:.3f}, recall "
                    f"{ev['recall']:.3f}, {ev['nfe']} NFE, {ev['sampling_images_per_s']:.0f} img/s", self.logfile)
            except Exception as e:
                entry["eval"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
                log(f"eval {name} FAILED: {e}", self.logfile)
            self.save()

    # ---------------------------------------------------------------- stage 4: grid
    def grid(self) -> None:
        rows, labels = [], []
        for name, gen in self.generators():
            if isinstance(gen, Exception):
                log(f"grid: {name} left out: {gen}", self.logfile)
                continue
            rows.append(gen.sample(16, seed=self.a.grid_seed).float().cpu())
            fd = self.res["models"][name].get("eval", {}).get("FD-digits")
            labels.append(f"{self.label(name)}" + (f"\nFD {fd:.2f}" if fd is not None else ""))
        if not rows:
            raise RuntimeError("no model to draw")
        path = os.path.join(self.a.out, "digits_demo.png")
        save_grid(rows, labels, path, f"seed {self.a.grid_seed}: teacher (Heun, {2 * self.a.num_steps - 1} NFE) "
                                      "and one-step students (1 NFE)")
        self.res["grid"] = path

    # ---------------------------------------------------------------- report
    def label(self, name: str) -> str:
        if name == "teacher":
            return f"teacher ({self.a.sampler} {self.a.num_steps})"
        objective, div = student_spec(name)
        if div is None:  # the config's divergence, as the run resolved it
            div = ((self.res.get("models", {}).get(name, {}).get("train") or {}).get("config") or {}).get("divergence")
        return f"{objective} {div}" if div else objective

    def summary(self) -> list[dict]:
        """One row per model: FD-digits, precision, recall, NFE, speeds, FD ratio to the teacher and the target."""
        models = self.res.get("models", {})
        t_fd = models.get("teacher", {}).get("eval", {}).get("FD-digits")
        out = []
        for name, m in models.items():
            ev, tr = m.get("eval", {}), m.get("train", {})
            fd = ev.get("FD-digits")
            ratio = fd / t_fd if fd is not None and t_fd else None
            train_error, note = tr.get("error"), None
            if usable(tr):  # stopped at its timeout, but its checkpoint was exported and evaluated
                train_error, note = None, (f"stopped at its timeout; evaluated from the checkpoint at step "
                                           f"{tr['exported_from_checkpoint_step']}")
            out.append({"model": name, "label": self.label(name), "FD-digits": fd, "precision": ev.get("precision"),
                        "recall": ev.get("recall"), "nfe": ev.get("nfe"),
                        "sampling_images_per_s": ev.get("sampling_images_per_s"),
                        "train_images_per_s": tr.get("images_per_s"), "train_wall_s": tr.get("wall_s"),
                        "train_steps": tr.get("exported_from_checkpoint_step") or tr.get("steps"),
                        "fd_ratio_to_teacher": ratio,
                        "meets_target": None if ratio is None or name == "teacher" else bool(ratio <= TARGET),
                        "note": note,
                        "error": "; ".join(str(e)[:300] for e in (train_error, ev.get("error")) if e) or None})
        return out

    def markdown(self) -> str:
        r, a = self.res, self.a

        def f(v, fmt="{:.3f}"):
            return "-" if v is None else fmt.format(v)

        teacher_steps = (r["models"]["teacher"].get("train") or {}).get("steps") or r["settings"]["teacher_steps"]
        teacher = (f"`configs/digits-teacher.yaml`, {teacher_steps} steps" if not r.get("teacher_path") or
                   (r["models"]["teacher"].get("train") or {}).get("steps") else f"`{r['teacher_path']}` (given)")
        lines = [f"# Digits demo ({'--small smoke run' if a.small else 'full'})", "",
                 f"{r.get('date')}, {r.get('device_name')} ({r.get('device')}), torch {r.get('torch')}, commit "
                 f"`{r.get('git_commit')}`, total {f(r.get('total_wall_s'), '{:.0f}')} s.", "",
                 f"Teacher: {teacher}; students: "
                 f"`configs/digits.yaml`, {r['settings']['student_steps']} steps, "
                 + students_mode(r) + ". FD-digits, precision and recall (k = 3) on "
                 f"{a.num_samples} samples (seed {a.seed}) against the {r.get('reference', {}).get('n', '-')} real "
                 f"digits; sampling speed at batch {a.speed_batch}. Target: student FD-digits within "
                 f"{100 * (TARGET - 1):.0f}% of or better than the teacher's.", "",
                 "| model | NFE | FD-digits | precision | recall | FD / teacher FD | target met | sampling img/s "
                 "| training steps | training img/s | training wall (s) |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in r.get("summary", []):
            met = "-" if s["meets_target"] is None else ("yes" if s["meets_target"] else "no")
            lines.append(f"| {s['label']} | {f(s['nfe'], '{}')} | {f(s['FD-digits'])} | {f(s['precision'])} | "
                         f"{f(s['recall'])} | {f(s['fd_ratio_to_teacher'], '{:.2f}')} | {met} | "
                         f"{f(s['sampling_images_per_s'], '{:.0f}')} | {f(s['train_steps'], '{}')} | "
                         f"{f(s['train_images_per_s'], '{:.0f}')} | "
                         f"{f(s['train_wall_s'], '{:.0f}')} |")
        errors = [f"- {s['label']}: {s['error']}" for s in r.get("summary", []) if s["error"]]
        errors += [f"- stage {k}: {v['error']}" for k, v in r.get("stages", {}).items() if v.get("error")]
        if errors:
            lines += ["", "Errors:", *errors]
        notes = [f"- {s['label']}: {s['note']}" for s in r.get("summary", []) if s["note"]]
        if notes:
            lines += ["", "Notes:", *notes]
        sampler = r.get("models", {}).get("teacher", {}).get("sampler")
        if sampler:
            lines += ["", f"Teacher sampling: {sampler['name']}, {sampler['num_steps']} Karras levels over sigma "
                          f"[{sampler['sigma_min']:.4g}, {sampler['sigma_max']:.4g}] (the UNet's own VP table)."]
        lines += ["", "Training images/s: median over `metrics.jsonl` windows after the first (images = generator "
                      "batch per step); wall time includes start-up, checkpoints and export."]
        return "\n".join(lines) + "\n"


def usable(rescue: dict | None) -> bool:
    """Whether a timed-out run's model was exported from a checkpoint."""
    return bool(rescue) and rescue.get("export_returncode") == 0


def students_mode(r: dict) -> str:
    """How the students were trained, for the report."""
    if "students_parallel" not in r:
        return "not trained by this invocation"
    n = r["students_parallel"]
    return f"trained concurrently ({n} at once)" if n > 1 else "trained one at a time"


def resolved_objective(run_dir: str) -> dict | None:
    """``objective.name`` / ``divergence`` from the run's resolved ``config.yaml``."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return None
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    return {"objective": cfg.objective.name, "divergence": cfg.objective.divergence,
            "steps": cfg.train.steps, "batch_size": cfg.train.batch_size}


def sampling_speed(gen, batch: int, device, iters: int, torch) -> dict:
    """Median images/s of ``gen.sample(batch)`` (what users call: noise drawn on the CPU, then the sampler)."""
    def call(seed):
        gen.sample(batch, seed=seed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    call(0)  # warm-up
    times = []
    for i in range(iters):
        t = time.perf_counter()
        call(i + 1)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"sampling_images_per_s": batch / med, "sampling_batch": batch, "sampling_ms": 1e3 * med,
            "sampling_iters": iters}


def save_grid(rows, labels, path: str, title: str) -> None:
    """One row of images per model (matplotlib), labelled on the left; without matplotlib, unlabelled (PIL)."""
    try:
        import matplotlib
    except ImportError:
        return save_grid_pil(rows, path)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.0 * len(rows) + 0.6), squeeze=False)
    for ax, x, label in zip(axes[:, 0], rows, labels):
        x = torch.nn.functional.pad((x[:, 0] + 1) / 2, (1, 1), value=0.5)  # a grey gap between images
        img = torch.cat(list(x), dim=1).clamp(0, 1).numpy()  # (H, 16 (W + 2))
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_grid_pil(rows, path: str, scale: int = 4) -> None:
    """The grid without labels: rows of images, 2 px grey gaps, upscaled ``scale`` times (nearest)."""
    import torch
    from PIL import Image

    padded = [torch.nn.functional.pad((x[:, 0] + 1) / 2, (1, 1, 1, 1), value=0.5) for x in rows]
    img = torch.cat([torch.cat(list(x), dim=1) for x in padded], dim=0).clamp(0, 1)
    pixels = (img * 255).round().to(torch.uint8).numpy()
    Image.fromarray(pixels, mode="L").resize((pixels.shape[1] * scale, pixels.shape[0] * scale),
                                             Image.NEAREST).save(path)


def pack_teacher(teacher_dir: str, tar_path: str, record: dict) -> str:
    """``teacher_dir`` as one uncompressed tar (folder ``teacher/``) with its training record
    (``teacher_train.json``), to carry it to another machine session."""
    import io

    with tarfile.open(tar_path, "w") as tar:
        tar.add(teacher_dir, arcname="teacher")
        data = json.dumps(record, indent=1, default=str).encode()
        info = tarfile.TarInfo(TEACHER_RECORD)
        info.size, info.mtime = len(data), int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return tar_path


def unpack_teacher(path: str, dest: str) -> tuple[str, dict | None]:
    """A teacher directory from ``path`` (the directory itself, or a ``.tar`` written by ``--save-teacher``) and
    the training record stored with it, if any."""
    if os.path.isdir(path):
        return path, None
    if not os.path.isfile(path) or not tarfile.is_tarfile(path):
        raise FileNotFoundError(f"--teacher-path {path!r} is neither a teacher directory nor a tar file")
    with tarfile.open(path) as tar:
        kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, **kw)
    found = os.path.join(dest, "teacher")
    if not os.path.isdir(found):
        raise FileNotFoundError(f"{path!r} holds no 'teacher/' folder")
    record = os.path.join(dest, TEACHER_RECORD)
    if not os.path.isfile(record):
        return found, None
    with open(record) as fh:
        return found, {**json.load(fh), "from": path}


def earlier_training(run_dir: str) -> dict | None:
    """What a run trained before this invocation left in ``run_dir`` (speed from metrics.jsonl, its objective)."""
    if not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
        return None
    return {**train_speed(run_dir), "run_dir": run_dir, "config": resolved_objective(run_dir),
            "note": "trained before this invocation (no wall time)"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="report folder (json, md, png, logs.txt)")
    p.add_argument("--workdir", help="run folders (default: a new temporary folder, kept)")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=None, help=f"default: all ({' '.join(STAGES)})")
    p.add_argument("--teacher-path", help="an existing teacher (dir with unet/ + scheduler/, or teacher.tar)")
    p.add_argument("--save-teacher", action="store_true", help="also write OUT/teacher.tar after training it")
    p.add_argument("--teacher-steps", type=int, help="train.steps of the teacher (default: the config's)")
    p.add_argument("--student-steps", type=int, help="train.steps of each student (default: the config's 4000)")
    p.add_argument("--students", nargs="+", default=list(STUDENTS),
                   help=f"students: {' '.join(STUDENTS)} or OBJECTIVE:DIVERGENCE (default: all four)")
    p.add_argument("--parallel", type=int, default=None, help="students trained at once (default: all)")
    p.add_argument("--teacher-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for the teacher (repeatable)")
    p.add_argument("--student-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every student (repeatable); Uni-Instruct students then get "
                        "objective.gan_weight x resolution² (per_pixel_gan_weight)")
    p.add_argument("--num-samples", type=int, default=None, help="images per model for FD-digits (default 2000)")
    p.add_argument("--sampler", default="heun", help="teacher sampler (samplers.SAMPLERS)")
    p.add_argument("--num-steps", type=int, default=18, help="teacher Karras levels (heun: 18 -> 35 NFE)")
    p.add_argument("--eval-batch", type=int, default=500, help="generation batch for FD-digits")
    p.add_argument("--speed-batch", type=int, default=None, help="batch for sampling images/s (default 1000)")
    p.add_argument("--speed-iters", type=int, default=None, help="timed sampling calls (default 5)")
    p.add_argument("--classifier-steps", type=int, default=None, help="digits classifier steps (default 1500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid-seed", type=int, default=0)
    p.add_argument("--device", help="evaluation device (default: cuda if available); training uses accelerate's")
    p.add_argument("--train-timeout", type=float,
                   help="seconds for a training subprocess: it stops itself before then (train.time_limit_min, "
                        "checkpoint and export) and is killed at it")
    p.add_argument("--time-limit", type=float,
                   help="seconds for the whole script: training subprocesses stop (or are killed) in time to keep "
                        "--eval-reserve seconds for evaluation and the report")
    p.add_argument("--eval-reserve", type=float, default=90.0)
    p.add_argument("--small", action="store_true", help="tiny networks, steps and sample counts (CPU, ~1 min)")
    a = p.parse_args(argv)
    for name in a.students:
        student_spec(name)
    import samplers

    samplers.get(a.sampler)
    if a.small:
        a.teacher_steps = a.teacher_steps or 20
        a.student_steps = a.student_steps or 10
    a.num_samples = a.num_samples or (64 if a.small else 2000)
    a.speed_batch = a.speed_batch or (32 if a.small else 1000)
    a.speed_iters = a.speed_iters or (2 if a.small else 5)
    a.classifier_steps = a.classifier_steps or (200 if a.small else 1500)
    a.parallel = a.parallel or len(a.students)
    if a.stages is None:
        a.stages = [s for s in STAGES if not (s == "teacher" and a.teacher_path)]
    elif a.teacher_path and "teacher" in a.stages:
        p.error("--teacher-path gives the teacher: leave 'teacher' out of --stages")
    return a


def main(argv=None) -> dict:
    for path in (REPO, os.path.dirname(os.path.abspath(__file__))):  # fdistill/eval/samplers, and bench's common
        if path not in sys.path:
            sys.path.insert(0, path)
    a = parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    a.workdir = os.path.abspath(a.workdir or tempfile.mkdtemp(prefix="digits_demo_"))
    os.makedirs(a.workdir, exist_ok=True)
    import torch

    import common

    demo = Demo(a)
    demo.device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    open(demo.logfile, "w").close()
    log(f"digits demo: out {a.out}, workdir {a.workdir}, stages {a.stages}, device {demo.device}", demo.logfile)
    demo.res = {"benchmark": "digits_demo", **common.environment(demo.device, argv), "cpu_count": os.cpu_count(),
                "settings": {k: v for k, v in vars(a).items() if k != "out"}, "stages": {}, "target": (
                    f"student FD-digits <= {TARGET:g} x teacher FD-digits"),
                "models": {name: {} for name in ["teacher", *a.students]}}
    s = demo.res["settings"]
    s["teacher_steps"] = a.teacher_steps or 10000  # configs/digits-teacher.yaml
    s["student_steps"] = a.student_steps or 4000
    s["teacher_overrides_effective"] = (SMALL_TEACHER if a.small else []) + list(a.teacher_override)
    s["student_overrides_effective"] = (SMALL_STUDENT if a.small else []) + list(a.student_override)
    if a.teacher_path:
        try:
            demo.teacher_dir, record = unpack_teacher(os.path.abspath(a.teacher_path),
                                                      os.path.join(a.workdir, "given"))
            demo.res["teacher_path"] = demo.teacher_dir
            if record:
                demo.res["models"]["teacher"]["train"] = record
        except Exception as e:
            demo.res["stages"]["teacher_path"] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
            log(f"--teacher-path unusable: {e}", demo.logfile)
    elif "teacher" not in a.stages:
        demo.res["models"]["teacher"]["train"] = earlier_training(os.path.join(a.workdir, "teacher")) or {}
    if "students" not in a.stages:
        for name in a.students:
            demo.res["models"][name]["train"] = earlier_training(demo.student_dir(name)) or {}
    demo.save()
    first = [s for s in ("teacher", "classifier") if s in a.stages and not (
        s == "classifier" and demo.classifier_with_students())]
    demo.stage("+".join(first) or "teacher", demo.run_teacher_and_classifier, bool(first))
    for name, fn in (("students", demo.run_students), ("eval", demo.evaluate), ("grid", demo.grid)):
        demo.stage(name, fn, name in a.stages)
    demo.save()
    log(f"report: {demo.json_path}\n" + demo.markdown(), demo.logfile)
    return demo.res


if __name__ == "__main__":
    main()
