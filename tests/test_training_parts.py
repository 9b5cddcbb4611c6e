"""Noise-level distributions, learning-rate schedules, the power-function EMA and the probability-flow regression
job, each against what it should equal."""
import math
import sys

import pytest
import torch
from omegaconf import OmegaConf

from fdistill import noise_levels
from fdistill.ema import EMA, PowerDecay
from fdistill.optim import lr_scale


def test_loguniform_and_lognormal_levels_have_their_laws():
    n, g = 200_000, torch.Generator().manual_seed(0)
    s = noise_levels.make("loguniform", 0.01, 100.0).sample(n, generator=g).double()
    # ln sigma uniform on [ln 0.01, ln 100]: mean 0, variance (ln 1e4)^2 / 12
    assert s.log().mean().item() == pytest.approx(0.0, abs=0.03)
    assert s.log().var().item() == pytest.approx(math.log(1e4) ** 2 / 12, rel=0.02)
    assert s.min() >= 0.01 and s.max() <= 100.0
    ln = noise_levels.make("lognormal", 0, 0, sigma_data=2.0).sample(n, generator=g).double().log()
    # EDM's ln sigma ~ N(-1.2, 1.2^2) at sigma_data 0.5, moved by ln(2.0 / 0.5)
    assert ln.mean().item() == pytest.approx(-1.2 + math.log(4.0), abs=0.02)
    assert ln.std().item() == pytest.approx(1.2, rel=0.02)
    with pytest.raises(ValueError, match="valid"):
        noise_levels.make("uniform", 0.1, 1.0)
    with pytest.raises(ValueError, match="sigma_min <= sigma_max"):
        noise_levels.make("loguniform", 1.0, 0.1)


def test_flow_time_levels_are_the_shifted_logit_normal_time_in_sigma():
    """MATH N1: t = sigmoid(m + s n), t' = a t / (1 + (a - 1) t), sigma = t' / (1 - t'): ln sigma ~ N(m + ln a, s^2),
    clamped to the range. Checked against the time drawn the flow-matching way (SD3's logit-normal, then the shift)."""
    n, g = 200_000, torch.Generator().manual_seed(0)
    levels = noise_levels.make("flow_time", 1e-6, 1e6, mean=-0.5, std=0.8, shift=3.0)
    ln = levels.sample(n, generator=g).double().log()
    assert ln.mean().item() == pytest.approx(-0.5 + math.log(3.0), abs=0.01)
    assert ln.std().item() == pytest.approx(0.8, rel=0.01)
    # the same law from the time itself: quantiles of t' drawn as flow matching draws it
    t = torch.sigmoid(-0.5 + 0.8 * torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    shifted = 3.0 * t / (1 + 2.0 * t)
    ours = levels.sample_time(n, generator=torch.Generator().manual_seed(2)).double()
    q = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)
    assert torch.allclose(ours.quantile(q), shifted.quantile(q), atol=0.005)
    # clamped to the teacher's range: the tails sit on its ends
    narrow = noise_levels.make("flow_time", 0.5, 2.0).sample(n, generator=g)
    assert narrow.min() == pytest.approx(0.5) and narrow.max() == pytest.approx(2.0)
    assert (narrow == narrow.min()).float().mean().item() == pytest.approx(0.2441, abs=0.005)  # Phi(ln 0.5)
    with pytest.raises(ValueError, match="shift > 0"):
        noise_levels.make("flow_time", 0.1, 1.0, shift=0.0)


def test_karras_grid_and_ramp_have_their_laws():
    """KarrasGrid (MATH F2): uniform over grid indices lo..hi, every draw on the rho = 7 grid; KarrasRamp (MATH U3):
    ``sigma^(1/rho)`` uniform from ``sigma_min^(1/rho)`` (t = 0) to its value at ``t = t_max``."""
    from samplers.schedules import karras_sigmas

    n, g = 100_000, torch.Generator().manual_seed(0)
    grid = noise_levels.make("karras", 0.01, 10.0, num_levels=50, index_range=(2, 47))
    s = grid.sample(n, generator=g)
    ref = karras_sigmas(50, 0.01, 10.0, 7.0, append_zero=False).float()
    idx = (s[:, None] == ref[None]).float().argmax(1)
    assert torch.isin(s, ref).all() and idx.min() == 2 and idx.max() == 47
    counts = torch.bincount(idx, minlength=50)[2:48].double()
    assert (counts / counts.mean() - 1).abs().max() < 6 / math.sqrt(n / 46)
    ramp = noise_levels.make("karras_ramp", 0.01, 10.0, t_max=0.5)
    r = ramp.sample(n, generator=g).double() ** (1 / 7)
    lo = 0.01 ** (1 / 7)
    hi = lo + 0.5 * (10.0 ** (1 / 7) - lo)  # t = t_max: sigma <= 10 only at t_max = 1
    assert r.min() >= lo - 1e-6 and r.max() <= hi + 1e-6
    assert r.mean().item() == pytest.approx((lo + hi) / 2, abs=2e-3)
    assert r.var().item() == pytest.approx((hi - lo) ** 2 / 12, rel=0.03)


