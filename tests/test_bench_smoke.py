"""Smoke test of the benchmark scripts (bench/): each runs with --small on CPU and writes the JSON it promises.
No timing is checked (GPU numbers belong in bench/results, never in tests)."""
from __future__ import annotations

import importlib
import json
import os
import sys

import pytest
import torch

from trainer_utils import reset_accelerate, run_distill

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


@pytest.fixture(scope="module")
def bench():
    """The bench scripts as modules (they import ``common`` from their own folder), on one CPU thread."""
    sys.path.insert(0, BENCH)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield {name: importlib.import_module(name) for name in ("common", "distill_step", "sampling_speed")}
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(BENCH)
        reset_accelerate()


def _positive(x):
    return isinstance(x, (int, float)) and x > 0


def test_every_bench_script_has_a_row_in_the_bench_readme():
    """bench/README.md is the index of the bench scripts: each script there has its row (`name` in the first column)."""
    import re

    rows = set(re.findall(r"^\| `([^`]+)` \|", open(os.path.join(BENCH, "README.md")).read(), re.M))
    scripts = {f for f in os.listdir(BENCH) if f.endswith((".py", ".sh"))}
    assert not scripts - rows, f"bench scripts without a row in bench/README.md: {sorted(scripts - rows)}"


def test_largest_fitting_doubles_then_bisects(bench):
    res = bench["common"].largest_fitting(lambda b: b <= 700, start=64, limit=8192, granularity=32)
    assert res["largest"] == 672 and res["first_failing"] == 704
    assert [b for b, _ in res["trials"]][:5] == [64, 128, 256, 512, 1024]
    assert bench["common"].largest_fitting(lambda b: True, 64, 256, 32)["largest"] == 256
    assert bench["common"].largest_fitting(lambda b: False, 64, 256, 32)["largest"] is None


def test_distill_step_small(bench, tmp_path):
    out = tmp_path / "distill_step.json"
    bench["distill_step"].main(["--small", "--device", "cpu", "--strict", "--toggles", "bf16,adam,attn4d",
                                "--iters", "1", "--warmup", "0", "--max-batch", "--profile", "--profile-steps", "1",
                                "--out", str(out)])
    res = json.loads(out.read_text())
    for key in ("device_name", "torch", "batch", "dtype", "date", "git_commit"):
        assert res[key] not in (None, "")
    assert res["batch"] == 4 and res["settings"]["objective"] == "fdistill" and res["settings"]["divergence"] == "js"
    assert list(res["variants"]) == ["baseline", "fp32 (no autocast)", "adam=fused", "attention 4-D"]
    assert not res["variants"]["fp32 (no autocast)"]["settings"]["bf16"]
    for v in res["variants"].values():
        assert "error" not in v
        assert _positive(v["iteration"]["median_ms"]) and _positive(v["images_per_s"])
        assert _positive(v["sum_of_passes_ms"]) and _positive(v["ratio_iteration_to_passes"])
        assert _positive(v["optimizer_and_ema_ms"])
        assert _positive(v["sum_of_phases_ms"]) and _positive(v["ratio_iteration_to_phases"])
        assert {"fake_update", "disc_update", "generator_update"} == set(v["phases"])  # the method's own phases
        assert sum(v["skipped_updates"].values()) == 0
    passes = res["variants"]["baseline"]["passes"]
    assert {"G fwd (no grad)", "fake fwd+bwd (DSM)", "disc fwd+bwd (real+fake)", "G fwd+bwd", "teacher fwd",
            "fake fwd", "disc fwd+bwd to x (GAN term)"} == set(passes)
    assert "skipped" in res["max_batch"]  # the search needs CUDA
    assert os.path.getsize(res["profile"]["trace"]) > 0 and "Name" in res["profile"]["top_ops"]


def test_sampling_speed_small(bench, tmp_path):
    out = tmp_path / "sampling_speed.json"
    bench["sampling_speed"].main(["--small", "--device", "cpu", "--strict", "--dtypes", "fp32", "--batch", "2", "3",
                                  "--out", str(out)])
    res = json.loads(out.read_text())
    for key in ("device_name", "torch", "batch", "dtype", "date", "git_commit"):
        assert res[key] not in (None, "")
    assert [r["batch"] for r in res["results"]] == [2, 3]
    for r in res["results"]:
        assert r["heun_nfe"] == 35
        for k in ("one_step_direct", "one_step_pipeline", "heun"):
            assert _positive(r[k]["images_per_s"])
        assert _positive(r["speedup_direct"]) and _positive(r["speedup_pipeline"])


def _bench_module(name: str):
    """A bench script as a module (its folder on the path only while it is imported)."""
    sys.path.insert(0, BENCH)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(BENCH)


