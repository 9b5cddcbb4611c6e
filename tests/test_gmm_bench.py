"""bench/gmm_divergences.py on a tiny budget: it writes its table, JSON and plot; a finished run is reused only when
its settings match the overrides (a changed ``train.steps`` trains again); a malformed objective is refused."""
import importlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["network.fit_steps=2", "network.flow_fit_steps=2", "train.batch_size=16", "network.hidden=16", "network.depth=2", "train.log_every=1"]


def _run(tmp_path, *args):
    cmd = [sys.executable, "bench/gmm_divergences.py", "--seeds", "0", "--workers", "1", "--runs",
           str(tmp_path / "runs"), "--out", str(tmp_path / "gmm"), *args]
    return subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)


def _bench(name):
    """A bench script as a module (bench/ is not a package). A test runs the command line once as a subprocess and
    its later calls through ``main(argv)`` in this process, without a new interpreter's imports (~10 s each). bench/
    stays on the path: the scripts import their siblings when they need them."""
    if os.path.join(REPO, "bench") not in sys.path:
        sys.path.insert(0, os.path.join(REPO, "bench"))
    return importlib.import_module(name)


def test_gmm_bench_writes_results_and_retrains_on_other_settings(tmp_path):
    # overrides after --objectives are still overrides
    r = _run(tmp_path, "--objectives", "fdistill:fkl", "train.steps=2", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "gmm.json").read_text())
    (row,) = res["runs"]
    assert (row["divergence"], row["steps"], row["modes_covered"] >= 0) == ("fkl", 2, True)
    assert "| fdistill | fkl |" in (tmp_path / "gmm.md").read_text() and (tmp_path / "gmm.png").is_file()

    argv = ["--seeds", "0", "--workers", "1", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "gmm")]
    assert _bench("gmm_divergences").main([*argv, "--objectives", "fdistill:fkl", "train.steps=3", *TINY]) == 0
    assert json.loads((tmp_path / "gmm.json").read_text())["runs"][0]["steps"] == 3


def test_gmm_bench_refuses_a_malformed_objective_and_exits_1_when_a_run_fails(tmp_path, capsys, monkeypatch):
    gmm_divergences = _bench("gmm_divergences")
    argv = ["--seeds", "0", "--workers", "1", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "gmm")]
    with pytest.raises(SystemExit) as bad:
        gmm_divergences.main([*argv, "--objectives", "fkl"])
    err = capsys.readouterr().err
    assert bad.value.code == 2 and "NAME:DIVERGENCE" in err and "['fkl']" in err
    failed = {"objective": "fdistill", "divergence": "fkl", "seed": 0, "error": "train.py exited with 1"}
    monkeypatch.setattr(gmm_divergences, "run_one", lambda *a: failed)
    assert gmm_divergences.main([*argv, "--objectives", "fdistill:fkl"]) == 1
    assert "FAILED fdistill fkl 0 train.py exited with 1" in capsys.readouterr().err
    assert json.loads((tmp_path / "gmm.json").read_text())["runs"] == [failed]