def test_truncated_levels_are_the_distribution_below_the_cap():
    """``Truncated`` (the GAN term's levels, MATH F2): a Karras grid below the cap is uniform over the grid's indices
    at or below it; a log-normal below it has the truncated normal's mean of ``ln sigma``,
    ``mu - s phi(a) / Phi(a)`` with ``a = (ln cap - mu) / s``; a cap the draws almost never reach is an error."""
    from samplers.schedules import karras_sigmas

    n, g = 100_000, torch.Generator().manual_seed(0)
    grid = noise_levels.make("karras", 0.01, 10.0, num_levels=50, index_range=(2, 47))
    s = noise_levels.Truncated(grid, 1.0).sample(n, generator=g)
    ref = karras_sigmas(50, 0.01, 10.0, 7.0, append_zero=False).float()
    kept = ((ref <= 1.0) & (torch.arange(50) >= 2) & (torch.arange(50) <= 47)).nonzero().flatten()
    idx = (s[:, None] == ref[None]).float().argmax(1)
    assert s.shape == (n,) and torch.isin(s, ref).all() and s.max() <= 1.0
    assert set(idx.unique().tolist()) == set(kept.tolist())
    counts = torch.bincount(idx, minlength=50)[kept].double()
    assert (counts / counts.mean() - 1).abs().max() < 6 / math.sqrt(n / len(kept))
    ln = noise_levels.make("lognormal", 0, 0, sigma_data=0.5)
    cap = 0.5
    t = noise_levels.Truncated(ln, cap)
    x = t.sample(n, generator=g).double().log()
    a = (math.log(cap) + 1.2) / 1.2
    phi, Phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi), 0.5 * (1 + math.erf(a / math.sqrt(2)))
    assert x.max() <= math.log(cap) + 1e-6 and t.sigma_max == cap and t.sigma_min == ln.sigma_min
    assert x.mean().item() == pytest.approx(-1.2 - 1.2 * phi / Phi, abs=0.01)
    with pytest.raises(ValueError, match="must be above"):
        noise_levels.Truncated(grid, 0.005)
    with pytest.raises(RuntimeError, match="raise the cap"):
        noise_levels.Truncated(ln, ln.sigma_min * 1.01).sample(1000, generator=g)


def test_lr_schedules():
    t = OmegaConf.create(dict(warmup_steps=0, lr_schedule="inv_sqrt", lr_ref_steps=100, steps=1000))
    assert [lr_scale(s, t) for s in (0, 100, 400)] == pytest.approx([1.0, 1.0, 0.5])
    t.lr_schedule = "cosine"
    assert [lr_scale(s, t) for s in (0, 500, 1000)] == pytest.approx([1.0, 0.5, 0.0])
    t.lr_schedule, t.warmup_steps = "constant", 10
    assert lr_scale(4, t) == pytest.approx(0.5)
    # wsd: constant (after the warm-up) until 80 % of the steps, then linear to 0 at train.steps
    t.lr_schedule, t.lr_decay_fraction = "wsd", 0.2
    assert [lr_scale(s, t) for s in (4, 100, 800, 900, 1000)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0])
    const = OmegaConf.merge(t, {"lr_schedule": "constant"})
    assert all(lr_scale(s, t) == lr_scale(s, const) for s in range(800))
    t.lr_schedule = "step"
    with pytest.raises(ValueError, match="valid"):
        lr_scale(0, t)


def test_generator_rate_is_scaled_down_for_a_run_longer_than_its_budget():
    """train.lr_budget_steps: a run of k times the budget gets the generator rate / k (the same sum of rates under
    the same schedule shape); a run within the budget, or no budget (null or 0), keeps train.lr; a negative budget is
    refused."""
    from fdistill.config import ConfigError, load_config
    from fdistill.optim import generator_lr

    t = OmegaConf.create(dict(lr=1e-4, steps=2000, lr_budget_steps=500, warmup_steps=0, lr_schedule="cosine"))
    assert generator_lr(t) == pytest.approx(2.5e-5)
    long_sum = sum(generator_lr(t) * lr_scale(s, t) for s in range(t.steps))
    short = OmegaConf.merge(t, {"steps": 500})
    assert generator_lr(short) == 1e-4
    # the same sum of rates, up to the cosine's discretisation (N / 2 + 1 / 2 over N steps)
    assert long_sum == pytest.approx(sum(generator_lr(short) * lr_scale(s, short) for s in range(500)), rel=2e-3)
    assert generator_lr(OmegaConf.merge(t, {"lr_budget_steps": None})) == 1e-4
    assert generator_lr(OmegaConf.merge(t, {"lr_budget_steps": 0})) == 1e-4  # 0: no budget
    with pytest.raises(ConfigError, match="train.lr_budget_steps must be >= 0"):
        load_config(None, ["train.lr_budget_steps=-1"])