def test_digits_teacher_curve_stops_on_a_plateau_and_resumes(tmp_path):
    threads = torch.get_num_threads()
    dtc = _bench_module("digits_teacher_curve")
    rows = [{"step": s, "FD-digits": fd} for s, fd in ((1, 50.0), (2, 30.0), (3, 29.5), (4, 29.8), (5, 31.0))]
    assert dtc.plateau(rows[:3], patience=3, rel_tol=0.03) is None  # too few scores
    assert dtc.plateau(rows, patience=3, rel_tol=0.03) is not None  # 29.5, 29.8, 31 all within 3 % of 30
    assert dtc.plateau(rows, patience=3, rel_tol=0.01) is None     # 29.5 is a 1.7 % gain
    assert dtc.plateau(rows[:4] + [{"step": 5, "FD-digits": 20.0}], patience=3, rel_tol=0.03) is None
    out = str(tmp_path / "curve")
    args = ["--out", out, "--every", "5", "--num-samples", "40", "--num-steps", "3", "--classifier-steps", "20",
            "train.batch_size=8", "network.channels=[8,16,16]", "train.warmup_steps=2"]
    assert dtc.main(args + ["--max-steps", "5"]) == 0
    assert dtc.main(args + ["--max-steps", "10"]) == 0  # resumes: one more stage from the checkpoint at 5
    curve = json.load(open(f"{out}/curve.json"))
    assert [r["step"] for r in curve["rows"]] == [5, 10] and curve["stopped"] == "max steps 10"
    assert "resumed from" in open(f"{out}/train.log").read()
    for r in curve["rows"]:
        assert r["FD-digits"] > 0 and 0 <= r["class_tv"] <= 1 and len(r["class_histogram"]) == 10
    with pytest.raises(SystemExit, match="other settings"):
        dtc.main(args[:-1] + ["train.warmup_steps=3", "--max-steps", "10"])
    torch.set_num_threads(threads)


def test_digits_students_table_targets_and_a_resumable_sweep(tmp_path, tiny_digits_teacher):
    import argparse

    threads = torch.get_num_threads()
    ds = _bench_module("digits_students")
    a = argparse.Namespace(modes=["datafree", "real"], students=["fkl", "rkl"], seeds=[0, 1])
    runs = ds.runs_of(a)
    fake = {"teacher": {"FD-digits": 10.0, "FD-check": 9.0, "precision": 0.5, "recall": 0.9, "class_tv": 0.02}}
    for r in runs:  # data-free fkl 12 +- 1 (1.2x: met); real fkl 9 (<= teacher: met); rkl has the higher recall
        fd = {("datafree", "fkl"): 12.0, ("datafree", "rkl"): 14.0, ("real", "fkl"): 9.0, ("real", "rkl"): 9.5}
        fake[r["name"]] = {"FD-digits": fd[r["mode"], r["student"]] + (1 if r["seed"] else -1), "FD-check": 1.0,
                           "precision": 0.5,
                           "recall": 0.8 if r["student"] == "fkl" else 0.85, "class_tv": 0.05}
    res = ds.table(a, runs, fake)
    row = next(r for r in res["rows"] if r["mode"] == "datafree" and r["student"] == "fkl")
    assert row["FD-digits"] == pytest.approx(12.0) and row["FD-digits_std"] == pytest.approx(2 ** 0.5)
    assert row["fd_ratio"] == pytest.approx(1.2) and row["seeds"] == 2
    t = res["targets"]
    assert t["datafree_best_within_1.25x"]["met"] and t["datafree_best_within_1.25x"]["student"] == "fkl"
    assert t["real_fkl_or_js_at_most_teacher"]["met"]
    assert not t["datafree_recall_fkl_js_at_least_rkl"]["met"]
    # one real run end to end: a tiny teacher, one data-free student, scored; the second call trains nothing
    out = tmp_path / "students"
    args = ["--teacher", str(tiny_digits_teacher), "--out", str(out), "--modes", "datafree", "--students", "js",
            "--seeds", "0", "--steps", "2", "--num-samples", "30", "--teacher-levels", "2", "--classifier-steps", "20", "train.batch_size=8",
            "train.fake_updates=1", "data.pool_size=8", "data.num_steps=2", "train.checkpoint_every=100",
            "train.sample_every=100", "train.ema=[0.99,0.9]", "--keep-snapshots"]
    assert ds.main(args) == 0
    log = out / "runs" / "datafree-js-s0" / "train.log"
    size = log.stat().st_size
    assert ds.main(args) == 0 and log.stat().st_size == size  # reused, not trained again
    res = json.load(open(out / "students.json"))
    assert [r["student"] for r in res["rows"]] == ["js"] and res["teacher"]["nfe"] == 3
    assert res["rows"][0]["FD-check"] > 0 and res["teacher"]["FD-check"] > 0  # the independent feature network
    assert "data.kind=teacher" in json.load(open(out / "runs" / "datafree-js-s0" / "done.json"))["cmd"]
    assert (out / "students.png").is_file() and "| datafree | js | 1 |" in (out / "students.md").read_text()
    # more steps, two in one call (in any order): continues from the checkpoint at 2 to 3, then from 3 to 4, each
    # scored and kept
    args[args.index("--steps") + 1:args.index("--steps") + 2] = ["4", "3"]
    assert ds.main(args) == 0 and log.read_text().count("resumed from") == 2
    assert sorted(os.listdir(out / "results")) == [  # scored on 30 samples, not the default 2000: named so
        f"datafree-js-s0{ema}@{n}-n30.json" for ema in ("-ema0.9", "") for n in (2, 3, 4)] + ["teacher-n30.json"]
    assert json.load(open(out / "students.json"))["settings"]["steps"] == 4  # the table of the last step count
    snaps = out / "runs" / "datafree-js-s0" / "gen_snapshots"  # --keep-snapshots: each step count's export, whole
    assert sorted(os.listdir(snaps)) == [f"step-{n}{ema}" for n in (2, 3, 4) for ema in ("", "-ema0.9")]
    assert sorted(os.listdir(snaps / "step-4")) == sorted(os.listdir(out / "runs" / "datafree-js-s0" / "generator"))
    with pytest.raises(SystemExit, match="step counts must be positive"):
        ds.main([*args[:args.index("--steps") + 1], "0", *args[args.index("--steps") + 3:]])
    torch.set_num_threads(threads)


