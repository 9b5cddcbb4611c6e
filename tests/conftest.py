"""Test-session settings. The suite runs on two pytest-xdist workers (``-n 2`` in pyproject's addopts, one per core of
the CI machine); each worker's torch then uses one thread, as the subprocess tests' ``OMP_NUM_THREADS=1`` does, so two
workers do not contend for the same two cores."""
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_digits_teacher(tmp_path_factory):
    """A two-step digits teacher (``configs/digits-teacher.yaml`` at channels [8, 16]) trained once per test worker;
    returns its saved folder. Tests only read it (pools and runs go to their own out_dir). Trained in the worker's
    process, as train.py would (the command line itself is tested elsewhere)."""
    from fdistill.config import load_config
    from fdistill.methods import method_class
    from fdistill.run import reset_accelerate_state, run

    out = tmp_path_factory.mktemp("tiny_digits_teacher")
    cfg = load_config(os.path.join(ROOT, "configs/digits-teacher.yaml"),
                      [f"out_dir={out}", "train.steps=2", "train.batch_size=8", "network.channels=[8,16]",
                       "train.warmup_steps=0", "log.progress=false", "log.trackers=[]"])
    reset_accelerate_state()
    run(cfg, method_class(cfg.task))
    return out / "teacher"
