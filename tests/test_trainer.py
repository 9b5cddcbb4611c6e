"""The distillation trainer on the analytic 2-D mixture: every divergence moves the student toward the teacher
(measured by the teacher's exact log-density of student samples), resume is exact, NaN steps are skipped, and a run
writes its documented outputs."""
import json
import os

import pytest
import torch

from trainer_utils import fast_config, reset_accelerate, run_distill

from fdistill.config import ConfigError
from fdistill.run import train_step

DIVERGENCES = ["rkl", "srkl", "js", "sh", "fkl", "jeffreys", "pearson", "neyman", "alpha:0.5"]


def _job(cfg):
    from fdistill.run import RunContext
    from fdistill.methods.distill import Distiller

    from eval.gmm import gmm_metrics

    reset_accelerate()
    ctx = RunContext(cfg, measures=gmm_metrics)
    return Distiller(cfg, ctx)


def _nll_gap(job, x):
    """Mean exact NLL of x under the teacher minus the teacher's own entropy (>= 0 in expectation)."""
    teacher = job.raw_teacher
    ref = teacher.sample(8000, generator=torch.Generator().manual_seed(3)).double()
    return float(-teacher.log_prob(x.double()).mean() + teacher.log_prob(ref).mean())


@pytest.mark.parametrize("objective", [f"fdistill:{d}" for d in DIVERGENCES] + ["uni_instruct:rkl", "uni_instruct:fkl",
                                                                                "sid:rkl"])
def test_short_run_moves_student_toward_teacher(tmp_path, objective):
    # The warm-started generator maps all noise to ~E[x0] (a point); distillation must spread it onto the modes.
    # Measured: the gap between the student's NLL under the exact teacher and the teacher's entropy shrinks by at
    # least half in 120 generator steps (measured shrink factors are printed in the README's GMM table runs).
    # Uni-Instruct's forward KL weights by the discriminator's ratio: with one update per step it is still near 1 at
    # step 120 (gap 97 -> 72; 2 updates: 97 -> 26)
    name, div = objective.split(":", 1)
    extra = ["train.fake_updates=2"] if objective == "uni_instruct:fkl" else []
    cfg = fast_config(tmp_path, f"objective.name={name}", f"objective.divergence={div}", "train.steps=120",
                      "train.checkpoint_every=100000", *extra)
    job = _job(cfg)
    before = _nll_gap(job, job.sample(4000, ema_index=None))
    stats = [train_step(job.ctx, job, i) for i in range(cfg.train.steps)]
    after = _nll_gap(job, job.sample(4000, ema_index=None))
    print(objective, before, after)
    assert after < 0.5 * before, (before, after)
    assert sum(float(v) for s in stats for k, v in s.items() if k.startswith("skipped_")) == 0


def test_rate_budget_is_reported_and_applied(tmp_path, capsys):
    """A run longer than train.lr_budget_steps says so and trains its generator at train.lr x budget / steps (the
    fake score keeps train.lr_fake); a run within its budget says nothing."""
    job = _job(fast_config(tmp_path / "long", "train.steps=40", "train.lr_budget_steps=10", "train.lr=1e-4",
                           "train.warmup_steps=0", "train.lr_schedule=constant"))
    train_step(job.ctx, job, 0)
    assert "generator rate is train.lr 0.0001 x 10 / 40 = 2.5e-05" in capsys.readouterr().out
    assert job.opt_g.param_groups[0]["lr"] == pytest.approx(2.5e-5)
    assert job.opt_f.param_groups[0]["lr"] == pytest.approx(job.cfg.train.lr_fake)
    _job(fast_config(tmp_path / "short", "train.steps=10", "train.lr_budget_steps=10"))
    assert "lr_budget_steps" not in capsys.readouterr().out
    # left null, a mixture teacher's default is the vector recipe's 500 steps; 0 keeps the full rate
    job = _job(fast_config(tmp_path / "default", "train.steps=600", "train.lr=1e-4"))
    assert job.cfg.train.lr_budget_steps == 500 and "x 500 / 600" in capsys.readouterr().out
    assert job.opt_g.param_groups[0]["lr"] == pytest.approx(1e-4 * 500 / 600)
    job = _job(fast_config(tmp_path / "full", "train.steps=600", "train.lr=1e-4", "train.lr_budget_steps=0"))
    assert "lr_budget_steps" not in capsys.readouterr().out and job.opt_g.param_groups[0]["lr"] == pytest.approx(1e-4)