def test_digits_students_pin_the_data_free_pool(bench):
    """A data-free run's pool is --pool-size unless the command line sets data.pool_size (train.py's default follows
    train.steps, so a sweep continued to more steps would draw another pool); real-digits runs get no pool."""
    import argparse

    ds = importlib.import_module("digits_students")
    a = argparse.Namespace(pool_size=4096, pool_cache=None, overrides=["train.lr=2e-5"])
    free, real = {"mode": "datafree"}, {"mode": "real"}
    assert ds.mode_words(free, a) == ["data.kind=teacher", "data.pool_size=4096"]
    assert ds.mode_words(real, a) == ["data.kind=digits"]
    a.overrides = ["data.pool_size=32768"]
    assert ds.mode_words(free, a) == ["data.kind=teacher"]
    a.pool_cache = "runs/pools"  # --pool-cache: the shared folder, absolute (train.py runs from the repository root)
    assert ds.mode_words(free, a) == ["data.kind=teacher", f"data.pool_cache={os.path.abspath('runs/pools')}"]
    assert ds.mode_words(real, a) == ["data.kind=digits"]


def test_key_value_overrides_may_come_before_and_after_the_options(tmp_path, capsys):
    """The bench scripts and train.py take key=value overrides anywhere on the command line (a schedule appended
    after --seeds / --steps once stopped a sweep with "unrecognized arguments"): the call gets past parsing."""
    ds = _bench_module("digits_students")
    with pytest.raises(SystemExit, match="is not a saved teacher folder"):
        ds.main(["--teacher", str(tmp_path / "none"), "--out", str(tmp_path), "train.lr=2e-5", "--seeds", "0",
                 "--steps", "8", "train.lr_schedule=wsd", "train.lr_decay_fraction=0.25"])
    with pytest.raises(SystemExit):  # right after a list of ints: the preset's error, not "invalid int value"
        _bench_module("gmm_table").main(["--teachers", "ring9", "--seeds", "0", "1", "train.steps=2"])
    assert "unknown mixture preset 'ring9'" in capsys.readouterr().err
    sys.path.insert(0, ROOT)
    try:
        train = importlib.import_module("train")
    finally:
        sys.path.remove(ROOT)
    assert train.main(["objective.divergence=nope", "--resume", "train.steps=1"]) != 0
    assert "nope" in capsys.readouterr().err  # the config's error, not argparse's


def test_digits_students_staged_runs_start_from_the_kept_data_free_export(tmp_path, bench):
    """--modes staged: the real digits (GAN) from the data-free student of the same divergence and seed at
    --init-steps; a missing export or --init-steps says which command makes it."""
    import argparse

    ds = importlib.import_module("digits_students")
    run = {"mode": "staged", "student": "fkl", "seed": 1}
    a = argparse.Namespace(pool_size=4096, overrides=[], out=str(tmp_path), init_steps=0)
    with pytest.raises(SystemExit, match="--init-steps N"):
        ds.mode_words(run, a)
    a.init_steps = 1600
    with pytest.raises(SystemExit, match="--modes datafree --steps 1600 --keep-snapshots"):
        ds.mode_words(run, a)
    snap = tmp_path / "runs" / "datafree-fkl-s1" / "gen_snapshots" / "step-1600"
    snap.mkdir(parents=True)
    (snap / "model_index.json").write_text("{}")
    assert ds.mode_words(run, a) == ["data.kind=digits", f"network.generator_init={snap}"]
    other = tmp_path / "second"  # --init-out: the first stage of another sweep
    a.out, a.init_out = str(other), str(tmp_path)
    assert ds.mode_words(run, a) == ["data.kind=digits", f"network.generator_init={snap}"]
    a.init_out = str(other)
    with pytest.raises(SystemExit, match=f"--out {other}"):
        ds.mode_words(run, a)


