"""bench/gmm_divergences.py on a tiny budget: it writes its table, JSON and plot; a finished run is reused only when
its settings match the overrides (a changed ``train.steps`` trains again); a malformed objective is refused."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["network.fit_steps=2", "train.batch_size=16", "network.hidden=16", "network.depth=2", "train.log_every=1"]


def _run(tmp_path, *args):
    cmd = [sys.executable, "bench/gmm_divergences.py", "--seeds", "0", "--workers", "1", "--runs",
           str(tmp_path / "runs"), "--out", str(tmp_path / "gmm"), *args]
    return subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)


def test_gmm_bench_writes_results_and_retrains_on_other_settings(tmp_path):
    # overrides after --objectives are still overrides
    r = _run(tmp_path, "--objectives", "fdistill:fkl", "train.steps=2", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "gmm.json").read_text())
    (row,) = res["runs"]
    assert (row["divergence"], row["steps"], row["modes_covered"] >= 0) == ("fkl", 2, True)
    assert "| fdistill | fkl |" in (tmp_path / "gmm.md").read_text() and (tmp_path / "gmm.png").is_file()

    r = _run(tmp_path, "--objectives", "fdistill:fkl", "train.steps=3", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "gmm.json").read_text())["runs"][0]["steps"] == 3


def test_gmm_bench_refuses_a_malformed_objective(tmp_path):
    r = _run(tmp_path, "--objectives", "fkl")
    assert r.returncode == 2 and "NAME:DIVERGENCE" in r.stderr and "['fkl']" in r.stderr