# the second case: the regression term through the teacher's denoiser (MATH R1, R1b: its own noise stream) with a
# stochastic sampler for its targets; the third: its pairs from a pool drawn once (the resumed run reuses the cache);
# the fourth: the GAN term on its own noise levels (objective.gan_sigma_max: its own random streams); the last two:
# a class-conditional teacher's warm start and regression term (targets drawn ahead with each step's labels; a pool
# of labelled pairs)
@pytest.mark.parametrize("extra", [[], ["objective.regression_weight=0.7", "objective.regression_sigma=1",
                                        "data.sampler=euler_maruyama", "data.num_steps=4"],
                                   ["objective.regression_weight=0.7", "objective.regression_sigma=1",
                                    "objective.regression_pairs=40", "data.num_steps=4"],
                                   ["objective.gan_weight=0.1", "objective.gan_sigma_max=1"],
                                   ["teacher.num_classes=3", "objective.regression_weight=0.7", "data.num_steps=4",
                                    "network.flow_fit_steps=5"],
                                   ["teacher.num_classes=3", "objective.regression_weight=0.7",
                                    "objective.regression_sigma=1", "objective.regression_pairs=40", "data.num_steps=4",
                                    "network.flow_fit_steps=5"]],
                         ids=["plain", "regression-term", "regression-pairs", "gan-own-levels", "regression-labels",
                              "regression-pairs-labels"])
def test_resume_is_exact(tmp_path, extra):
    common = ["objective.divergence=js", "train.checkpoint_every=3", "network.fit_steps=20", "train.ema=[0.9]", *extra]
    run_distill(fast_config(tmp_path / "a", "train.steps=6", *common))
    run_distill(fast_config(tmp_path / "b", "train.steps=3", *common))
    run_distill(fast_config(tmp_path / "b", "train.steps=6", "resume=latest", *common))
    _assert_same_checkpoint(tmp_path / "a/checkpoints/step-6", tmp_path / "b/checkpoints/step-6")


def _assert_same_checkpoint(a_dir, b_dir):
    """Two checkpoints hold the same networks, EMAs and normalizer, bit for bit."""
    from safetensors.torch import load_file

    for f in ("model.safetensors", "model_1.safetensors", "model_2.safetensors"):
        a, b = load_file(a_dir / f), load_file(b_dir / f)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (f, k)
    sa = torch.load(a_dir / "trainer_state.pt", weights_only=True)
    sb = torch.load(b_dir / "trainer_state.pt", weights_only=True)
    for part in ("ema", "normalizer"):
        for k, v in sa["job"][part].items():
            assert torch.equal(v, sb["job"][part][k]), (part, k)


def test_a_constant_run_resumed_with_a_decay_equals_the_decayed_run(tmp_path):
    """The two-phase runs of the digits bench: a run at a constant rate resumed with ``train.lr_schedule=wsd`` and
    the final ``train.steps`` ends where the ``wsd`` run from the start ends (``wsd`` is constant before its decay;
    fdistill.optim), so a 2400-step constant snapshot and a 3200-step decayed one come from one trajectory."""
    common = ["objective.divergence=fkl", "train.checkpoint_every=4", "network.fit_steps=20", "train.ema=[0.9]"]
    wsd = ["train.lr_schedule=wsd", "train.lr_decay_fraction=0.5"]
    run_distill(fast_config(tmp_path / "a", "train.steps=8", *common, *wsd))
    run_distill(fast_config(tmp_path / "b", "train.steps=4", *common))  # the FAST configs' constant rate
    run_distill(fast_config(tmp_path / "b", "train.steps=8", "resume=latest", *common, *wsd))
    _assert_same_checkpoint(tmp_path / "a/checkpoints/step-8", tmp_path / "b/checkpoints/step-8")
    # and the decay is real: the same resume at a constant rate ends elsewhere
    run_distill(fast_config(tmp_path / "c", "train.steps=4", *common))
    run_distill(fast_config(tmp_path / "c", "train.steps=8", "resume=latest", *common))
    with pytest.raises(AssertionError):
        _assert_same_checkpoint(tmp_path / "a/checkpoints/step-8", tmp_path / "c/checkpoints/step-8")


def test_gan_sigma_max_auto_is_twice_the_teachers_sigma_data(tmp_path):
    """``objective.gan_sigma_max=auto`` places the GAN term at sigma <= 2 sigma_data of the teacher the job built
    (MATH F2), for every objective of the schedule."""
    job = _job(fast_config(tmp_path, "objective.divergence=js", "objective.gan_weight=0.1",
                           "objective.gan_sigma_max=auto", "objective.schedule=[{step: 2, divergence: fkl}]"))
    assert len(job.schedule) == 2
    for _, objective in job.schedule:
        assert objective.gan_noise_levels.sigma_max == pytest.approx(2 * job.scale.sigma_data)
    assert job.cfg.objective.gan_sigma_max == pytest.approx(2 * job.scale.sigma_data)  # resolved_config.yaml's