def test_digits_student_curves_reads_every_step_count_of_a_sweep(tmp_path, bench):
    """bench/digits_student_curves.py: one curve per run, its points in step order, the teacher's FD as the line."""
    curves = importlib.import_module("digits_student_curves")
    results = tmp_path / "sweep" / "results"
    results.mkdir(parents=True)
    for steps, fd in ((800, 5.0), (200, 9.0), (400, 7.0)):
        (results / f"datafree-js-s1@{steps}.json").write_text(json.dumps({"FD-digits": fd, "class_tv": 0.05}))
    (results / "teacher.json").write_text(json.dumps({"FD-digits": 2.2, "class_tv": 0.03}))
    (results / "datafree-js-s1-ema0.998@200.json").write_text(json.dumps({"FD-digits": 8.0, "class_tv": 0.04}))
    assert curves.group_of("fu5", "datafree-js-s1-ema0.998") == "fu5 [ema0.998]"
    assert curves.group_of("fu5", "datafree-js-s1") == "fu5"
    curves.main([f"{tmp_path / 'sweep'}:fu2", "--out", str(tmp_path / "curves")])
    rec = json.loads((tmp_path / "curves.json").read_text())
    run = rec["sweeps"][0]["runs"]["datafree-js-s1"]
    assert [p["steps"] for p in run] == [200, 400, 800] and [p["FD-digits"] for p in run] == [9.0, 7.0, 5.0]
    assert [p["FD-digits"] for p in rec["sweeps"][0]["runs"]["datafree-js-s1-ema0.998"]] == [8.0]  # its own curve
    assert rec["teacher_fd"] == 2.2 and rec["sweeps"][0]["label"] == "fu2" and (tmp_path / "curves.png").is_file()


def test_snapshot_average_is_the_mean_of_the_window(tmp_path, bench):
    """bench/digits_snapshot_average.py: the steps in the window, in order; the copy's weights are their mean."""
    from safetensors.torch import load_file, save_file

    avg = importlib.import_module("digits_snapshot_average")
    for step, value in ((200, 9.0), (400, 1.0), (600, 3.0)):
        (tmp_path / f"step-{step}" / "generator").mkdir(parents=True)
        save_file({"w": torch.full((2,), value)}, str(tmp_path / f"step-{step}" / avg.WEIGHTS))
        (tmp_path / f"step-{step}" / "model_index.json").write_text(str(step))
    found = avg.snapshots(str(tmp_path), 300, 600)
    assert [s for s, _ in found] == [400, 600]
    out = avg.average_pipeline([p for _, p in found], str(tmp_path / "avg"))
    assert torch.equal(load_file(os.path.join(out, avg.WEIGHTS))["w"], torch.full((2,), 2.0))
    assert (tmp_path / "avg" / "model_index.json").read_text() == "600"  # the rest: the last snapshot's


def test_digits_scorer_copies_the_shipped_networks_only_for_their_settings(tmp_path, bench):
    """bench/digits_score.py: a work folder without a classifier gets the shipped one when it was trained with the
    settings asked for (one scale on every machine), and trains its own for any other; the repository's shipped pair
    are the 1500-step FD-digits and check networks the bench asks for by default."""
    from safetensors.torch import load_file

    ds = importlib.import_module("digits_score")
    shipped = str(tmp_path / "shipped")
    ds._classifier(shipped, 3, seed=5, width=8, feature_dim=16)
    copied = ds._classifier(str(tmp_path / "a"), 3, shipped, seed=5, width=8, feature_dim=16)
    same = load_file(os.path.join(shipped, "model.safetensors"))
    assert all(torch.equal(same[k], v) for k, v in load_file(os.path.join(copied, "model.safetensors")).items())
    other = ds._classifier(str(tmp_path / "b"), 3, shipped, seed=6, width=8, feature_dim=16)  # another seed: trained
    assert json.loads(open(os.path.join(other, "config.json")).read())["seed"] == 6
    assert not ds._same_settings(shipped, 4, {"seed": 5, "width": 8, "feature_dim": 16})            # another length
    assert not ds._same_settings(shipped, 3, {"seed": 5, "width": 8, "feature_dim": 16, "test_fraction": 0.5})
    assert ds._same_settings(os.path.join(ds.SHIPPED, "classifier"), 1500, {"seed": 0})
    assert ds._same_settings(os.path.join(ds.SHIPPED, "classifier_check"), 1500, ds.CHECK_NET)


def test_digits_scorers_of_one_folder_can_score_at_once(tmp_path, bench):
    """bench/digits_score.py: two scorers sharing a work folder (two sweeps' processes) score at the same time, each
    from its own samples (a shared samples folder was emptied under the other), and leave no samples behind."""
    from concurrent.futures import ThreadPoolExecutor

    ds = importlib.import_module("digits_score")
    work = str(tmp_path / "work")

    class Noise:
        def __init__(self, level):
            self.level = level

        def sample(self, n, seed=0, cond=None):
            g = torch.Generator().manual_seed(seed)
            return (self.level * torch.randn(n, 1, 8, 8, generator=g)).clamp(-1, 1)

    first = ds.DigitsScorer(work, classifier_steps=5, check=False)
    alone = first.score(Noise(0.3), 60, 0)["FD-digits"]
    second = ds.DigitsScorer(work, classifier_steps=5, check=False)
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda job: job[0].score(Noise(job[1]), 60, 0), [(first, 0.3), (second, 0.9)])
    assert a["FD-digits"] == pytest.approx(alone) and b["FD-digits"] != pytest.approx(alone)
    assert sorted(os.listdir(work)) == ["classifier", "digits_png"]
    assert a["networks"] == {"classifier": first.networks["classifier"]} and len(a["networks"]["classifier"]) == 16
    # a stored score is reused beside this scorer's only when its networks are these (or unrecorded: older scores)
    assert first.same_scale(a) and first.same_scale({"FD-digits": 1.0})
    assert not first.same_scale({"FD-digits": 1.0, "networks": {"classifier": "0" * 16}})