def test_gmm_table_runs_students_and_the_ceiling_on_a_scaled_teacher(tmp_path, capsys):
    """bench/gmm_table.py on a tiny budget: a scaled preset, one objective and the regression baseline; the table
    names the teacher's own NLL and counts the seeds that meet the targets."""
    cmd = [sys.executable, "bench/gmm_table.py", "--teachers", "ring8*4", "--objectives", "fdistill:fkl",
           "--baseline", "--seeds", "0", "--workers", "1", "--runs", str(tmp_path / "runs"), "--out",
           str(tmp_path / "t"), "train.steps=2", *TINY]
    r = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "t.json").read_text())
    assert {(x["objective"], x["teacher"]) for x in res["runs"]} == {("fdistill", "ring8*4"), ("regress", "ring8*4")}
    # the x4 copy's exact NLL is ring8's plus d log 4
    assert abs(res["teacher_reference"]["ring8*4"]["nll"] - (0.485 + 2 * 1.3863)) < 0.05
    md = (tmp_path / "t.md").read_text()
    assert "| ring8*4 | fdistill fkl | 1 |" in md and "PF regression (ceiling)" in md and "/1 |" in md
    assert (tmp_path / "t.png").is_file()
    # a sweep's per-teacher results merge into one table, rows measured before the width measures existed filled in
    row = next(x for x in res["runs"] if x["objective"] == "fdistill")
    old = dict(res, runs=[{k: v for k, v in x.items() if k != "nll_teacher_width"} for x in res["runs"]])
    (tmp_path / "m_ring8x4.json").write_text(json.dumps(old))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- t -->\n| old | table |\n<!-- /t -->\nreading\n")
    gmm_table, merge_main = _bench("gmm_table"), _bench("gmm_table_merge").main
    assert merge_main(["--out", str(tmp_path / "m"), "--teachers", "ring8*4", "grid25", "--readme", "t",
                       "--readme-path", str(readme)]) == 0
    assert readme.read_text() == f"intro\n<!-- t -->\n{(tmp_path / 'm.md').read_text().rstrip()}\n<!-- /t -->\nreading\n"
    merged = json.loads((tmp_path / "m.json").read_text())
    assert merged["meta"]["missing"] == ["grid25"] and merged["meta"]["seeds"] == {"ring8*4": [0]}
    again_row = next(x for x in merged["runs"] if x["objective"] == "fdistill")
    assert abs(again_row["nll_teacher_width"] - row["nll_teacher_width"]) < 0.2  # another draw of the same generator
    assert "| ring8*4 | fdistill fkl | 1 |" in (tmp_path / "m.md").read_text()
    # the committed results are enough to resume: with the run directories gone, nothing trains again
    import shutil

    shutil.rmtree(tmp_path / "runs")
    assert gmm_table.main(cmd[2:]) == 0 and not (tmp_path / "runs").exists()
    assert json.loads((tmp_path / "t.json").read_text())["runs"] == res["runs"]
    # ... unless they were recorded by an earlier trainer revision (a fix that changes what the same config trains to)
    meta = res["meta"]
    assert meta["trainer_revision"] == gmm_table.TRAINER_REVISION
    assert gmm_table.recorded_runs(str(tmp_path / "t.json"), meta["overrides"], meta["recipe"])
    (tmp_path / "t.json").write_text(json.dumps(dict(res, meta=dict(meta, trainer_revision=1))))
    assert gmm_table.recorded_runs(str(tmp_path / "t.json"), meta["overrides"], meta["recipe"]) == {}
    with pytest.raises(SystemExit) as bad:
        gmm_table.main(["--teachers", "ring9"])
    assert bad.value.code == 2 and "unknown mixture preset 'ring9'" in capsys.readouterr().err


def test_gmm_table_keeps_each_finished_run_when_a_sweep_stops(tmp_path, monkeypatch):
    """bench/gmm_table.py writes <out>.json after every finished run: a sweep stopped half-way (here the second job
    fails hard) leaves the first run's row and the count of unfinished jobs, and the next call reuses that row."""
    gmm_table = _bench("gmm_table")

    def fake_run(teacher, name, div, seed, root, extra, recorded=None):
        known = (recorded or {}).get((teacher, name, div, seed))
        if known is not None:
            return known
        if seed == 1:
            raise KeyboardInterrupt("stopped")
        return {"teacher": teacher, "objective": name, "divergence": div, "seed": seed, "mode_recall": 1.0}

    monkeypatch.setattr(gmm_table, "run_one", fake_run)
    monkeypatch.setattr(gmm_table, "teacher_reference", lambda t: {"nll": 0.5})
    argv = ["--teachers", "ring8", "--objectives", "fdistill:fkl", "--seeds", "0", "1", "--workers", "1", "--out",
            str(tmp_path / "t"), "train.steps=2"]
    with pytest.raises(KeyboardInterrupt):
        gmm_table.main(argv)
    res = json.loads((tmp_path / "t.json").read_text())
    assert [r["seed"] for r in res["runs"]] == [0] and res["meta"]["unfinished"] == 1
    assert gmm_table.recorded_runs(str(tmp_path / "t.json"), res["meta"]["overrides"], res["meta"]["recipe"])
    monkeypatch.setattr(gmm_table, "table", lambda *a: "table")
    monkeypatch.setattr(gmm_table, "figure", lambda *a: None)
    monkeypatch.setattr(gmm_table, "run_one", lambda t, n, d, s, root, extra, recorded=None: (
        recorded[(t, n, d, s)] if (t, n, d, s) in recorded else dict(teacher=t, objective=n, divergence=d, seed=s)))
    assert gmm_table.main(argv) == 0
    res = json.loads((tmp_path / "t.json").read_text())
    assert [r["seed"] for r in res["runs"]] == [0, 1] and res["meta"]["unfinished"] == 0
    assert res["runs"][0]["mode_recall"] == 1.0  # the recorded row, not trained again