def test_resumed_run_keeps_its_budget_derived_teacher_pool(tmp_path):
    """data.pool_size: null sizes the data-free pool from train.steps; a run resumed to more steps keeps the pool it
    was trained on (the same cached tensors, not a larger one drawn midway); an explicit data.pool_size draws that."""
    common = ["objective.divergence=js", "data.kind=teacher", "data.num_steps=4", "network.fit_steps=5",
              "train.checkpoint_every=2"]
    run_distill(fast_config(tmp_path, "train.steps=2", *common))
    first = torch.load(tmp_path / "teacher_pool.pt", weights_only=True)
    state = torch.load(tmp_path / "checkpoints/step-2/trainer_state.pt", weights_only=True)
    assert state["job"]["source"] == {"pool_size": 4096}
    longer = fast_config(tmp_path, "train.steps=400", "resume=latest", *common)  # its own budget: 400 x 128 / 8
    from fdistill.config import data_pool_size

    assert data_pool_size(longer, (2,)) == 7168
    job = _job(longer)
    assert len(job.source.x) == 4096
    assert torch.equal(job.source.x.cpu(), first["x"])
    assert len(_job(fast_config(tmp_path, "train.steps=400", *common)).source.x) == 7168  # a fresh run: the budget
    assert len(_job(fast_config(tmp_path, "train.steps=400", "resume=latest", "data.pool_size=1024",
                                *common)).source.x) == 1024


def test_runs_with_one_pool_cache_draw_their_shared_pool_once(tmp_path, monkeypatch):
    """data.pool_cache: two runs (two out_dirs) that would draw the same data-free pool draw it once and train on the
    same tensors, kept in the shared folder under its key (not in either out_dir); another seed has a pool of its
    own there, beside the first. The key is what ``load_keyed`` checks, so a shared file is never a stale one."""
    import fdistill.sources as src

    draws = []
    real = src.draw_teacher_samples
    monkeypatch.setattr(src, "draw_teacher_samples", lambda *a, **k: draws.append(a[5]) or real(*a, **k))
    shared = tmp_path / "pools"
    common = ["objective.divergence=fkl", "data.kind=teacher", "data.num_steps=4", "data.pool_size=64",
              "network.fit_steps=5", f"data.pool_cache={shared}"]
    a = _job(fast_config(tmp_path / "a", "train.steps=2", *common))
    b = _job(fast_config(tmp_path / "b", "train.steps=2", *common))
    assert draws == [0] and torch.equal(a.source.x, b.source.x)
    assert not (tmp_path / "a" / "teacher_pool.pt").exists() and not (tmp_path / "b" / "teacher_pool.pt").exists()
    (first,) = os.listdir(shared)
    assert first.startswith("teacher_pool-") and first.endswith(".pt")
    c = _job(fast_config(tmp_path / "c", "train.steps=2", "seed=1", *common))
    assert draws == [0, 1] and len(os.listdir(shared)) == 2 and not torch.equal(c.source.x, a.source.x)


def test_shared_cache_path_names_the_key_and_expands_home(monkeypatch, tmp_path):
    from fdistill.cache_key import shared_cache_path

    monkeypatch.setenv("HOME", str(tmp_path))
    own = os.path.join("run", "teacher_pool.pt")
    assert shared_cache_path(own, None, "k1") == shared_cache_path(own, "", "k1") == own
    assert shared_cache_path(own, "~/pools", "k1") == str(tmp_path / "pools" / "teacher_pool-k1.pt")
    assert shared_cache_path(own, "pools", "k2") == os.path.join("pools", "teacher_pool-k2.pt")