def test_score_exports_unpacks_groups_seeds_and_reuses_scores(tmp_path, bench):
    """bench/digits_score_exports.py: the runs of a tar (``<run>/snap/step-N/generator*``) are grouped per variant,
    EMA and step over seeds; a stored score is reused (nothing is sampled here)."""
    import tarfile

    se = importlib.import_module("digits_score_exports")
    src, out = tmp_path / "src", tmp_path / "out"
    fds = {"wsd-s0@4000": 2.0, "wsd-s1@4000": 4.0, "wsd-s0-ema0.99@4000": 5.0, "wsd-s1-ema0.99@4000": 7.0,
           "wsd-s0@3600": 9.0}
    for name in fds:
        run, step = name.split("@")
        run, _, ema = run.partition("-ema")
        (src / run / "snap" / f"step-{step}" / ("generator" + (f"-ema{ema}" if ema else ""))).mkdir(parents=True)
        (out / "results").mkdir(parents=True, exist_ok=True)
        (out / "results" / f"{name}.json").write_text(json.dumps(
            {"FD-digits": fds[name], "FD-check": 1.0, "recall": 0.9, "class_tv": 0.02}))
    with tarfile.open(tmp_path / "runs.tar", "w") as tf:
        for run in ("wsd-s0", "wsd-s1"):
            tf.add(src / run, arcname=run)
    (tmp_path / "teacher.json").write_text(json.dumps({"FD-digits": 2.0}))
    se.main(["--out", str(out), "--tars", str(tmp_path / "runs.tar"), "--teacher-score", str(tmp_path / "teacher.json")])
    rows = {(r["variant"], r["ema"], r["step"]): r for r in json.loads((out / "scores.json").read_text())["rows"]}
    assert set(rows) == {("wsd", "first", 4000), ("wsd", "0.99", 4000), ("wsd", "first", 3600)}
    assert rows["wsd", "first", 4000]["FD-digits"] == pytest.approx(3.0)
    assert rows["wsd", "first", 4000]["FD-digits_std"] == pytest.approx(2 ** 0.5)
    assert rows["wsd", "0.99", 4000]["seeds"] == ["0", "1"] and rows["wsd", "first", 3600]["seeds"] == ["0"]
    assert "| wsd | first | 4000 | 3.00 ± 1.41 | 1.50 |" in (out / "scores.md").read_text()
    rows = [{"variant": "datafree-fkl", "ema": "first", "step": 4000, "FD-digits": 1.5, "seeds": ["0", "1", "2"]},
            {"variant": "datafree-js", "ema": "first", "step": 4000, "FD-digits": 1.2, "seeds": ["0"]},
            {"variant": "real-js", "ema": "first", "step": 4000, "FD-digits": 0.5, "seeds": ["0", "1", "2"]}]
    (v,) = se.datafree_verdicts(rows, teacher_fd=1.25)   # the best data-free variant, real-data rows left out
    assert v["variant"] == "datafree-js" and v["ratio"] == pytest.approx(0.96) and not v["met"]  # one seed only
    (v,) = se.datafree_verdicts(rows[:1], teacher_fd=1.25)
    assert v["ratio"] == pytest.approx(1.2) and v["met"]
    # digits_students --keep-snapshots' layout (<run>/gen_snapshots/step-N[-ema<d>]), scores on other samples kept
    # under their own names (-n<N>), and a --steps filter
    keep = tmp_path / "sweep" / "runs" / "datafree-fkl-s2" / "gen_snapshots"
    for snap in ("step-2800", "step-4000", "step-4000-ema0.99"):
        (keep / snap).mkdir(parents=True)
    found = {(e["run"], e["step"], e["ema"]) for e in se.exports(str(tmp_path / "sweep" / "runs"))}
    assert found == {("datafree-fkl-s2", 2800, ""), ("datafree-fkl-s2", 4000, ""), ("datafree-fkl-s2", 4000, "0.99")}
    (tmp_path / "sweep" / "results").mkdir()
    for name, fd in (("datafree-fkl-s2@4000-n500", 3.0), ("datafree-fkl-s2-ema0.99@4000-n500", 4.0),
                     ("datafree-fkl-s2@4000", 99.0)):  # the last: a score on the default samples, not read here
        (tmp_path / "sweep" / "results" / f"{name}.json").write_text(json.dumps(
            {"FD-digits": fd, "FD-check": 1.0, "recall": 0.9, "class_tv": 0.02}))
    se.main(["--out", str(tmp_path / "sweep"), "--num-samples", "500", "--steps", "4000"])
    res = json.loads((tmp_path / "sweep" / "scores-n500-steps4000.json").read_text())
    assert {(r["ema"], r["FD-digits"]) for r in res["rows"]} == {("first", 3.0), ("0.99", 4.0)}
    assert res["num_samples"] == 500 and not (tmp_path / "sweep" / "scores.json").exists()
    ds = importlib.import_module("digits_score")
    assert ds.result_tag("teacher", 2000, 0) == "teacher" and ds.result_tag("t@4", 10000, 3) == "t@4-n10000-seed3"
    # several sample seeds: each model's score is the mean over them (a missing one would be scored: all stored here)
    for name, fd in (("datafree-fkl-s2@4000-n500-seed1", 5.0), ("datafree-fkl-s2-ema0.99@4000-n500-seed1", 6.0)):
        (tmp_path / "sweep" / "results" / f"{name}.json").write_text(json.dumps(
            {"FD-digits": fd, "FD-check": 3.0, "recall": 0.8, "class_tv": 0.04}))
    se.main(["--out", str(tmp_path / "sweep"), "--num-samples", "500", "--steps", "4000", "--sample-seeds", "0", "1"])
    res = json.loads((tmp_path / "sweep" / "scores-n500-seeds0-1-steps4000.json").read_text())
    row = {r["ema"]: r for r in res["rows"]}["first"]
    assert row["FD-digits"] == pytest.approx(4.0) and row["FD-check"] == pytest.approx(2.0)
    assert res["exports"][0]["score"]["FD-digits_each"] == [3.0, 5.0] and res["sample_seeds"] == [0, 1]