def test_gmm_table_reuses_the_same_runs_from_another_table(tmp_path, monkeypatch):
    """--reuse-from: a row of another table's results made with the same overrides, recipe words and trainer revision
    is the same run and is not trained again; made with other overrides it is."""
    gmm_table = _bench("gmm_table")

    trained = []

    def fake_run(teacher, name, div, seed, root, extra, recorded=None):
        if (teacher, name, div, seed) in (recorded or {}):
            return recorded[(teacher, name, div, seed)]
        trained.append((name, div, seed))
        return {"teacher": teacher, "objective": name, "divergence": div, "seed": seed, "mode_recall": 0.5}

    monkeypatch.setattr(gmm_table, "run_one", fake_run)
    monkeypatch.setattr(gmm_table, "teacher_reference", lambda t: {"nll": 0.5})
    monkeypatch.setattr(gmm_table, "table", lambda *a: "table")
    monkeypatch.setattr(gmm_table, "figure", lambda *a: None)
    overrides = ["train.steps=2"]
    other = {"meta": {"overrides": overrides, "recipe": gmm_table.recipe_words(overrides, warm_start=True),
                      "trainer_revision": gmm_table.TRAINER_REVISION},
             "runs": [{"teacher": "ring8", "objective": "fdistill", "divergence": "fkl", "seed": 0,
                       "mode_recall": 1.0}]}
    (tmp_path / "other.json").write_text(json.dumps(other))
    argv = ["--teachers", "ring8", "--objectives", "fdistill:fkl", "fdistill:js", "--seeds", "0", "--workers", "1",
            "--reuse-from", str(tmp_path / "other.json"), "--out", str(tmp_path / "t")]
    assert gmm_table.main([*argv, *overrides]) == 0
    res = json.loads((tmp_path / "t.json").read_text())
    assert trained == [("fdistill", "js", 0)]  # forward KL came from the other table
    assert [r["mode_recall"] for r in res["runs"]] == [1.0, 0.5]
    assert res["meta"]["reuse_from"] == [str(tmp_path / "other.json")]
    trained.clear()
    assert gmm_table.main([*argv, "--out", str(tmp_path / "u"), "train.steps=3"]) == 0  # other settings: trained
    assert sorted(trained) == [("fdistill", "fkl", 0), ("fdistill", "js", 0)]
    with pytest.raises(SystemExit):
        gmm_table.main([*argv[:-2], "--reuse-from", str(tmp_path / "missing.json"), "--out", str(tmp_path / "v")])