def test_power_ema_is_the_tau_to_the_gamma_average():
    """After steps 1..T with weights w_tau, the power EMA holds sum tau^g w_tau / sum tau^g (EDM2's profile, exact up
    to the ``(1 - 1/t)^(g + 1)`` discretisation, which sums to this exactly for integer g)."""
    gamma, steps = 3.0, 50
    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, [PowerDecay(gamma)])
    values = torch.randn(steps, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for i, v in enumerate(values):
        model.weight.data.fill_(float(v))
        ema.update(model, i)
    tau = torch.arange(1, steps + 1, dtype=torch.float64)
    # (1 - 1/t)^(g+1) = ((t-1)/t)^(g+1): the weights are proportional to tau^(g+1) - (tau-1)^(g+1), ~ tau^g
    w = tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)
    expected = (w * values).sum() / w.sum()
    # float32 weights: a relative tolerance alone fails when the average lands near 0
    assert ema.model(0).weight.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_probability_flow_regression_learns_the_teacher_map(tmp_path):
    """task=regress on ring8: the generator moves onto the teacher's modes (off-mode fraction falls from 1 at the
    start, where G(z) is the posterior mean, to well below that) and reaches every mode."""
    sys.path.insert(0, "tests")
    from trainer_utils import fast_config, reset_accelerate

    from eval.gmm import gmm_metrics
    from fdistill.methods.regress import PFRegression
    from fdistill.run import run

    reset_accelerate()
    m = run(fast_config(str(tmp_path / "regress"), "task=regress", "train.steps=300", "train.lr=1e-3", "train.betas=null"),
            PFRegression, measures=gmm_metrics)
    assert m["method"] == "regress" and m["mode_recall"] == 1.0
    assert m["off_mode"] < 0.5 and m["tv_on_mode"] < 0.1


def test_regression_ceiling_is_the_same_at_every_scale_of_the_teacher(tmp_path):
    """task=regress on ring8 and on ring8 scaled by 4, same seed, with a gradient clip that binds: the loss is in
    units of sigma_data^2 (MATH R1), so the two runs take the same steps and log the same losses. (With the loss in
    data units the clip bound far more often on the scaled teacher, and its ceiling came out better: README
    "Results".)"""
    import json

    sys.path.insert(0, "tests")
    from trainer_utils import fast_config, reset_accelerate

    from fdistill.data import mixture_from_spec
    from fdistill.methods.regress import PFRegression
    from fdistill.run import run

    big = mixture_from_spec("ring8*4")
    scaled = [f"teacher.means={big.means.tolist()}", f"teacher.stds={big.stds.tolist()}",
              f"teacher.weights={big.weights.tolist()}"]
    losses = {}
    for name, words in (("ring8", []), ("ring8x4", scaled)):
        reset_accelerate()
        out = tmp_path / name
        cfg = fast_config(str(out), "task=regress", "train.steps=20", "train.betas=null", "train.grad_clip=0.05",
                          "network.fit_steps=50", *words)
        run(cfg, PFRegression)
        rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
        losses[name] = torch.tensor([r["loss"] for r in rows if "loss" in r])
    assert len(losses["ring8"]) >= 4
    torch.testing.assert_close(losses["ring8x4"], losses["ring8"], rtol=2e-3, atol=0)


def test_regression_ceiling_draws_its_pairs_ahead_with_the_same_result(tmp_path, monkeypatch):
    """task=regress with a deterministic sampler draws the targets of several steps through one sampler call; the
    steps' noises come from their own streams, so the run is the one-call-per-step run, weight for weight (23 steps:
    a last, shorter chunk; a stochastic sampler keeps one call per step)."""
    sys.path.insert(0, "tests")
    from safetensors.torch import load_file
    from trainer_utils import fast_config, reset_accelerate

    import fdistill.methods.regress as regress_mod
    from fdistill.run import run

    def weights(tag):
        reset_accelerate()
        out = tmp_path / tag
        run(fast_config(str(out), "task=regress", "train.steps=23", "network.fit_steps=20"), regress_mod.PFRegression)
        return load_file(next((out / "generator").rglob("*.safetensors")))

    chunked = weights("chunked")
    monkeypatch.setattr(regress_mod, "target_chunk", lambda *a, **k: 1)
    per_step = weights("per_step")
    assert chunked.keys() == per_step.keys() and all(torch.equal(chunked[k], per_step[k]) for k in chunked)
    import samplers
    from fdistill.data import mixture_from_spec

    gmm = mixture_from_spec("ring8")
    kinds = {(name, str(kw)): samplers.MultiStepGenerator(gmm, name, 6, sampler_kwargs=kw).deterministic
             for name, kw in (("heun", {}), ("euler", {}), ("ddim", {}), ("heun", {"s_churn": 1.0}),
                              ("ddim", {"eta": 1.0}), ("euler_maruyama", {}))}
    assert list(kinds.values()) == [True, True, True, False, False, False]