def test_score_exports_stored_joins_scores_whose_export_is_gone(tmp_path, bench):
    """``--stored``: a seed scored on an earlier machine (its export deleted, its scores kept in OUT/results on every
    sample seed) joins the seeds on disk; one missing a sample seed is left out; without the flag it is not read."""
    se = importlib.import_module("digits_score_exports")
    out = tmp_path / "sweep"
    (out / "runs" / "staged-fkl-s0" / "gen_snapshots" / "step-1600").mkdir(parents=True)
    (out / "results").mkdir()
    scores = {"staged-fkl-s0@1600-n500": 1.0, "staged-fkl-s0@1600-n500-seed1": 3.0,     # on disk
              "staged-fkl-s1@1600-n500": 5.0, "staged-fkl-s1@1600-n500-seed1": 7.0,     # stored only
              "staged-fkl-s1-ema0.99@1600-n500": 8.0, "staged-fkl-s1-ema0.99@1600-n500-seed1": 8.0,
              "staged-fkl-s2@1600-n500": 9.0,                                           # one sample seed only
              "teacher-n500": 1.0, "staged-fkl-s1@800-n500": 4.0, "staged-fkl-s1@800-n500-seed1": 4.0}
    for name, fd in scores.items():
        (out / "results" / f"{name}.json").write_text(json.dumps(
            {"FD-digits": fd, "FD-check": 1.0, "recall": 0.9, "class_tv": 0.02}))
    argv = ["--out", str(out), "--num-samples", "500", "--sample-seeds", "0", "1", "--steps", "1600"]
    se.main(argv)
    res = json.loads((out / "scores-n500-seeds0-1-steps1600.json").read_text())
    assert [(r["ema"], r["seeds"]) for r in res["rows"]] == [("first", ["0"])]
    se.main(argv + ["--stored"])
    res = json.loads((out / "scores-n500-seeds0-1-steps1600.json").read_text())
    rows = {r["ema"]: r for r in res["rows"]}
    assert rows["first"]["seeds"] == ["0", "1"] and rows["first"]["FD-digits"] == pytest.approx(4.0)  # (2 + 6) / 2
    assert rows["0.99"]["seeds"] == ["1"] and rows["0.99"]["FD-digits"] == pytest.approx(8.0)
    assert {(e["run"], e["stored_only"]) for e in res["exports"]} == {
        ("staged-fkl-s0", False), ("staged-fkl-s1", True)}
    assert res["networks"] == [None]  # every score here predates the networks' record
    with pytest.raises(SystemExit, match="no stored score"):
        se.main(["--out", str(tmp_path / "empty"), "--stored"])
    # a stored score of other feature networks is on another scale: with its model gone it is refused, not mixed in
    (out / "results" / "staged-fkl-s1@1600-n500.json").write_text(json.dumps(
        {"FD-digits": 5.0, "FD-check": 1.0, "recall": 0.9, "class_tv": 0.02, "networks": {"classifier": "0" * 16}}))
    with pytest.raises(SystemExit, match="another scale"):
        se.main(argv + ["--stored"])