def test_gmm_longer_writes_curves_for_each_length(tmp_path, capsys):
    """bench/gmm_longer.py on a tiny budget: runs of 1x and 2x the steps with exact measures every step, their curves
    in the JSON and one plot."""
    cmd = [sys.executable, "bench/gmm_longer.py", "--teacher", "ring8", "--objectives", "fdistill:fkl", "--seeds", "0",
           "--multiples", "1", "2", "--steps", "2", "--every", "1", "--workers", "1", "--runs", str(tmp_path / "runs"),
           "--out", str(tmp_path / "gmm_longer_ring8_fkl_t"), *TINY, "train.eval_samples=500"]
    r = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "gmm_longer_ring8_fkl_t.json").read_text())
    lengths = sorted(len(c) for c in res["curves"].values())
    assert lengths == [2, 4]  # eval rows at every step of the 2- and 4-step runs
    assert {x["objective"] for x in res["runs"]} == {"fdistill", "regress"}
    assert (tmp_path / "gmm_longer_ring8_fkl_t.png").is_file() and res["unfinished"] == []
    # with the run directories gone, a second call reuses the recorded rows and keeps their curves
    (tmp_path / "runs").rename(tmp_path / "runs_kept")
    gmm_longer, summary_main = _bench("gmm_longer"), _bench("gmm_longer_summary").main
    argv = cmd[2:]
    assert gmm_longer.main(argv) == 0 and not (tmp_path / "runs").exists()
    assert json.loads((tmp_path / "gmm_longer_ring8_fkl_t.json").read_text())["curves"] == res["curves"]
    (tmp_path / "runs_kept").rename(tmp_path / "runs")
    # a call with one length only keeps the other lengths' rows and curves in the file
    assert gmm_longer.main([*argv[:argv.index("--multiples") + 1], "2", *argv[argv.index("--multiples") + 3:]]) == 0
    only_2x = json.loads((tmp_path / "gmm_longer_ring8_fkl_t.json").read_text())
    assert only_2x["multiples"] == [1, 2] and only_2x["curves"] == res["curves"]
    assert sorted(map(json.dumps, only_2x["runs"])) == sorted(map(json.dumps, res["runs"]))
    # the summary over teacher x divergence pairs: a row per length, a verdict per measure, what is missing listed
    # (pairs not measured, and lengths a stopped sweep left unfinished: here a 4x marked so)
    pair = tmp_path / "gmm_longer_ring8_fkl_t.json"
    pair.write_text(json.dumps(dict(json.loads(pair.read_text()), unfinished=[4])))
    (tmp_path / "README.md").write_text("intro\n<!-- longer -->\nold\n<!-- /longer -->\nafter\n")
    # a variant of the recipe measured at 2x only (tag _tp) is compared with the recipe's 1x, in a second table
    longer_only = dict(res, runs=[x for x in res["runs"] if x["multiple"] == 2])
    (tmp_path / "gmm_longer_ring8_fkl_tp.json").write_text(json.dumps(longer_only))
    # the same variant made by another command at 4x (tag _tq) is merged into it with TAG+TAG
    as_4x = [dict(x, multiple=4) for x in longer_only["runs"]]
    (tmp_path / "gmm_longer_ring8_fkl_tq.json").write_text(json.dumps(dict(longer_only, runs=as_4x)))
    assert summary_main(["--teachers", "ring8", "--divergences", "fkl", "js", "--tag", "_t", "--results",
                         str(tmp_path), "--ceiling", str(tmp_path / "none_{teacher}.json"),
                         str(tmp_path / "gmm_longer_{teacher}_fkl_t.json"), "--probe", "lr/2=_tp", "--probe",
                         "both=_tp+_tq", "--out", str(tmp_path / "summary"), "--readme", "longer", "--readme-path",
                         str(tmp_path / "README.md")]) == 0
    md = (tmp_path / "summary.md").read_text()
    assert "| ring8 | fkl lr/2 | 1× (2) | 1 |" in md and "| ring8 | fkl lr/2 | 2× (4) | 1 |" in md
    assert "| ring8 | fkl lr/2 | 4×" not in md
    assert all(f"| ring8 | fkl both | {k}× " in md for k in (1, 2, 4))
    assert "Variants: longer not worse on" in md
    assert (tmp_path / "README.md").read_text() == f"intro\n<!-- longer -->\n{md.rstrip()}\n<!-- /longer -->\nafter\n"
    with pytest.raises(SystemExit) as bad:
        summary_main(["--probe", "lr2"])
    assert bad.value.code == 2 and "LABEL=TAG" in capsys.readouterr().err
    assert "| ring8 | fkl | 1× (2) | 1 |" in md and "| ring8 | fkl | 2× (4) | 1 |" in md
    assert "Not measured yet: ring8:fkl 4x, ring8:js." in md and (tmp_path / "summary.png").is_file()
    summary = json.loads((tmp_path / "summary.json").read_text())
    # the ceiling line from the first pattern that has the teacher's regression rows (the first file does not exist)
    assert summary["ceiling_from"] == {"ring8": str(tmp_path / "gmm_longer_ring8_fkl_t.json")}
    assert summary["ceiling_seeds"] == {"ring8": 1}
    verdicts = summary["verdicts"]
    assert {v["measure"] for v in verdicts} == {"mode_recall", "tv_on_mode", "off_mode", "nll", "nll_teacher_width",
                                                 "mode_scale", "mode_profile"}
    # the recipe itself made by two commands: its 4x from _tq, its 1x from _t (@1: not _t's 2x, nor its unfinished 4x)
    assert summary_main(["--teachers", "ring8", "--divergences", "fkl", "--tag", "_tq+_t@1", "--results",
                         str(tmp_path), "--ceiling", str(tmp_path / "none.json"), "--out", str(tmp_path / "merged")]) == 0
    md = (tmp_path / "merged.md").read_text()
    assert "| ring8 | fkl | 1× (2) | 1 |" in md and "| ring8 | fkl | 4× (4) | 1 |" in md and "2×" not in md  # _tq:
    # the 2x rows relabelled 4x (their steps stay 4)
    assert "Not measured yet" not in md
    # the modes' radial profile of the 1x and 2x generators (MATH §7), one group per length; a glob that matches
    # nothing is refused by name
    profile_main = _bench("gmm_mode_profile").main
    prof = ["--teacher", "ring8", "--n", "2000", "--out", str(tmp_path / "profile"),
            f"1x={tmp_path}/runs/x1/ring8/fdistill-fkl-s*", f"2x={tmp_path}/runs/x2/ring8/fdistill-fkl-s*"]
    assert profile_main(prof) == 0
    prof_json = json.loads((tmp_path / "profile.json").read_text())
    assert list(prof_json["groups"]) == ["1x", "2x"] and len(prof_json["levels"]) == 18
    assert all(len(row["ratios"]) == 18 and row["mode_profile"] >= 0 for g in prof_json["groups"].values() for row in g)
    assert "| 2x | 1 |" in (tmp_path / "profile.md").read_text() and (tmp_path / "profile.png").is_file()
    with pytest.raises(SystemExit, match="no run folder matches"):
        profile_main(prof[:-2] + [f"none={tmp_path}/nothing-*"])