@pytest.mark.parametrize("stop", ["time-limit", "SIGTERM", "SIGUSR1", "SIGINT"])
def test_time_limit_or_stop_signal_stops_cleanly_and_resume_finishes_the_same(tmp_path, monkeypatch, capsys, stop):
    """A launch past train.time_limit_min (checked at log steps), or sent a preemption signal or Ctrl-C (acted on
    after the step it came in), saves a checkpoint and exports; resume=latest then ends bit-equal to an uninterrupted
    run. The signal handlers before the run are back after it."""
    import signal
    import threading

    import fdistill.run as run_module

    # handlers are installed from the main thread only: elsewhere the signal would kill the test process
    assert stop == "time-limit" or threading.current_thread() is threading.main_thread()
    common = ["objective.divergence=js", "train.checkpoint_every=100", "network.fit_steps=20", "train.ema=[0.9]",
              "train.log_every=2"]
    run_distill(fast_config(tmp_path / "a", "train.steps=6", *common))
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    if stop == "time-limit":
        metrics = run_distill(fast_config(tmp_path / "b", "train.steps=6", "train.time_limit_min=1e-9", *common))
    else:
        from signal_cpu_train import signalled

        train_step = run_module.train_step
        # the signal comes in during step 1 (a non-log step)
        monkeypatch.setattr(run_module, "train_step", signalled(train_step, stop))
        metrics = run_distill(fast_config(tmp_path / "b", "train.steps=6", *common))
        monkeypatch.setattr(run_module, "train_step", train_step)
        out = capsys.readouterr()
        assert f"{stop} received: stopped at step 1 of 6" in out.out + out.err
    assert {sig: signal.getsignal(sig) for sig in before} == before
    stopped = 2 if stop == "time-limit" else 1  # the first log step past the limit; the signal's own step
    assert metrics["steps"] == stopped
    assert sorted(os.listdir(tmp_path / "b/checkpoints")) == [f"step-{stopped}"]
    assert (tmp_path / "b/generator/model_index.json").is_file()
    run_distill(fast_config(tmp_path / "b", "train.steps=6", "resume=latest", *common))
    from safetensors.torch import load_file

    a = load_file(tmp_path / "a/checkpoints/step-6/model.safetensors")
    b = load_file(tmp_path / "b/checkpoints/step-6/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_stop_signal_to_one_of_two_processes_stops_both_after_the_same_step(tmp_path):
    """Two CPU processes (torchrun + gloo); the second is sent SIGUSR1 during the first step. The processes agree at
    the next log step (one all-reduce), save one checkpoint there and export, and the main process says why."""
    import socket
    import subprocess
    import sys

    from trainer_utils import FAST

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [*FAST, "train.steps=6", "train.checkpoint_every=100", "train.log_every=2", "network.fit_steps=20",
            "train.batch_size=64", f"out_dir={tmp_path / 'two'}"]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(port), "tests/signal_cpu_train.py", "1", "SIGUSR1", *args], env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "a stop signal (on another process) received: stopped at step 2 of 6" in two.stdout + two.stderr
    assert sorted(os.listdir(tmp_path / "two/checkpoints")) == ["step-2"]
    assert (tmp_path / "two/generator/model_index.json").is_file()


def test_resume_with_missing_checkpoint_names_path(tmp_path):
    cfg = fast_config(tmp_path, "resume=" + str(tmp_path / "nowhere"), "train.steps=2")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_distill(cfg)


def test_corrupt_checkpoints_are_named_and_resume_latest_falls_back(tmp_path):
    """A truncated trainer state or model file is an error naming the file; resume=latest skips it (a warning) and
    resumes from the previous complete checkpoint, ending bit-equal to an uninterrupted run."""
    import warnings

    from safetensors.torch import load_file

    from fdistill.checkpoint import CheckpointError, read_state

    common = ["objective.divergence=rkl", "train.checkpoint_every=2", "train.keep_checkpoints=3", "network.fit_steps=5"]
    run_distill(fast_config(tmp_path / "a", "train.steps=6", *common))
    run_distill(fast_config(tmp_path / "b", "train.steps=4", *common))
    ckpts = tmp_path / "b/checkpoints"
    assert sorted(os.listdir(ckpts)) == ["step-2", "step-4"]  # no temporary directories left behind
    state = ckpts / "step-4/trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="step-4/trainer_state.pt"):
        read_state(str(ckpts / "step-4"))
    with pytest.raises(CheckpointError, match="step-4/trainer_state.pt"):
        run_distill(fast_config(tmp_path / "b", "train.steps=6", f"resume={ckpts / 'step-4'}", *common))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_distill(fast_config(tmp_path / "b", "train.steps=6", "resume=latest", *common))
    assert any("step-4" in str(w.message) and "skipping" in str(w.message) for w in caught)
    for f in ("model.safetensors", "model_1.safetensors"):
        a, b = load_file(tmp_path / f"a/checkpoints/step-6/{f}"), load_file(tmp_path / f"b/checkpoints/step-6/{f}")
        assert all(torch.equal(a[k], b[k]) for k in a), f
    # a truncated model file: accelerate's error is wrapped with the checkpoint's path
    model = ckpts / "step-6/model.safetensors"
    model.write_bytes(model.read_bytes()[:64])
    with pytest.raises(CheckpointError, match="step-6"):
        run_distill(fast_config(tmp_path / "b", "train.steps=8", f"resume={ckpts / 'step-6'}", *common))
    # none of them loads: resume=latest is an error that counts them, not a fresh start over them
    for step in os.listdir(ckpts):
        (ckpts / step / "trainer_state.pt").write_bytes(b"not a state")
    with pytest.raises(CheckpointError, match=f"none of the {len(os.listdir(ckpts))} checkpoints"):
        run_distill(fast_config(tmp_path / "b", "train.steps=8", "resume=latest", *common))


def test_trainer_state_that_would_run_code_is_refused(tmp_path):
    """Our state is read with weights_only=True: a pickled object other than tensors, numbers and strings is refused
    (and never executed)."""
    from fdistill.checkpoint import STATE_FILE, CheckpointError, read_state

    torch.save({"step": 1, "job": {"x": os.system}}, tmp_path / STATE_FILE)  # a callable: unpickling would import it
    with pytest.raises(CheckpointError, match="tensors, numbers and strings"):
        read_state(str(tmp_path))