def test_pool_fd_scores_chunks_and_ranks_a_real_pool_first(tmp_path, bench):
    """bench/digits_pool_fd.py: a "pool" of the real digits themselves is far closer to them (FD-digits) than a pool of
    noise; the chunks are disjoint (count = size // chunk) and their spread is reported."""
    import numpy as np
    from PIL import Image

    pf = importlib.import_module("digits_pool_fd")
    ds = importlib.import_module("digits_score")
    work = tmp_path / "work"
    ds.DigitsScorer(str(work), classifier_steps=5, check=False)  # trains the classifier, writes the PNGs
    pngs = sorted((work / "digits_png").iterdir())[:300]
    real = torch.tensor(np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32) for p in pngs]))
    real = (real / 127.5 - 1).unsqueeze(1)
    noise = (0.5 * torch.randn(300, 1, *real.shape[-2:], generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    for name, x in (("real", real), ("noise", noise)):
        torch.save({"x": x, "labels": None}, tmp_path / f"{name}.pt")
    out = tmp_path / "pool_fd"
    pf.main([str(tmp_path / "real.pt"), str(tmp_path / "noise.pt"), "--work", str(work), "--chunks", "100", "400",
             "--out", str(out), "--classifier-steps", "5"])
    rows = json.loads((tmp_path / "pool_fd.json").read_text())["rows"]
    assert [r["size"] for r in rows] == [300, 300]
    assert [c["size"] for c in rows[0]["chunks"]] == [100] and rows[0]["chunks"][0]["chunks"] == 3  # 400 > 300: none
    assert rows[0]["whole"]["FD-digits"] < 0.1 * rows[1]["whole"]["FD-digits"]
    assert rows[0]["chunks"][0]["FD-digits_std"] > 0 and "| 300 |" in (tmp_path / "pool_fd.md").read_text()


def test_class_histogram_averages_sample_seeds_then_training_seeds(tmp_path, bench):
    """bench/digits_class_histogram.py: a model's histogram is the mean over its sample seeds; a variant's, the mean
    over training seeds, with the TV to the teacher per seed; other step counts, sample counts and EMAs are left out."""
    hist = importlib.import_module("digits_class_histogram")
    results = tmp_path / "results"
    results.mkdir()
    uniform = [0.1] * 10

    def write(name, h, class_tv=0.02):
        (results / name).write_text(json.dumps({"FD-digits": 1.0, "class_tv": class_tv, "class_histogram": h}))

    write("teacher-n10000.json", uniform)
    write("teacher-n10000-seed1.json", uniform)
    tilted = [0.2] + [0.8 / 9] * 9                    # TV to uniform: 0.1
    write("datafree-fkl-s0@4000-n10000.json", tilted)
    write("datafree-fkl-s0@4000-n10000-seed1.json", uniform)  # seed 0's mean: TV 0.05
    write("datafree-fkl-s1@4000-n10000.json", uniform, class_tv=0.04)
    write("datafree-fkl-s1@3200-n10000.json", tilted)         # another step: left out
    write("datafree-fkl-s1-ema0.99@4000-n10000.json", tilted)  # another EMA: left out
    write("datafree-fkl-s1@4000.json", tilted)                # another sample count: left out
    write("real-js-s2@4000-n10000.json", tilted)
    hist.main(["--results", str(results), "--step", "4000", "--num-samples", "10000", "--out", str(tmp_path / "h")])
    rec = json.loads((tmp_path / "h.json").read_text())
    fkl = rec["students"]["datafree-fkl"]
    assert fkl["seeds"] == [0, 1]
    assert fkl["tv_to_teacher"] == pytest.approx([0.05, 0.0])
    assert fkl["class_tv_to_real"] == pytest.approx([0.02, 0.04])
    assert fkl["histogram_mean"][0] == pytest.approx(0.125)
    assert rec["students"]["real-js"]["tv_to_teacher"] == pytest.approx([0.1])
    assert rec["teacher"]["sample_seeds"] == 2 and sum(rec["real_digits"]) == pytest.approx(1.0)
    assert (tmp_path / "h.png").is_file() and "TV to the teacher" in (tmp_path / "h.md").read_text()
    with pytest.raises(SystemExit):  # no student of that step: a clear error, not an empty table
        hist.main(["--results", str(results), "--step", "999", "--out", str(tmp_path / "none")])


def test_real_digits_table_picks_the_best_ema_and_says_the_verdict(tmp_path, bench):
    """bench/digits_real_table.py: per recipe each EMA's mean over seeds, the best EMA against the teacher, and
    target 3 met only at <= 1x the teacher on >= 3 seeds; a bad entry or a missing row is a clear error."""
    rt = importlib.import_module("digits_real_table")

    def row(ema, fds, step=800):
        return {"variant": "staged-fkl", "ema": ema, "step": step, "seeds": [str(i) for i in range(len(fds))],
                "FD-digits": sum(fds) / len(fds), "FD-digits_std": 0.1, "fd_values": fds, "FD-check": 2.0,
                "recall": 0.9}

    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"teacher_fd": 1.25, "rows": [
        row("first", [1.5, 1.3, 1.4]), row("0.99", [1.2, 1.2, 1.2]), row("0.995", [1.3, 1.3, 1.3]),
        row("first", [9.0, 9.0], step=1600)]}))
    out = tmp_path / "t"
    rt.main(["--out", str(out), "--entry", f"three seeds={scores}:staged-fkl:800",
             "--entry", f"two seeds={scores}:staged-fkl:1600"])
    rec = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert rec[0]["best_ema"] == "0.99" and rec[0]["ratio"] == pytest.approx(0.96) and rec[0]["met"]
    assert rec[1]["ratio"] == pytest.approx(7.2) and not rec[1]["met"]
    text = (tmp_path / "t.md").read_text()
    assert "1.40 ± 0.10 (1.50 / 1.30 / 1.40)" in text and "met by three seeds at 800 steps." in text
    for bad in ("no-label", f"x={scores}:staged-fkl:many", f"x={scores}:staged-js:800"):
        with pytest.raises(SystemExit):
            rt.main(["--out", str(tmp_path / "bad"), "--entry", bad])