def test_gmm_warm_start_length_measures_the_warm_start_alone_at_each_rate(tmp_path):
    """bench/gmm_warm_start_length.py on a tiny budget: per-mode rates 1 and 2 give warm starts of 8 and 16 steps on
    ring8 (8 modes), each run's export is its warm start (no generator update), one table row per rate."""
    cmd = [sys.executable, "bench/gmm_warm_start_length.py", "--teachers", "ring8", "--per-mode", "2", "1",
           "--seeds", "0", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "wsl"), *TINY,
           "train.eval_samples=500"]
    r = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "wsl.json").read_text())
    assert [(x["per_mode"], x["flow_fit_steps"]) for x in res["runs"]] == [(1, 8), (2, 16)]
    assert all("error" not in x and 0 <= x["off_mode"] <= 1 for x in res["runs"])
    for x in res["runs"]:
        cfg = yaml.safe_load((tmp_path / "runs" / f"m{x['per_mode']}" / "ring8" / "fdistill-fkl-s0" /
                              "config.yaml").read_text())
        assert cfg["network"]["flow_fit_steps"] == x["flow_fit_steps"] and cfg["train"]["lr"] == 0
    md = (tmp_path / "wsl.md").read_text()
    assert "| ring8 | 1 | 8 | 1 |" in md and "| ring8 | 2 | 16 | 1 |" in md and (tmp_path / "wsl.png").is_file()
    # one more rate later: the recorded rates' rows stay in the table, and both commands are kept
    wsl_main = _bench("gmm_warm_start_length").main
    wsl_main(cmd[2:5] + ["3"] + cmd[7:])
    res = json.loads((tmp_path / "wsl.json").read_text())
    assert sorted((x["per_mode"], x["flow_fit_steps"]) for x in res["runs"]) == [(1, 8), (2, 16), (3, 24)]
    assert len(res["meta"]["commands"]) == 2 and "ring8" in res["meta"]["teacher_reference"]
    assert "| ring8 | 1 | 8 | 1 |" in (tmp_path / "wsl.md").read_text()
    with pytest.raises(SystemExit, match="positive steps per mode"):
        wsl_main(cmd[2:5] + ["0"])


def test_longer_is_not_worse_within_the_seed_spread_or_the_sampling_noise():
    """bench/gmm_longer_summary.not_worse in each measure's sense: lower, higher, or closer to 1 is better; a longer run
    may be worse by the larger seed spread or the measure's sampling noise, not more."""
    sys.path.insert(0, os.path.join(REPO, "bench"))
    from gmm_longer_summary import not_worse

    assert not_worse("tv_on_mode", [0.010, 0.012], [0.0115, 0.0115])  # worse by 0.0005 < spread 0.001
    assert not not_worse("tv_on_mode", [0.010, 0.012], [0.014, 0.014])
    assert not_worse("tv_on_mode", [0.010, 0.010], [0.011, 0.011], floor=0.002)  # within the sampling noise
    assert not not_worse("mode_recall", [1.0, 1.0], [0.9, 0.9]) and not_worse("mode_recall", [0.9, 0.9], [1.0, 1.0])
    assert not_worse("mode_scale", [0.90, 0.90], [1.05, 1.05])  # 0.05 from 1 beats 0.10 from 1, from either side
    assert not not_worse("mode_scale", [0.95, 0.95], [1.10, 1.10])