def test_nan_step_is_skipped_and_counted(tmp_path):
    cfg = fast_config(tmp_path, "train.steps=3", "network.fit_steps=5")
    job = _job(cfg)
    start, obj = job.schedule[0]

    class Poisoned:
        needs_ratio = obj.needs_ratio
        noise_levels = obj.noise_levels

        def __call__(self, *a, **k):
            loss, stats = obj(*a, **k)
            return loss * float("nan"), stats

    job.schedule = [(0, Poisoned())]
    before = [p.detach().clone() for p in job.gen_u.parameters()]
    stats = train_step(job.ctx, job, 0)
    assert float(stats["skipped_generator_count"]) == 1 and float(stats["skipped_fake_count"]) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, job.gen_u.parameters()))
    job.schedule = [(0, obj)]
    stats = train_step(job.ctx, job, 1)
    assert float(stats["skipped_generator_count"]) == 0
    assert not all(torch.equal(a, b) for a, b in zip(before, job.gen_u.parameters()))


@pytest.mark.parametrize("source", ["lognormal", "generator"])
def test_fake_score_noise_levels_follow_train_fake_sigma(tmp_path, source):
    """``train.fake_sigma=generator``: the fake-score update sees the generator step's Karras grid levels (indices
    2..998, MATH F2); ``lognormal``: EDM's continuous log-normal levels (MATH §4), off that grid."""
    cfg = fast_config(tmp_path, "train.steps=1", "network.fit_steps=5", f"train.fake_sigma={source}")
    job = _job(cfg)
    seen = []
    job.fake.register_forward_pre_hook(lambda mod, args: seen.append(args[1].detach().clone()))
    train_step(job.ctx, job, 0)
    sigma = seen[0]  # the first fake-score call of the step is its DSM update
    grid = job.schedule[0][1].noise_levels.grid()[2:999]
    on_grid = torch.isin(sigma.float(), grid)
    assert bool(on_grid.all()) if source == "generator" else not bool(on_grid.any())


def test_run_writes_its_outputs(tmp_path):
    cfg = fast_config(tmp_path, "train.steps=10", "train.checkpoint_every=5", "train.sample_every=5",
                      "objective.divergence=fkl", "log.trackers=[tensorboard]", "train.keep_checkpoints=1",
                      "train.ema=[0.9,0.5]", "discriminator.r1_gamma=1.0")
    metrics = run_distill(cfg)
    files = os.listdir(tmp_path)
    for f in ("config.yaml", "metrics.jsonl", "checkpoints", "samples", "generator", "final_metrics.json"):
        assert f in files, (f, files)
    assert os.listdir(tmp_path / "checkpoints") == ["step-10"]  # keep_checkpoints=1, no temp dirs left
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [5, 10]
    for key in ("loss_g", "loss_fake", "loss_disc", "images_per_s", "images_seen", "skipped_generator_count"):
        assert key in rows[-1], key
    assert rows[-1]["r1"] > 0  # discriminator.r1_gamma > 0: the approximate R1, unweighted, beside the GAN loss
    assert sorted(os.listdir(tmp_path / "samples")) == ["step-000005.png", "step-000010.png"]
    assert any(f.startswith("events.out.tfevents") for _, _, fs in os.walk(tmp_path) for f in fs)
    assert {"mode_recall", "tv", "nll"} <= set(metrics)
    import fdistill

    gen = fdistill.load_generator(str(tmp_path))
    a, b = gen.sample(16, seed=3), gen.sample(16, seed=3)
    assert a.shape == (16, 2) and torch.equal(a, b)
    second = fdistill.load_generator(str(tmp_path / "generator-ema0.5")).sample(16, seed=3)  # the second EMA's export
    assert second.shape == (16, 2) and not torch.equal(a, second)


def test_resolved_config_fills_in_what_the_teacher_decided(tmp_path):
    """config.yaml is what was asked (nulls kept); resolved_config.yaml has the teacher's choices: the mixture recipe's
    regression term and rate budget, the warm start's length (per mode x 8 modes) and sigma_init (10 sigma_data)."""
    import yaml

    from fdistill.scale import teacher_scale
    from fdistill.build import build_gmm_teacher

    cfg = fast_config(tmp_path, "train.steps=2", "objective.regression_weight=null", "objective.regression_sigma=null",
                      "train.lr_budget_steps=null", "network.flow_fit_steps=null", "network.flow_fit_per_mode=2")
    asked = cfg.copy()
    run_distill(cfg)
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    used = yaml.safe_load((tmp_path / "resolved_config.yaml").read_text())
    assert raw["objective"]["regression_weight"] is None and raw["network"]["sigma_init"] is None
    assert used["objective"]["regression_weight"] == 0.7 and used["objective"]["regression_sigma"] == 1.0
    assert used["train"]["lr_budget_steps"] == 500 and used["network"]["flow_fit_steps"] == 16
    sigma_max = teacher_scale(build_gmm_teacher(asked.teacher)).sigma_max
    assert used["network"]["sigma_init"] == pytest.approx(sigma_max)
    assert {k: v for k, v in used["data"].items()} == raw["data"]  # what the teacher did not decide is as asked