def test_disc_probe_auc_and_a_checkpoint_of_a_real_digits_run(tmp_path, bench, tiny_digits_teacher):
    """bench/digits_disc_probe.py: the Mann-Whitney AUC against its closed cases, and a probe of a two-step real-digits
    run's checkpoint: one row per noise level, the train split (1437) and the held-out split (360) measured."""
    from fdistill.config import load_config

    probe = importlib.import_module("digits_disc_probe")
    assert probe.auc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert probe.auc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 0.0
    assert probe.auc(torch.ones(3), torch.ones(5)) == 0.5  # ties count one half
    assert probe.auc(torch.tensor([1.0, 3.0]), torch.tensor([2.0])) == 0.5
    student = tmp_path / "student_run"
    common = ["train.warmup_steps=0", "log.progress=false", "log.trackers=[]", "train.batch_size=8"]
    run_distill(load_config(os.path.join(ROOT, "configs/digits.yaml"),
                            [f"out_dir={student}", f"teacher.path={tiny_digits_teacher}", "train.steps=2",
                             "train.fake_updates=1", "train.ema=[0.9]", "discriminator.r1_gamma=1.0", *common]))
    r = probe.probe(str(student / "checkpoints" / "step-2"))
    reset_accelerate()
    assert r["step"] == 2 and r["r1_gamma"] == 1.0 and (r["n_train"], r["n_test"]) == (1437, 360)
    assert [row["sigma"] for row in r["rows"]] == list(probe.SIGMAS)
    for row in r["rows"]:
        assert 0 <= row["auc_train_test"] <= 1 and 0 <= row["auc_test_gen"] <= 1 and row["r1"] >= 0
        assert row["gap_train_gen"] == pytest.approx(row["gap_train_test"] + row["gap_test_gen"], abs=1e-5)


def test_eval_cli_on_the_installed_shipped_network_gives_the_bench_scores(tmp_path, bench, monkeypatch, capsys):
    """The README's FD-digits commands: ``python -m eval.digits_classifier --from bench/results/digits_scorer/
    classifier`` installs the network of the tables (not a folder that is not a classifier), and ``python -m eval.fid
    score --features digits`` then gives the bench scorer's FD-digits, precision and recall on the same samples."""
    import fdistill
    from eval import digits_classifier as dc
    from eval import fid as efid

    ds = importlib.import_module("digits_score")

    class Noisy:  # a stand-in generator: noise around the mean digit
        def sample(self, n, seed=0, cond=None):
            g = torch.Generator().manual_seed(seed)
            return (0.5 * torch.randn(n, 1, 16, 16, generator=g)).clamp(-1, 1)

    with pytest.raises(FileNotFoundError, match="no digits classifier"):
        dc.main(["--from", str(tmp_path), "--out", str(tmp_path / "nothing")])
    assert not (tmp_path / "nothing").exists()
    installed = str(tmp_path / "cache" / "digits_classifier")
    info = dc.main(["--from", os.path.join(ds.SHIPPED, "classifier"), "--out", installed,
                    "--export-images", str(tmp_path / "digits_png")])
    assert "copied from" in capsys.readouterr().out and len(os.listdir(tmp_path / "digits_png")) == 1797
    scorer = ds.DigitsScorer(str(tmp_path / "work"), check=False)
    assert info["sha256"] == scorer.networks["classifier"]
    bench_scores = scorer.score(Noisy(), 300, 0)

    monkeypatch.setenv(dc.CLASSIFIER_ENV, installed)  # the default place the CLI reads
    monkeypatch.setattr(fdistill, "load_generator", lambda path, device=None: Noisy(), raising=False)
    rows = efid.main(["score", "--gen", "unused", "--ref-folder", str(tmp_path / "digits_png"), "--features",
                      "digits", "--num-samples", "300", "--batch-size", "500", "--precision-recall",
                      "--num-workers", "0", "--device", "cpu"])
    cli = {r["metric"]: r["value"] for r in rows if r["seed"] == 0}
    for metric in ("FD-digits", "precision", "recall"):
        assert cli[metric] == pytest.approx(bench_scores[metric], rel=1e-6), metric