def test_every_table_run_states_the_recipe_so_runs_of_another_recipe_are_not_reused(tmp_path):
    """bench/gmm_table.py (and gmm_divergences.py) add the teacher-dependent defaults (sampler levels, the regression
    term) and the warm start's Adam betas to every student run's words: a finished run made before those keys existed
    (its config lacks them: no regression term, beta2 0.999) is reused for that recipe and not for today's default
    (the regression term through the denoiser, 70 levels, beta2 0.99); nor is a run that left the betas at a null
    that meant (0.9, 0.999) when it ran. The warm start's length is stated resolved for the teacher (its per-mode
    default changed on 2026-12-05: a run that left it null is not reused). The ceiling (no warm start) states
    neither."""
    sys.path.insert(0, os.path.join(REPO, "bench"))
    from common import recipe_words, same_overrides

    today = ["data.num_steps=70", "objective.regression_weight=0.7", "objective.regression_sigma=1.0"]
    length = ["network.flow_fit_betas=[0.9,0.99]", "network.flow_fit_steps=6000"]  # ring8: 750 x 8
    assert recipe_words([]) == [*today, *length]
    assert recipe_words([], warm_start=False) == today
    assert recipe_words([], teacher_words=["teacher.preset=grid25"])[-1] == "network.flow_fit_steps=18750"
    assert recipe_words(["network.flow_fit_per_mode=375"])[-1] == "network.flow_fit_steps=3000"
    previous = recipe_words(["objective.regression_weight=0", "data.num_steps=18", "network.flow_fit_betas=[0.9,0.999]",
                             "network.flow_fit_steps=3000"])
    assert previous == ["data.num_steps=18", "objective.regression_weight=0.0", "network.flow_fit_betas=[0.9,0.999]",
                        "network.flow_fit_steps=3000"]
    run = tmp_path / "old-run"
    run.mkdir()
    old = "seed: 0\ndata:\n  num_steps: 18\nobjective:\n  name: fdistill\nnetwork:\n"
    (run / "config.yaml").write_text(old + "  flow_fit_steps: 3000\n")
    assert same_overrides(str(run), previous)
    assert not same_overrides(str(run), recipe_words([]))
    stated = "data:\n  num_steps: 70\nobjective:\n  regression_weight: 0.7\n  regression_sigma: 1.0\nnetwork:\n"
    (run / "config.yaml").write_text(stated + "  flow_fit_betas: null\n  flow_fit_steps: 6000\n")  # betas before 12-05
    assert not same_overrides(str(run), recipe_words([])) and same_overrides(str(run), today)
    (run / "config.yaml").write_text(stated + "  flow_fit_betas: [0.9, 0.99]\n  flow_fit_steps: null\n")  # length then
    assert not same_overrides(str(run), recipe_words([]))
    (run / "config.yaml").write_text(stated + "  flow_fit_betas: [0.9, 0.99]\n  flow_fit_steps: 6000\n")
    assert same_overrides(str(run), recipe_words([]))
    # a run longer than a set generator rate budget states it: a 4x run made at the full rate (its config has no
    # budget) is not reused for the budget recipe, and is for the full rate (the default); within the budget no word
    budget = ["train.lr_budget_steps=500"]  # a mixture teacher's default since 2026-12-06 (null resolves to it)
    assert recipe_words(["train.steps=500", *budget]) == recipe_words([]) == recipe_words(["train.lr_budget_steps=0"])
    longer = recipe_words(["train.steps=2000", *budget])
    assert longer[-1] == "train.lr_budget_steps=500" and recipe_words(["train.steps=2000", *budget],
                                                                        warm_start=False) == today
    assert recipe_words(["train.steps=2000"]) == longer  # the default
    full_rate = recipe_words(["train.steps=2000", "train.lr_budget_steps=0"])
    assert full_rate[-1] == "train.lr_budget_steps=0"
    (run / "config.yaml").write_text(stated + "  flow_fit_betas: [0.9, 0.99]\n  flow_fit_steps: 6000\ntrain:\n"
                                     "  steps: 2000\n")
    assert not same_overrides(str(run), longer) and same_overrides(str(run), full_rate)
    # one that left it null then (null meant no budget before 2026-12-06) is a full-rate run too; one that set it is not
    (run / "config.yaml").write_text(stated + "  flow_fit_betas: [0.9, 0.99]\n  flow_fit_steps: 6000\ntrain:\n"
                                     "  steps: 2000\n  lr_budget_steps: null\n")
    assert not same_overrides(str(run), longer) and same_overrides(str(run), full_rate)
    (run / "config.yaml").write_text(stated + "  flow_fit_betas: [0.9, 0.99]\n  flow_fit_steps: 6000\ntrain:\n"
                                     "  steps: 2000\n  lr_budget_steps: 500\n")
    assert same_overrides(str(run), longer) and not same_overrides(str(run), full_rate)


def test_empirical_denoiser_is_tweedie_on_many_gaussian_samples():
    """bench/gmm_gradient_noise.EmpiricalDenoiser on 200k samples of N(m, s^2 I) in 2-D is the closed-form denoiser
    m + s^2 / (s^2 + sigma^2) (x - m) at sigma >= s / 4 and x from the noised law (where the samples are dense),
    and it is exact on its own samples' empirical law: at a tiny sigma it returns the nearest sample."""
    import torch

    sys.path.insert(0, os.path.join(REPO, "bench"))
    from gmm_gradient_noise import EmpiricalDenoiser

    g = torch.Generator().manual_seed(0)
    m, s = torch.tensor([1.0, -2.0]), 0.5
    samples = m + s * torch.randn(200_000, 2, generator=g)
    den = EmpiricalDenoiser(samples, chunk=50_000)  # several chunks: the running log-sum-exp
    for sigma in (0.125, 0.5, 2.0):  # x from the noised law, as the gradient probe draws it (x0 + sigma n)
        x = m + (s**2 + sigma**2) ** 0.5 * torch.randn(64, 2, generator=g)
        want = m + s**2 / (s**2 + sigma**2) * (x - m)
        got = den(x, torch.full((64,), sigma))
        assert (got - want).norm(dim=1).max() < 0.03 * max(1.0, sigma / s)
    near = samples[:5] + 1e-4
    assert torch.allclose(den(near, torch.full((5,), 1e-5)), samples[:5], atol=1e-6)