def test_objective_schedule_switches_divergence(tmp_path):
    from fdistill.methods.distill import objective_schedule

    cfg = fast_config(tmp_path, "objective.name=uni_instruct", "objective.schedule=[{step: 50, divergence: fkl}]")
    sched = objective_schedule(cfg.objective)
    assert [s for s, _ in sched] == [0, 50]
    assert not sched[0][1].needs_ratio and sched[1][1].needs_ratio


@pytest.mark.slow
@pytest.mark.parametrize("divergence", ["js"])
def test_two_processes_match_one(tmp_path, divergence):
    # Two CPU processes (torchrun + gloo, each half of the global batch) and one process on the whole batch must
    # make the same updates: DDP averages gradients, the ratio normaliser all-reduces its statistics, and every
    # random draw is the global batch sliced per rank. Float reductions differ in order: tolerance 1e-5 relative.
    import socket
    import subprocess
    import sys

    from trainer_utils import FAST

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [*FAST, f"objective.divergence={divergence}", "train.steps=3", "train.checkpoint_every=3",
            "network.fit_steps=20", "train.batch_size=64"]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(port), "train.py", f"out_dir={tmp_path / 'two'}", *args], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "train.py", f"out_dir={tmp_path / 'one'}", *args], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    from safetensors.torch import load_file

    for f in ("model.safetensors", "model_1.safetensors", "model_2.safetensors"):
        a = load_file(tmp_path / "one/checkpoints/step-3" / f)
        b = load_file(tmp_path / "two/checkpoints/step-3" / f)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=f"{f}:{k}")


def test_ema_averages_trainable_parameters_and_leaves_frozen_ones():
    from fdistill.ema import EMA

    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    net[0].requires_grad_(False)  # a frozen base, as under LoRA
    ema = EMA(net, [0.5])
    frozen_before = net[0].weight.detach().clone()
    with torch.no_grad():
        net[1].weight.add_(2.0)
    old = ema.model(0)[1].weight.detach().clone()
    ema.update(net)
    assert torch.allclose(ema.model(0)[1].weight, 0.5 * old + 0.5 * net[1].weight)
    assert torch.equal(ema.model(0)[0].weight, frozen_before)


def _dcp_model_state(path) -> dict:
    """A model state dict from accelerate's sharded (torch.distributed.checkpoint) FSDP checkpoint directory."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(str(path), os.path.join(tmp, "full.pt"))
        state = torch.load(os.path.join(tmp, "full.pt"), weights_only=False)
    return state.get("model", state)


def _launch(script_args, out, extra, env, processes=2):
    import socket
    import subprocess
    import sys

    if processes == 1:
        cmd = [sys.executable, "train.py"]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
               str(port), "tests/fsdp_cpu_train.py"]
    r = subprocess.run([*cmd, f"out_dir={out}", *script_args, *extra], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
def test_fsdp2_two_processes_make_the_updates_of_one_and_resume_exactly(tmp_path):
    """FSDP2 on 2 CPU processes (gloo; tests/fsdp_cpu_train.py forces accelerate's FSDP2 path, which accelerate 1.15
    never picks on CPU) against one process on the whole batch, 4 steps with a checkpoint every 2:
    (a) generator, fake score, heads and EMA agree after steps 2 and 4 (so a checkpoint does not disturb the next
    update); (b) the export is a normal, unsharded pipeline equal to the EMA; (c) a resume from the sharded step-2
    checkpoint ends with the uninterrupted run's weights up to float32 rounding (not bit-exact, unlike DDP)."""
    import shutil

    from safetensors.torch import load_file

    import fdistill
    from trainer_utils import FAST

    args = [*FAST, "objective.divergence=js", "train.steps=4", "train.checkpoint_every=2", "network.fit_steps=20",
            "train.batch_size=64", "train.ema=[0.5]", "train.eval_samples=500"]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    _launch(args, tmp_path / "fsdp", [], env)
    _launch(args, tmp_path / "one", [], env, processes=1)
    files = ("model.safetensors", "model_1.safetensors", "model_2.safetensors")
    for step in (2, 4):
        fsdp_ckpt, one_ckpt = tmp_path / f"fsdp/checkpoints/step-{step}", tmp_path / f"one/checkpoints/step-{step}"
        assert (fsdp_ckpt / "pytorch_model_fsdp_0").is_dir()  # sharded, per rank
        for i, f in enumerate(files):
            a, b = load_file(one_ckpt / f), _dcp_model_state(fsdp_ckpt / f"pytorch_model_fsdp_{i}")
            assert a.keys() == b.keys(), f
            for k in a:
                torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=f"step {step} {f}:{k}")
        ea = torch.load(one_ckpt / "trainer_state.pt", weights_only=True)["job"]["ema"]
        eb = torch.load(fsdp_ckpt / "trainer_state.pt", weights_only=True)["job"]["ema"]
        for k in ea:
            torch.testing.assert_close(eb[k], ea[k], rtol=1e-5, atol=1e-6, msg=f"step {step} ema {k}")
    assert fdistill.load_generator(str(tmp_path / "fsdp")).sample(8, seed=1).shape == (8, 2)
    gb = load_file(tmp_path / "fsdp/generator/generator/diffusion_pytorch_model.safetensors")
    assert all(torch.equal(gb[k], eb["copies.0." + k]) for k in gb)
    shutil.copytree(tmp_path / "fsdp/checkpoints/step-2", tmp_path / "res/checkpoints/step-2")
    _launch(args, tmp_path / "res", ["resume=latest"], env)
    for i in range(len(files)):
        a = _dcp_model_state(tmp_path / f"fsdp/checkpoints/step-4/pytorch_model_fsdp_{i}")
        b = _dcp_model_state(tmp_path / f"res/checkpoints/step-4/pytorch_model_fsdp_{i}")
        for k in a:
            # not bit-exact as under DDP: float32 rounding-level (1e-7) differences, and 4.8e-5 on the heads' output
            # bias, whose gradient is a sum of sigmoid residuals
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-4, msg=f"resume {i}:{k}")


