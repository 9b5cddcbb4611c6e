"""bench/digits_demo.py --small: the whole digits demo (teacher, classifier, four students, FD-digits, grid) on tiny
settings on the CPU, as the GPU run will do it; then a second invocation reusing the saved teacher.tar. No number
is checked beyond being finite (the tiny runs are not trained)."""
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "digits_demo.py")


@pytest.fixture(scope="module")
def digits_demo():
    """The script as a module (bench/ is not a package)."""
    sys.path.insert(0, os.path.join(REPO, "bench"))
    try:
        import digits_demo
    finally:
        sys.path.remove(os.path.join(REPO, "bench"))
    return digits_demo


def _run(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def test_digits_demo_small(tmp_path, digits_demo):
    out, work = tmp_path / "out", tmp_path / "work"
    _run("--out", str(out), "--workdir", str(work), "--small", "--save-teacher")
    assert sorted(os.listdir(out)) == ["digits_demo.json", "digits_demo.md", "digits_demo.png", "logs.txt",
                                       "teacher.tar"]
    res = json.loads((out / "digits_demo.json").read_text())
    for key in ("device_name", "torch", "date", "git_commit", "settings"):
        assert res[key] not in (None, "")
    assert all(v["status"] == "ok" for v in res["stages"].values()), res["stages"]
    assert res["students_concurrent"] and res["students_parallel"] == 4
    rows = {r["model"]: r for r in res["summary"]}
    assert list(rows) == ["teacher", "rkl", "fkl", "js", "uni"]
    for name, r in rows.items():
        assert r["error"] is None, (name, r["error"])
        for key in ("FD-digits", "precision", "recall", "sampling_images_per_s", "train_images_per_s",
                    "train_wall_s", "fd_ratio_to_teacher"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), (name, key, r[key])
        assert r["nfe"] == (35 if name == "teacher" else 1)
        assert r["meets_target"] is (None if name == "teacher" else r["fd_ratio_to_teacher"] <= 1.1)
    assert rows["uni"]["label"] == "uni_instruct rkl"  # the divergence digits.yaml gives it
    assert res["models"]["fkl"]["train"]["config"]["divergence"] == "fkl"
    assert (out / "digits_demo.png").stat().st_size > 1000
    md = (out / "digits_demo.md").read_text()
    assert "| fdistill js | 1 |" in md and "FD-digits" in md
    logs = (out / "logs.txt").read_text()
    assert "===== teacher:" in logs and "===== uni:" in logs and "stage eval" in logs

    # a later session: the teacher from its tar, the students already in the workdir, only the grid redrawn (in this
    # process: the command line ran above)
    out2 = tmp_path / "out2"
    digits_demo.main(["--out", str(out2), "--workdir", str(work), "--small", "--teacher-path",
                      str(out / "teacher.tar"), "--stages", "grid"])
    res2 = json.loads((out2 / "digits_demo.json").read_text())
    assert res2["stages"]["grid"]["status"] == "ok" and res2["stages"]["students"]["status"] == "skipped"
    assert res2["models"]["teacher"]["train"]["steps"] == 20  # the record stored in teacher.tar
    assert res2["models"]["js"]["train"]["steps"] == 10       # read back from the existing run
    assert (out2 / "digits_demo.png").is_file()


def test_student_names_are_checked(digits_demo):
    assert digits_demo.student_spec("uni_instruct:fkl") == ("uni_instruct", "fkl")
    with pytest.raises(ValueError, match="valid: .*rkl"):
        digits_demo.student_spec("kl")


def test_uni_instruct_gets_the_per_pixel_gan_weight(digits_demo):
    """Uni-Instruct's term sums over pixels, f-distill's averages: the demo rescales the config's weight by H*W."""
    assert digits_demo.per_pixel_gan_weight([]) == pytest.approx(5e-2 * 256)
    assert digits_demo.per_pixel_gan_weight(["objective.gan_weight=0.1", "data.resolution=8"]) == pytest.approx(6.4)
    demo = digits_demo.Demo.__new__(digits_demo.Demo)
    demo.a = digits_demo.parse_args(["--out", "x", "--student-override", "objective.gan_weight=0.01"])
    demo.work, demo.teacher_dir = "w", "t"
    uni, rkl = demo.student_cmd("uni"), demo.student_cmd("rkl")
    assert uni[-1] == "objective.gan_weight=2.56" and "objective.gan_weight=0.01" in uni
    assert rkl[-1] == "objective.gan_weight=0.01"


def test_training_jobs_stop_themselves_before_the_kill(digits_demo, tmp_path):
    """A job with a time limit is launched with train.time_limit_min = its time left less a margin; none without."""
    cmd = [sys.executable, "-c", "pass"]
    limited = digits_demo.Job("a", cmd, str(tmp_path / "a.log"), timeout=600.0, soft_stop=True)
    free = digits_demo.Job("b", cmd, str(tmp_path / "b.log"), soft_stop=True)
    digits_demo.run_jobs([limited, free], 2, str(tmp_path / "logs.txt"))
    assert limited.cmd[-1] == "train.time_limit_min=9.0000"  # 600 s less a 60 s margin
    assert free.cmd == cmd and limited.returncode == free.returncode == 0 and not limited.timed_out