def test_empirical_denoiser_effective_sample_size_is_the_closed_form_for_gaussian_samples():
    """The Tweedie weights' effective sample size at the mean of N(m, s^2 I) samples, in expectation
    N (1 - 1 / (r + 1)^2)^(d / 2) with r = sigma^2 / s^2: most samples at a large sigma, one at a tiny sigma, and
    few in 16 dimensions (where the empirical denoiser is the nearest sample's position)."""
    import torch

    sys.path.insert(0, os.path.join(REPO, "bench"))
    from gmm_gradient_noise import EmpiricalDenoiser

    g = torch.Generator().manual_seed(0)
    n, s = 200_000, 0.5
    for d, ratios, tol in ((2, (4.0, 1.0, 0.25), 0.05), (16, (4.0, 1.0), 0.25)):
        m = torch.linspace(-1, 1, d)
        den = EmpiricalDenoiser(m + s * torch.randn(n, d, generator=g), chunk=50_000)
        for r in ratios:
            want = n * (1 - 1 / (r + 1) ** 2) ** (d / 2)
            got = den.effective_sample_size(m[None], torch.tensor([s * r**0.5])).item()
            assert abs(got / want - 1) < tol, (d, r, got, want)
        assert den.effective_sample_size(m[None], torch.tensor([1e-4])).item() < 1.01
    assert den.effective_sample_size(m[None], torch.tensor([s / 4])).item() < 5  # 16-D, r = 1/16: expected 0.006


def test_gmm_gradient_noise_reports_batch_noise_and_the_fake_scores_bias(tmp_path):
    """bench/gmm_gradient_noise.py on a tiny budget: a row per start with the batch noise of the distillation
    gradient, and for reverse KL the exact-score comparison; a malformed start is refused by name."""
    cmd = [sys.executable, "bench/gmm_gradient_noise.py", "--teacher", "ring8", "--batches", "3", "--fake-steps", "2",
           "--ref-samples", "2000", "--out", str(tmp_path / "gn"), "dmd=network.flow_fit_steps=0",
           "ws=network.flow_fit_steps=4 objective.index_range=[2,800]", "--", *TINY, "objective.divergence=rkl",
           "network.fit_steps=2", f"out_dir={tmp_path}"]
    r = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((tmp_path / "gn.json").read_text())["rows"]
    assert [x["label"] for x in rows] == ["dmd", "ws"]
    for x in rows:
        assert x["distill"]["batch_noise"] > 0 and x["fake_bias"] >= 0 and -1 <= x["cosine_fake_exact"] <= 1
        assert x["regression"]["mean_norm"] > 0  # the regression term of the mixture recipe is on
    assert "| ws | rkl |" in (tmp_path / "gn.md").read_text()
    with pytest.raises(SystemExit, match="label=key=value"):
        _bench("gmm_gradient_noise").main(cmd[2:12] + ["nolabel"])
    assert rows[1]["overrides"][-1] == "objective.index_range=[2,800]"


def test_gmm_exact_fake_trains_against_the_generators_own_tweedie_denoiser(tmp_path):
    """bench/gmm_exact_fake.py on a tiny budget: the exact-fake and learned variants and the warm start alone each
    give the measures and (runs of at least --every steps) a curve; the exact variant's fake score is drawn again from
    the generator every --ref-every steps; a variant of another batch size starts from the same cached warm start;
    the exact fake score is refused, by name, for a divergence that needs a discriminator, and stopped where its
    Tweedie weights spread over too few samples (500 samples at the smallest noise level: the nearest sample)."""
    cache = tmp_path / "cache"
    cmd = [sys.executable, "bench/gmm_exact_fake.py", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "ef"),
           "--every", "2", "--ref-samples", "500", "--ref-every", "3", "--min-ess", "0", "exact=exact",
           "ws=learned train.steps=1 train.lr=0", "b32=learned train.batch_size=32", "--", *TINY, "train.steps=4",
           "train.eval_samples=500", "data.num_steps=6", f"network.warm_start_cache={cache}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((tmp_path / "ef.json").read_text())["rows"]
    assert [(x["label"], x["steps"], len(x["curve"])) for x in rows] == [("exact", 4, 2), ("ws", 1, 0), ("b32", 4, 2)]
    assert len(os.listdir(cache)) == 1  # one warm start for every variant, batch 16 and 32 alike
    for x in rows:
        assert 0 <= x["final"]["off_mode"] <= 1 and x["final"]["mode_scale"] > 0
    assert "| exact (exact, 4 steps) |" in (tmp_path / "ef.md").read_text()
    losses = [json.loads(line)["loss_dist"] for line in open(tmp_path / "runs" / "ring8-s0" / "exact" / "metrics.jsonl")
              if "loss_dist" in line]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    # in-process: the exact fake score is the generator's own samples, kept for --ref-every steps, then drawn again
    sys.path.insert(0, os.path.join(REPO, "bench"))
    from accelerate import Accelerator
    from gmm_exact_fake import ESS_QUERIES, probe_distiller

    from fdistill.config import load_config
    from fdistill.run import RunContext, reset_accelerate_state

    reset_accelerate_state()
    cfg = load_config(os.path.join(REPO, "configs/gmm2d.yaml"),
                      [*TINY, f"out_dir={tmp_path / 'inproc'}", "objective.divergence=rkl", "train.fake_updates=1",
                       "log.trackers=[]", "log.progress=false"])
    d = probe_distiller(True, 64, 3, min_ess=0)(cfg, RunContext(cfg, Accelerator(cpu=True)))
    refs = []
    for step in range(4):
        d.fake_update(step, 0, None)
        refs.append(d.fake_u.samples.clone())
    assert refs[0].shape == (64, 2) and torch.equal(refs[0], refs[2]) and not torch.equal(refs[2], refs[3])
    with torch.no_grad():
        z = d.rand.randn(3, "z/exact-fake", 64 + ESS_QUERIES, d.shape)
        assert torch.allclose(refs[3], d.generate(d.gen_u, 3, "z/exact-fake", None, z=z).float()[:64])
    assert 0 < float(d.exact_fake_ess) <= 64
    with pytest.raises(SystemExit, match="not exact here"):
        probe_distiller(True, 64, 3)(cfg, RunContext(cfg, Accelerator(cpu=True))).fake_update(0, 0, None)
    with pytest.raises(SystemExit, match="without a discriminator"):
        _bench("gmm_exact_fake").main(["--runs", str(tmp_path / "bad"), "--out", str(tmp_path / "bad"),
                                       "--warm-start-batch", "16", "x=exact objective.divergence=fkl", "--", *TINY,
                                       "train.steps=1"])