@pytest.mark.slow
def test_regression_ceiling_reaches_the_exact_flow_map_in_1d(tmp_path):
    """task=regress on a 1-D two-mode mixture against the exact probability-flow map, which in 1-D is the monotone
    transport ``Phi(z) = F_0^-1(F_smax(mu + smax z))`` between the start marginal and the mixture (closed form).

    Tolerance, away from the split (quantile levels within 2 % of the light mode's weight, where Phi jumps): the
    Heun-35 targets' own error against Phi (measured here) plus a quarter of the mode std, a shift that moves a sample's
    Mahalanobis distance by 0.25 and so the on-mode fraction (MATH §7) by well under 1 %; the mean error within a
    quarter std. Measured (600 steps, 64-wide MLP): Heun 0.084 max, generator 0.051 mean / 0.136 max, std 0.3."""
    import numpy as np
    from scipy.optimize import brentq
    from scipy.stats import norm

    import fdistill
    import samplers
    from fdistill.networks import GaussianMixture

    sys.path.insert(0, "tests")
    from trainer_utils import fast_config, reset_accelerate

    from fdistill.methods.regress import PFRegression
    from fdistill.run import run

    means, std, w = [[-2.0], [2.0]], 0.3, [0.3, 0.7]
    gmm = GaussianMixture(torch.tensor(means, dtype=torch.float64), std, w)
    reset_accelerate()
    out = tmp_path / "pf1d"
    run(fast_config(str(out), "task=regress", "train.steps=600", "network.flow_fit_lr=1e-3", "train.lr_schedule=cosine",
                    "train.betas=null",
                    f"teacher.means={means}", f"teacher.stds={std}", f"teacher.weights={w}", "network.hidden=64"),
        PFRegression)
    assert (out / "samples" / "step-000600.png").is_file()  # 1-D runs draw histograms

    mu, smax = float(gmm.data_mean), gmm.sigma_max

    def cdf(x, s):
        return sum(wk * norm.cdf(x, m[0], math.sqrt(std**2 + s**2)) for wk, m in zip(w, means))

    z = np.linspace(-2.5, 2.5, 201)
    u = np.array([cdf(mu + smax * zi, smax) for zi in z])
    exact = np.array([brentq(lambda x, ui=ui: cdf(x, 0.0) - ui, -10, 10) for ui in u])
    lo, hi = samplers.generator.sigma_range(gmm)
    heun = samplers.MultiStepGenerator(gmm, "heun", 18, sigma_min=lo, sigma_max=hi).from_noise(
        torch.tensor(z)[:, None]).squeeze(1).numpy()
    with torch.no_grad():
        g = fdistill.load_generator(str(out)).generate(torch.tensor(z, dtype=torch.float32)[:, None]).squeeze(1)
    away = np.abs(u - w[0]) > 0.02
    heun_err = np.abs(heun - exact)[away].max()
    err = np.abs(g.numpy() - exact)[away]
    assert heun_err < 0.5 * std  # the targets themselves are close to the closed form
    assert err.max() <= heun_err + 0.25 * std and err.mean() <= 0.25 * std, (heun_err, err.max(), err.mean())


def test_teacher_pool_is_keyed_by_what_made_it(tmp_path, monkeypatch):
    """data.kind=teacher: the cached pool is reused only for the same teacher state, sampler, steps, size and seed;
    a changed setting or a retrained teacher draws a new pool (with a warning), never a stale one."""
    import warnings

    import fdistill.sources as src
    from fdistill.networks import MLPDenoiser

    torch.manual_seed(0)
    teacher = MLPDenoiser(dim=2, hidden=8, depth=1).eval()
    path = str(tmp_path / "teacher_pool.pt")
    draws = []
    real = src.draw_teacher_samples
    monkeypatch.setattr(src, "draw_teacher_samples", lambda *a, **k: draws.append(a[2:6]) or real(*a, **k))

    def pool(net=teacher, seed=0, **kw):
        settings = dict(pool_size=32, sampler="euler", num_steps=3) | kw
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            p = src.TeacherPoolSource(net, (2,), src.StepRandom(seed), cache_path=path, **settings)
        return p, [str(w.message) for w in caught]

    first, _ = pool()
    again, warned = pool()
    assert len(draws) == 1 and not warned and torch.equal(first.x, again.x)
    for change in ({"num_steps": 4}, {"pool_size": 16}, {"sampler": "heun"}, {"seed": 1}):
        p, warned = pool(**change)
        assert any("another teacher or other settings" in w for w in warned), change
    assert len(draws) == 5 and len(p.x) == 32
    retrained = MLPDenoiser(dim=2, hidden=8, depth=1).eval()  # same architecture, other weights
    p, warned = pool(net=retrained, seed=1)
    assert len(draws) == 6 and warned
    (tmp_path / "teacher_pool.pt").write_bytes(b"not a pool")
    p, warned = pool()
    assert len(draws) == 7 and any("unreadable" in w for w in warned)