def test_recipe_warm_start_then_distillation_improves_and_longer_is_not_worse(tmp_path):
    """The vector recipe on ring8 at a small size: the probability-flow warm start (network.flow_fit_steps) puts the
    student on the modes; forward-KL distillation after it with the residual fake score (MATH R2) and the mixture
    defaults (70 sampler levels, the regression term through the denoiser, MATH R1b) improves the exact metrics
    between step counts 0 and 150, and 400 steps are not worse than 150 on any measure, within two standard errors of
    the 8000-sample estimates (measured: NLL 2.24 -> 2.08 -> 1.85, off-mode 16.8 % -> 15.9 % -> 14.7 %, on-mode TV
    0.034 -> 0.035 -> 0.030)."""
    cfg = fast_config(tmp_path, "network.flow_fit_steps=600", "network.hidden=128", "train.lr=1e-4",
                      "train.lr_fake=1e-3", "train.fake_updates=4", "train.betas=[0,0.99]", "objective.divergence=fkl",
                      "train.eval_samples=8000", "network.fake_score=auto", "objective.regression_weight=null",
                      "objective.regression_sigma=null", "data.num_steps=null")  # the mixture defaults (R1b)
    job = _job(cfg)
    assert (job.regression_weight, job.regression_sigma, cfg.data.num_steps) == (0.7, 1.0, 70)
    n = cfg.train.eval_samples
    x0 = job.sample(n, seed=12345).double()
    nll_std = float((-job.raw_teacher.log_prob(x0)).std())
    at = {0: job.mixture_metrics(0)}
    assert at[0]["mode_recall"] == 1.0 and at[0]["off_mode"] < 0.3  # the warm start alone reaches every mode
    for i in range(400):
        train_step(job.ctx, job, i)
        if i + 1 in (150, 400):
            at[i + 1] = job.mixture_metrics(i + 1)
    assert at[150]["nll"] < at[0]["nll"] and at[150]["off_mode"] < at[0]["off_mode"]
    # longer is not worse: two standard errors of each estimate (binomial for the fractions, the samples' spread for
    # the NLL; the TV's is at most that of the largest mode's share)
    se_off = (at[150]["off_mode"] * (1 - at[150]["off_mode"]) / n) ** 0.5
    assert at[400]["off_mode"] <= at[150]["off_mode"] + 2 * se_off
    assert at[400]["nll"] <= at[150]["nll"] + 2 * nll_std / n**0.5
    assert at[400]["tv_on_mode"] <= at[150]["tv_on_mode"] + 2 * (0.25 / n) ** 0.5
    assert at[400]["mode_recall"] == 1.0