def test_readme_table_is_replaced_only_between_one_pair_of_markers(tmp_path):
    """bench/gmm_table_merge.replace_between_markers: the lines between the markers are replaced, the rest kept;
    a missing, repeated or reversed marker is refused by name and the file is left as it was."""
    sys.path.insert(0, os.path.join(REPO, "bench"))
    from gmm_table_merge import replace_between_markers

    f = tmp_path / "R.md"
    f.write_text("a\n<!-- x -->\nold 1\nold 2\n<!-- /x -->\nb")
    replace_between_markers(str(f), "x", "| new |\n")
    assert f.read_text() == "a\n<!-- x -->\n| new |\n<!-- /x -->\nb"
    for bad in ("a\n<!-- /x -->\n<!-- x -->\n", "<!-- x -->\n<!-- x -->\n<!-- /x -->\n", "<!-- x -->\n"):
        f.write_text(bad)
        with pytest.raises(SystemExit, match="<!-- /x -->"):
            replace_between_markers(str(f), "x", "new")
        assert f.read_text() == bad


def test_longer_summary_marks_a_worse_longer_run_that_reaches_the_ceiling():
    """bench/gmm_longer_summary.summarise: a 4x mean worse than 1x beyond the seed spread is "worse"; "at the ceiling"
    as well when it is not worse than the regression ceiling's mean (mode scale: distance from 1)."""
    sys.path.insert(0, os.path.join(REPO, "bench"))
    from gmm_longer_summary import summarise

    def rows(scales, steps):
        return [{"mode_scale": s, "steps": steps} for s in scales]

    results = {("t", "fkl"): {1: rows([0.995, 0.996, 0.994], 500), 4: rows([0.980, 0.981, 0.979], 2000)}}
    for ceiling, at in (([0.981, 0.980, 0.982], True), ([0.999, 1.0, 1.001], False)):
        lines, verdicts = summarise(results, {"t": {"mode_scale": 0.001}}, {"t": rows(ceiling, 6500)})
        (v,) = verdicts
        assert not v["not_worse"] and v["at_ceiling"] is at
        assert ("**worse** (at the ceiling)" in lines[-1]) is at and "**worse**" in lines[-1]
    _, (v,) = summarise(results, {"t": {"mode_scale": 0.001}})  # no ceiling measured: never "at the ceiling"
    assert not v["not_worse"] and not v["at_ceiling"]


def test_longer_summary_merges_the_seeds_of_several_calls(tmp_path):
    """bench/gmm_longer_summary.merged_pair: a later call's seeds join the first tag's at the same length; the first
    tag's run of a (length, seed) wins; ``@K`` takes only those lengths."""
    sys.path.insert(0, os.path.join(REPO, "bench"))
    from gmm_longer_summary import merged_pair

    def write(tag, rows):
        (tmp_path / f"gmm_longer_t_fkl{tag}.json").write_text(json.dumps({"runs": rows}))

    def run(k, seed, v):
        return {"objective": "fdistill", "multiple": k, "seed": seed, "off_mode": v}

    write("_a", [run(1, 0, 0.1), run(4, 0, 0.2), run(4, 1, 0.3)])
    write("_b", [run(1, 0, 9.0), run(4, 2, 0.4), run(4, 3, 0.5)])
    write("_c", [run(1, 5, 0.6), run(2, 5, 0.7)])
    by_k, paths = merged_pair(str(tmp_path), "t", "fkl", "_a+_b+_c@1")
    assert [len(p) > 0 for p in paths] == [True] * 3 and sorted(by_k) == [1, 4]
    assert [(r["seed"], r["off_mode"]) for r in by_k[1]] == [(0, 0.1), (5, 0.6)]
    assert [r["seed"] for r in by_k[4]] == [0, 1, 2, 3]