def test_adam_betas_are_the_methods_own_unless_set(tmp_path):
    """train.betas: null gives distillation (0, 0.99), teacher pretraining (0.9, 0.999) and the regression ceiling
    (0.9, 0.99),
    each method's ``default_betas``; a set value reaches every method's optimiser (the teacher pretraining used to
    ignore it); bad values are refused."""
    from fdistill.config import ConfigError, load_config
    from fdistill.methods import method_class
    from fdistill.optim import adam_betas, adamw

    cfg = load_config(None, [f"out_dir={tmp_path}"])
    assert cfg.train.betas is None
    own = {task: method_class(task).default_betas for task in ("distill", "teacher", "regress")}
    assert own == {"distill": (0.0, 0.99), "teacher": (0.9, 0.999), "regress": (0.9, 0.99)}
    assert all(adam_betas(cfg.train, b) == b for b in own.values())
    cfg.train.betas = [0.5, 0.9]
    for betas in own.values():
        assert adamw([torch.zeros(1, requires_grad=True)], 1e-3, cfg.train, "cpu", betas).defaults["betas"] == (0.5, 0.9)
    for bad in ("[0.9]", "[0.9,1.0]"):
        with pytest.raises(ConfigError, match="train.betas"):
            load_config(None, [f"out_dir={tmp_path}", f"train.betas={bad}"])
        with pytest.raises(ConfigError, match="network.flow_fit_betas"):
            load_config(None, [f"out_dir={tmp_path}", f"network.flow_fit_betas={bad}"])


def test_teacher_pretraining_uses_train_betas(tmp_path, monkeypatch):
    from fdistill.run import RunContext
    from fdistill.methods.teacher import TeacherTrainer

    sys.path.insert(0, "tests")
    from trainer_utils import fast_config, reset_accelerate

    reset_accelerate()
    cfg = fast_config(tmp_path, "task=teacher", "train.steps=1", "train.betas=[0.5,0.9]")
    job = TeacherTrainer(cfg, RunContext(cfg))
    assert job.opt.optimizer.defaults["betas"] == (0.5, 0.9)


def test_regression_side_term_pulls_the_generator_onto_the_flow_map(tmp_path):
    """objective.regression_weight > 0 adds DMD's regression term (MATH R1) on the step's own noise: from the
    denoiser start (every G(z) near the mixture's mean, far from its probability-flow sample), a dominant weight
    drives the logged ``loss_reg`` down; a negative weight is refused."""
    import json

    sys.path.insert(0, "tests")
    from trainer_utils import fast_config, run_distill

    from fdistill.config import ConfigError

    with pytest.raises(ConfigError, match="regression_weight"):
        fast_config(str(tmp_path / "bad"), "objective.regression_weight=-1")
    out = tmp_path / "reg"
    run_distill(fast_config(str(out), "objective.regression_weight=20", "objective.divergence=rkl", "train.steps=80",
                            "train.lr=1e-3", "data.num_steps=8"))
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    reg = [r["loss_reg"] for r in rows if "loss_reg" in r]
    assert len(reg) >= 10 and reg[-1] < 0.3 * reg[0], reg


@pytest.mark.parametrize("regression_sigma", [0.0, 1.0])
def test_regression_term_is_the_closed_form_flow_map_regression(tmp_path, regression_sigma):
    """MATH R1 on a Gaussian teacher N(mu, s^2 I), whose probability-flow map from the start mu + sigma_max z is exact:
    Phi(z) = mu + z s sigma_max / sqrt(s^2 + sigma_max^2) (the ODE scales x - mu by sqrt(s^2 + sigma^2)). The term is
    mean ||x0 - Phi(z)||^2 / (2 sigma_data), its gradient (x0 - Phi(z)) / (sigma_data N), N = B d. Through the
    teacher's denoiser (R1b, sigma_r = regression_sigma * sigma_data) the shared noise cancels, D(x) - D(y) =
    s^2 / (s^2 + sigma_r^2) (x - y), and the gradient is that factor times R1's. Heun is second order: over the
    teacher's range (0.004 .. 160 sigma_data) its scale error is 5.5 % at 18 levels, 1.3 % at 35 and 0.3 % at 70
    (measured), so 70 levels and a 1 % tolerance."""
    sys.path.insert(0, "tests")
    from trainer_utils import fast_config, reset_accelerate

    from fdistill.run import RunContext
    from fdistill.methods.distill import Distiller

    mu, s = torch.tensor([1.0, -0.5]), 0.7
    cfg = fast_config(str(tmp_path / "reg"), "teacher.means=[[1.0,-0.5]]", f"teacher.stds={s}", "teacher.weights=[1.0]",
                      "objective.regression_weight=1", f"objective.regression_sigma={regression_sigma}",
                      "data.sampler=heun", "data.num_steps=70", "network.fit_steps=0")
    reset_accelerate()
    job = Distiller(cfg, RunContext(cfg))
    sigma_max, sigma_data = float(job.flow.sigmas[0]), job.scale.sigma_data
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(1)).requires_grad_()
    phi = mu + z * s * sigma_max / math.sqrt(s**2 + sigma_max**2)
    loss = job.regression_term(x0, job.regression_target(z, step=0), step=0)
    loss.backward()
    target = job.flow.from_noise(z)  # deterministic: the same map the term used
    torch.testing.assert_close(target - mu, phi - mu, rtol=1e-2, atol=1e-5)
    sigma_r = regression_sigma * sigma_data
    diff = s**2 / (s**2 + sigma_r**2) * (x0.detach() - target)
    assert loss.item() == pytest.approx(((diff**2).mean() / (2 * sigma_data)).item(), rel=1e-4)
    torch.testing.assert_close(x0.grad, diff / (sigma_data * x0.numel()), rtol=1e-4, atol=1e-7)
    if regression_sigma > 0:
        with pytest.raises(Exception, match="regression_sigma"):
            fast_config(str(tmp_path / "bad"), "objective.regression_sigma=-1")