def test_flow_map_fit_draws_several_steps_targets_at_once_with_the_same_result(tmp_path, monkeypatch):
    """fit_flow_map draws the targets of several steps through one sampler call (pf.target_chunk: 16 steps for a 2-D
    mixture, one step for images); the same noises are drawn in the same order and the map is deterministic, so the
    fit is the one-call-per-step fit, weight for weight — also over a last, shorter chunk (37 steps)."""
    import copy

    import fdistill.pf_regression as pf

    job = _job(fast_config(tmp_path / "a", "network.flow_fit_steps=0", "objective.regression_weight=0.7"))
    assert pf.target_chunk(256, (2,)) == 16 and pf.target_chunk(64, (3, 64, 64)) == 1
    chunked, per_step = copy.deepcopy(job.gen_u), copy.deepcopy(job.gen_u)
    pf.fit_flow_map(chunked, job.flow, job.sigma_init, 37, batch_size=32, seed=3)
    monkeypatch.setattr(pf, "target_chunk", lambda *a, **k: 1)
    pf.fit_flow_map(per_step, job.flow, job.sigma_init, 37, batch_size=32, seed=3)
    for p, q in zip(chunked.state_dict().values(), per_step.state_dict().values()):
        assert torch.equal(p, q)
    assert not all(torch.equal(p, q) for p, q in zip(chunked.state_dict().values(), job.gen_u.state_dict().values()))


def test_regression_term_draws_its_targets_ahead_with_the_same_result(tmp_path, monkeypatch):
    """The regression term (MATH R1b) with a deterministic sampler maps the next steps' noises in one sampler call; a
    step takes a target drawn ahead only if its noise is the one drawn, so a 23-step run (a last, shorter chunk) is
    the one-call-per-step run, weight for weight."""
    import fdistill.methods.distill as distill

    def weights(tag):
        job = _job(fast_config(tmp_path / tag, "objective.regression_weight=0.7", "objective.regression_sigma=1",
                               "train.steps=23"))
        for step in range(23):
            job.step(step)
        return job.gen_u.state_dict()

    chunked = weights("chunked")
    monkeypatch.setattr(distill, "target_chunk", lambda *a, **k: 1)
    per_step = weights("per_step")
    assert all(torch.equal(chunked[k], per_step[k]) for k in chunked)


def test_a_run_with_a_fresh_warm_start_is_the_run_that_loads_it_from_the_cache(tmp_path):
    """The first run fits the warm start and stores it; the second loads it: the two train alike, weight for weight.
    (A fit used to leave its last gradient on the generator, and the first update added it: the first student of
    each seed was trained from another first step than the ones after it.)"""
    from safetensors.torch import load_file

    words = ["network.flow_fit_steps=20", f"network.warm_start_cache={tmp_path / 'cache'}", "train.steps=6",
             "objective.divergence=rkl"]
    exported = []
    for tag in ("fits", "loads"):
        run_distill(fast_config(tmp_path / tag, *words))
        exported.append(load_file(next((tmp_path / tag / "generator").rglob("*.safetensors"))))
    assert len(list((tmp_path / "cache").iterdir())) == 1
    assert all(torch.equal(exported[0][k], exported[1][k]) for k in exported[0])


def test_flow_fit_warm_start_is_cached_by_what_made_it(tmp_path, monkeypatch):
    """network.warm_start_cache: a second job with the same teacher, network, seed and fit settings loads the fitted
    generator (same weights, no new fit); another fit learning rate or Adam betas make and store a new one."""
    import fdistill.pf_regression as pf

    cache = tmp_path / "cache"
    common = ["network.flow_fit_steps=20", f"network.warm_start_cache={cache}", "objective.divergence=rkl"]
    first = _job(fast_config(tmp_path / "a", *common))
    calls = []
    real = pf.fit_flow_map
    monkeypatch.setattr(pf, "fit_flow_map", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = _job(fast_config(tmp_path / "b", *common, "objective.divergence=fkl"))
    assert calls == [] and len(list(cache.iterdir())) == 1
    for p, q in zip(first.gen_u.state_dict().values(), second.gen_u.state_dict().values()):
        assert torch.equal(p, q)
    _job(fast_config(tmp_path / "c", *common, "network.flow_fit_lr=5e-4"))
    assert calls == [1] and len(list(cache.iterdir())) == 2
    _job(fast_config(tmp_path / "d", *common, "network.flow_fit_betas=[0.9,0.99]"))  # the default, said: same fit
    assert calls == [1]
    _job(fast_config(tmp_path / "e", *common, "network.flow_fit_betas=[0.9,0.999]"))
    assert calls == [1, 1] and len(list(cache.iterdir())) == 3
    # the fit's batch: null is train.batch_size (the same fit); another batch is another fit, whatever train's batch
    batch = first.cfg.train.batch_size
    _job(fast_config(tmp_path / "f", *common, f"network.flow_fit_batch={batch}"))
    assert calls == [1, 1]
    _job(fast_config(tmp_path / "g", *common, f"network.flow_fit_batch={2 * batch}"))
    _job(fast_config(tmp_path / "h", *common, f"network.flow_fit_batch={2 * batch}", f"train.batch_size={batch // 2}"))
    assert calls == [1, 1, 1] and len(list(cache.iterdir())) == 4
    with pytest.raises(ConfigError, match="network.flow_fit_batch"):
        fast_config(tmp_path / "i", "network.flow_fit_batch=0")