def test_regression_pair_pool_is_the_flow_map_and_keyed_by_what_made_it(tmp_path):
    """objective.regression_pairs = N: N pairs (z, Phi(z)) drawn once (DMD's paired set) — on a Gaussian teacher
    Phi(z) = mu + z s sigma_max / sqrt(s^2 + sigma_max^2) within Heun-70's 1 % (see the test above); a second run with
    the same settings reuses the cached pool (same tensors, file not rewritten), another num_steps or seed draws a new
    one; each step's regression batch is taken from the pool through the step's own stream; N < 0 is refused."""
    sys.path.insert(0, "tests")
    from trainer_utils import fast_config, reset_accelerate

    from fdistill.config import ConfigError
    from fdistill.run import RunContext
    from fdistill.methods.distill import Distiller

    with pytest.raises(ConfigError, match="regression_pairs"):
        fast_config(str(tmp_path / "bad"), "objective.regression_pairs=-1")
    mu, s = torch.tensor([1.0, -0.5]), 0.7
    common = ["teacher.means=[[1.0,-0.5]]", f"teacher.stds={s}", "teacher.weights=[1.0]", "network.fit_steps=0",
              "network.flow_fit_steps=0", "objective.regression_weight=1", "objective.regression_pairs=300"]

    def build(*extra):
        cfg = fast_config(str(tmp_path / "pool"), *common, *extra)
        reset_accelerate()
        return Distiller(cfg, RunContext(cfg))

    job = build("data.num_steps=70")
    pool, path = job.pair_pool, tmp_path / "pool" / "regression_pairs.pt"
    assert len(pool) == 300 and path.is_file()
    sigma_max = float(job.flow.sigmas[0])
    torch.testing.assert_close(pool.x - mu, pool.z * s * sigma_max / math.sqrt(s**2 + sigma_max**2), rtol=1e-2,
                               atol=1e-5)
    stamp = path.stat().st_mtime_ns
    again = build("data.num_steps=70").pair_pool
    assert path.stat().st_mtime_ns == stamp and torch.equal(again.z, pool.z) and torch.equal(again.x, pool.x)
    coarse = build("data.num_steps=8").pair_pool
    assert torch.equal(coarse.z, pool.z) and not torch.allclose(coarse.x, pool.x, atol=1e-3)
    other_seed = build("data.num_steps=8", "seed=1").pair_pool
    assert not torch.equal(other_seed.z, pool.z)
    z, c, x = job.pair_pool.batch(job.rand, 5, 16)
    z2, _, x2 = job.pair_pool.batch(job.rand, 5, 16)
    assert z.shape == (16, 2) and c is None and torch.equal(z, z2) and torch.equal(x, x2)
    assert any(bool((z == row).all(1).any()) for row in pool.z)


class ClassGaussians(torch.nn.Module):
    """A class-conditional teacher with an exact denoiser: class ``c`` is ``N(m_c, s^2 I)``,
    ``D(x, sigma, c) = m_c + s^2 / (s^2 + sigma^2) (x - m_c)``."""

    def __init__(self, means, s: float):
        super().__init__()
        self.register_buffer("means", torch.as_tensor(means, dtype=torch.float32))
        self.s = s

    @property
    def sample_shape(self) -> tuple:
        return (self.means.shape[1],)

    def forward(self, x, sigma, cond=None):
        m = self.means[0 if cond is None else cond]  # no label: class 0
        shrink = self.s**2 / (self.s**2 + sigma.reshape(-1, 1) ** 2)
        return m + shrink * (x - m)

    def flow_map(self, z, cond, sigma_max: float):
        """The exact probability-flow map from the start ``sigma_max z`` (data mean 0): the ODE scales ``x - m_c`` by
        ``sqrt(s^2 + sigma^2)``."""
        m = self.means[cond]
        return m + (sigma_max * z - m) * self.s / math.sqrt(self.s**2 + sigma_max**2)


@pytest.mark.parametrize("regression_sigma", [0.0, 1.0])
def test_class_conditional_regression_target_and_term_are_the_closed_form(tmp_path, regression_sigma):
    """MATH R1 / R1b for a class-conditional teacher: the target of a step's (z, c) is Phi(z, c) of class c's own
    Gaussian, also for the targets the deterministic sampler draws ahead (labels from each step's own stream), and a
    label other than the one drawn ahead gets its own target; the term's gradient is the closed form."""
    sys.path.insert(0, "tests")
    from trainer_utils import fast_config, reset_accelerate

    from fdistill.methods.distill import Distiller
    from fdistill.pf_regression import flow_sampler
    from fdistill.run import RunContext

    s = 0.3
    cfg = fast_config(str(tmp_path / "reg"), "teacher.num_classes=2", "objective.regression_weight=1",
                      f"objective.regression_sigma={regression_sigma}", "data.sampler=heun", "data.num_steps=70",
                      "network.fit_steps=0")
    reset_accelerate()
    job = Distiller(cfg, RunContext(cfg))
    teacher = ClassGaussians([[2.0, 0.0], [-2.0, 1.0]], s)
    job.flow, job.teacher = flow_sampler(teacher, cfg, job.conditioner.null_cond, job.num_classes), teacher
    sigma_max, sigma_data, b = float(job.flow.sigmas[0]), job.scale.sigma_data, job.ctx.local_batch
    z0, c0 = job.rand.randn(0, "z/gen", b, job.shape), job.labels(0, "label/gen")
    z1, c1 = job.rand.randn(1, "z/gen", b, job.shape), job.labels(1, "label/gen")
    assert c0.unique().numel() == 2
    t0 = job.regression_target(z0, 0, c0)
    assert 1 in job.targets_ahead  # step 1's target was drawn with step 0's
    # step 1's generator labels are the ones drawn ahead, taken as they are (prompts are not encoded twice)
    assert job.labels(1, "label/gen") is job.targets_ahead[1][1] and torch.equal(job.targets_ahead[1][1], c1)
    torch.testing.assert_close(t0, teacher.flow_map(z0, c0, sigma_max), rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(job.regression_target(z1, 1, c1), teacher.flow_map(z1, c1, sigma_max), rtol=1e-2,
                               atol=1e-3)
    job.regression_target(z0, 0, c0)
    flipped = 1 - c1  # not the labels drawn ahead: the target of these
    torch.testing.assert_close(job.regression_target(z1, 1, flipped), teacher.flow_map(z1, flipped, sigma_max),
                               rtol=1e-2, atol=1e-3)
    x0 = torch.randn(b, 2, generator=torch.Generator().manual_seed(1)).requires_grad_()
    loss = job.regression_term(x0, t0, 0, c0)
    loss.backward()
    sigma_r = regression_sigma * sigma_data
    diff = s**2 / (s**2 + sigma_r**2) * (x0.detach() - t0)
    torch.testing.assert_close(x0.grad, diff / (sigma_data * x0.numel()), rtol=1e-4, atol=1e-7)


def test_class_conditional_pair_pool_and_warm_start(tmp_path):
    """The pair pool of a class-conditional teacher holds (z, c, Phi(z, c)) with Phi of each pair's own class, and
    under another key than an unconditional pool's; the flow-map warm start learns the class-conditional map (each
    class's samples land on its own mean)."""
    from fdistill.conditioning import ClassLabels
    from fdistill.config import load_config
    from fdistill.denoiser import one_step
    from fdistill.networks.mlp import MLPDenoiser
    from fdistill.pf_regression import FlowPairPool, fit_flow_map, flow_sampler
    from fdistill.step_random import StepRandom

    teacher = ClassGaussians([[2.0, 0.0], [-2.0, 1.0]], 0.3)
    cfg = load_config(None, ["data.sampler=heun", "data.num_steps=70"])  # Heun at 70 levels: 0.3 % scale error
    flow = flow_sampler(teacher, cfg, 2, 2)
    sigma_max = float(flow.sigmas[0])
    path = str(tmp_path / "pairs.pt")
    pool = FlowPairPool(flow, teacher, 100, 0, path, conditioner=ClassLabels(2))
    assert pool.c is not None and set(pool.c.tolist()) == {0, 1}
    close = dict(rtol=1e-2, atol=5e-3)  # Heun at 70 levels: 0.3 % of the map's scale
    torch.testing.assert_close(pool.x, teacher.flow_map(pool.z, pool.c, sigma_max), **close)
    z, c, x = pool.batch(StepRandom(0, 0, 1, "cpu"), 0, 8)
    torch.testing.assert_close(x, teacher.flow_map(z, c, sigma_max), **close)
    again = FlowPairPool(flow, teacher, 100, 0, path, conditioner=ClassLabels(2))  # from the cache: the same pairs
    assert torch.equal(again.c, pool.c) and torch.equal(again.x, pool.x)
    with pytest.warns(UserWarning, match="other settings"):  # an unconditional pool's key is another one
        plain = FlowPairPool(flow, teacher, 100, 0, path)
    assert plain.c is None and torch.equal(plain.z, pool.z)  # each chunk's labels are drawn after its noises

    torch.manual_seed(0)
    gen = MLPDenoiser(dim=2, hidden=64, depth=2, num_classes=2)
    fit_flow_map(gen, flow, 2.5, 400, batch_size=64, lr=3e-3, seed=0, conditioner=ClassLabels(2))
    zt = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for k in range(2):
            out = one_step(gen, zt, 2.5, torch.full((2000,), k))
            assert torch.allclose(out.mean(0), teacher.means[k], atol=0.15), (k, out.mean(0))


def _pair_pool(path: str, rank: int = 0, world: int = 1):
    """A 200-pair pool (4 chunks) of the ring8 mixture's flow map, drawn by process ``rank`` of ``world``."""
    from fdistill.config import load_config
    from fdistill.pf_regression import FlowPairPool, flow_sampler
    from fdistill.teachers import load_teacher

    cfg = load_config(None, ["teacher.preset=ring8", "data.num_steps=6"])
    teacher = load_teacher(cfg).denoiser
    flow = flow_sampler(teacher, cfg)
    calls, from_noise = [], flow.from_noise
    flow.from_noise = lambda z, *a, **k: calls.append(len(z)) or from_noise(z, *a, **k)
    pool = FlowPairPool(flow, teacher, 200, 3, path, rank=rank, world=world)
    pool.drawn = calls  # the chunks this process drew
    return pool


def _teacher_pool(path: str, rank: int = 0, world: int = 1) -> dict:
    """600 samples (3 batches of 256) of the ring8 mixture with labels of 3 classes, Heun at 6 levels, drawn by process
    ``rank`` of ``world`` (``fdistill.sources.draw_teacher_samples``); ``"drawn"``: the batch sizes it sampled."""
    import samplers
    from fdistill.config import load_config
    from fdistill.sources import draw_teacher_samples
    from fdistill.teachers.mixture import build_mixture

    teacher = build_mixture(load_config(None, ["teacher.preset=ring8"]).teacher)
    calls, heun = [], samplers.get("heun")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(samplers, "get", lambda name: lambda d, z, *a, **k: calls.append(len(z)) or heun(d, z, *a, **k))
        pool = draw_teacher_samples(teacher, (2,), 600, "heun", 6, 3, num_classes=3, rank=rank, world=world,
                                    part_path=path)
    return {**pool, "drawn": calls}


def _pair_pool_worker(rank, world, port, path):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        pool = _pair_pool(path, rank, world)
        teacher_pool = _teacher_pool(path + "-teacher", rank, world)
        torch.save({"z": pool.z, "x": pool.x, "drawn": pool.drawn, "teacher_pool": teacher_pool},
                   f"{path}.rank{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_pools_drawn_by_two_processes_are_the_one_process_pools(tmp_path):
    """Two gloo processes split the pair pool's chunks (seeded by their index) and the teacher pool's batches between
    them and both end with the pools one process draws alone; the pair pool is written once, part files removed."""
    import os
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = str(tmp_path / "two" / "pairs.pt")
    os.makedirs(os.path.dirname(two))
    mp.spawn(_pair_pool_worker, args=(2, port, two), nprocs=2, join=True)
    one = _pair_pool(str(tmp_path / "one" / "pairs.pt"))
    assert one.drawn == [64, 64, 64, 8]
    for rank, mine in enumerate(([64, 64], [64, 8])):  # chunks 0, 2 and 1, 3
        got = torch.load(f"{two}.rank{rank}")
        assert got["drawn"] == mine and torch.equal(got["z"], one.z) and torch.equal(got["x"], one.x)
    assert sorted(os.listdir(tmp_path / "two")) == ["pairs.pt", "pairs.pt.rank0", "pairs.pt.rank1"]
    # the data-free teacher pool (deterministic sampler): batches 0, 2 and 1, the same samples and labels as alone
    alone = _teacher_pool(str(tmp_path / "one" / "teacher"))
    assert alone["drawn"] == [256, 256, 88] and alone["labels"].shape == (600,)
    for rank, mine in enumerate(([256, 88], [256])):
        got = torch.load(f"{two}.rank{rank}")["teacher_pool"]
        assert got["drawn"] == mine
        assert torch.equal(got["x"], alone["x"]) and torch.equal(got["labels"], alone["labels"])
    assert torch.equal(torch.load(two, weights_only=True)["data"]["x"], one.x)
