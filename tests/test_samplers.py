"""Schedules and samplers against the exact Gaussian-mixture teacher (MATH §0, §2, S1).

Statistical checks use n = 20 000 (Heun) or 10 000 (stochastic samplers) samples of ``ring8`` (weights 0.2 / 0.05,
means on a circle of radius 2, std 0.12) and bound every deviation by 4 Monte-Carlo standard errors (binomial for
weights, sample std / sqrt(n) for moments). The step counts are chosen so that the discretisation bias (measured at
n = 100 000) stays below 1 SE: a failure means a wrong sampler, not bad luck (chance < 1e-3 per bound; all seeded).
"""
import math

import numpy as np
import pytest
import torch
from torch import nn

from fdistill.data import gmm_preset
from fdistill.networks import ClassifierFreeGuidance, GaussianMixture
from samplers import CountingDenoiser, ddim, euler, euler_maruyama, get, heun, karras_sigmas, one_step, vp_sigmas

f64 = torch.float64
N = 20_000


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def ring8():
    return gmm_preset("ring8")


@pytest.fixture(scope="module")
def start(ring8):
    """Exact samples of p_sigma at sigma_max = 80: x0 + 80 eps (the sampler alone is under test)."""
    g = _gen(0)
    return ring8.sample(N, generator=g, dtype=f64) + 80 * torch.randn(N, 2, generator=g, dtype=f64)


def assert_reproduces_mixture(gm, x):
    """Component frequencies, mean and second moments of ``x`` within 4 MC standard errors of the exact mixture."""
    n = len(x)
    labels = gm.responsibilities(x, 0.0).argmax(1)  # modes are > 6 stds apart: assignment is unambiguous
    freq = torch.bincount(labels, minlength=gm.num_components).to(f64) / n
    se_w = (gm.weights * (1 - gm.weights) / n).sqrt()  # n = 20 000: 0.0028 (w = 0.2), 0.0015 (w = 0.05)
    assert ((freq - gm.weights).abs() < 4 * se_w).all(), f"weights {freq.tolist()} vs {gm.weights.tolist()}"
    mean = (gm.weights[:, None] * gm.means).sum(0)
    m2 = (gm.weights[:, None] * (gm.means**2 + gm.stds**2)).sum(0)  # exact E[x_j^2]
    se_mean = x.std(0) / math.sqrt(n)  # n = 20 000: ~0.010
    se_m2 = (x**2).std(0) / math.sqrt(n)  # n = 20 000: ~0.0125
    assert ((x.mean(0) - mean).abs() < 4 * se_mean).all(), (x.mean(0), mean)
    assert ((x.pow(2).mean(0) - m2).abs() < 4 * se_m2).all(), (x.pow(2).mean(0), m2)


# ---------------------------------------------------------------------------------------------- schedules


def test_karras_sigmas_match_edm():
    n, smin, smax, rho = 18, 0.002, 80.0, 7.0
    s = karras_sigmas(n)
    expected = [(smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho for i in range(n)]
    assert s.dtype == f64 and len(s) == n + 1
    np.testing.assert_allclose(s[:-1].numpy(), expected, rtol=1e-12)
    assert s[0] == smax and abs(s[n - 1].item() - smin) < 1e-15 and s[-1] == 0
    assert (s.diff() < 0).all()
    assert len(karras_sigmas(18, append_zero=False)) == 18 and karras_sigmas(18, append_zero=False)[-1] > 0
    assert karras_sigmas(1).tolist() == [80.0, 0.0]
    with pytest.raises(ValueError):
        karras_sigmas(0)


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
def test_vp_sigmas_match_diffusers_timesteps(spacing):
    from diffusers import DDIMScheduler

    kw = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    sched = DDIMScheduler(**kw, timestep_spacing=spacing)
    a = sched.alphas_cumprod.to(f64)
    for n in (1, 4, 10, 27, 48, 50, 250):  # 27 and 48 hit .5 rounding ties
        sched.set_timesteps(n)
        t = sched.timesteps
        s = vp_sigmas(n, sched.alphas_cumprod, spacing)
        assert len(s) == n + 1 and s[-1] == 0 and (s.diff() < 0).all()
        assert torch.equal(s[:-1], ((1 - a[t]) / a[t]).sqrt()), (spacing, n)
    if spacing == "trailing":  # trailing starts at the last timestep
        assert vp_sigmas(10, a, spacing)[0] == ((1 - a[-1]) / a[-1]).sqrt()
    with pytest.raises(ValueError, match="trailing"):
        vp_sigmas(10, a, "uniform")


# ---------------------------------------------------------------------------------------------- deterministic checks


def test_heun_uses_35_evaluations_for_18_steps(ring8):
    den = CountingDenoiser(ring8)
    heun(den, 80 * torch.randn(8, 2, generator=_gen(1), dtype=f64), karras_sigmas(18))
    assert den.calls == 35
    den.calls = 0
    heun(den, 80 * torch.randn(8, 2, generator=_gen(1), dtype=f64), karras_sigmas(18, append_zero=False))
    assert den.calls == 34  # a positive last sigma: every step is corrected


def _gaussian_ode_setup():
    """1-D N(m, s^2): the probability-flow ODE is linear, x(b) = m + (x(a) - m) sqrt((s^2 + b^2) / (s^2 + a^2))."""
    m, s = 0.7, 0.4
    gm = GaussianMixture(torch.tensor([[m]], dtype=f64), s)
    x = torch.linspace(-30, 30, 11, dtype=f64)[:, None]
    exact = m + (x - m) * math.sqrt((s**2 + 0.05**2) / (s**2 + 20**2))
    return gm, x, exact


def test_schedule_ending_above_zero_stops_there_and_orders_of_accuracy():
    gm, x, exact = _gaussian_ode_setup()
    err_euler, err_heun = [], []
    for n in (8, 16, 32, 64):
        sig = karras_sigmas(n, sigma_min=0.05, sigma_max=20, append_zero=False)  # ends at sigma 0.05
        err_euler.append((euler(gm, x, sig) - exact).abs().max().item())
        err_heun.append((heun(gm, x, sig) - exact).abs().max().item())
    # measured: euler 0.136, 0.068, 0.034, 0.017 (1st order); heun 0.083, 0.017, 0.0037, 0.00087 (2nd order)
    for e in (err_euler, err_heun):
        assert all(b < a for a, b in zip(e, e[1:]))
    assert err_euler[-1] < err_euler[0] / 6
    assert err_heun[-1] < err_heun[0] / 50 and err_heun[-1] < 2e-3


def test_ddim_eta0_is_deterministic_and_equals_euler(ring8):
    """In sigma form a deterministic DDIM step D + sigma' eps_hat is exactly an Euler step of the PF-ODE."""
    x = 80 * torch.randn(256, 2, generator=_gen(2), dtype=f64)
    sig = karras_sigmas(25)
    a = ddim(ring8, x, sig, generator=_gen(3))
    b = ddim(ring8, x, sig, generator=_gen(4))
    assert torch.equal(a, b)
    torch.testing.assert_close(a, euler(ring8, x, sig), rtol=1e-10, atol=1e-10)
    assert not torch.equal(ddim(ring8, x, sig, generator=_gen(3), eta=1.0), a)


def test_one_step_is_the_denoiser_at_sigma_init(ring8):
    z = torch.randn(64, 2, generator=_gen(5), dtype=f64)
    for sigma in (80.0, 2.5):
        out = one_step(ring8, sigma * z, sigma)
        torch.testing.assert_close(out, ring8(sigma * z, sigma), rtol=0, atol=0)


def test_sampler_registry():
    assert get("heun") is heun and get("ddim") is ddim
    with pytest.raises(ValueError, match="euler_maruyama"):
        get("dpm")


# ---------------------------------------------------------------------------------------------- statistics


def test_heun_reproduces_the_mixture(ring8, start):
    # bias at n = 1e5 with 40 steps: weights 0.001, E[x^2] 0.004 (18 steps: E[x^2] is 0.047 off, beyond 4 SE)
    x = heun(ring8, start, karras_sigmas(40))
    assert_reproduces_mixture(ring8, x)


def test_stochastic_heun_reproduces_the_mixture(ring8, start):
    # EDM's churn (ImageNet-64 settings): weight bias at n = 1e5 with 40 steps 0.0037; n = 10 000 (4 SE: 0.016)
    x = heun(ring8, start[:10_000], karras_sigmas(40), generator=_gen(12), s_churn=40, s_tmin=0.05, s_tmax=50)
    assert_reproduces_mixture(ring8, x)


def test_euler_maruyama_reproduces_the_mixture(ring8, start):
    # weak order 1: weight bias at n = 1e5 is 0.010 / 0.006 / 0.0037 with 50 / 100 / 200 steps. With 200 steps and
    # n = 10 000 (to save time) the bound 4 SE is 0.016 (w = 0.2), 0.0087 (w = 0.05), 0.07 for E[x^2].
    x = euler_maruyama(ring8, start[:10_000], karras_sigmas(200), generator=_gen(6))
    assert_reproduces_mixture(ring8, x)


def test_ddim_eta1_reproduces_the_mixture(ring8, start):
    # bias at n = 1e5 with 100 steps: weights 0.003, E[x^2] 0.015; n = 10 000 here (4 SE: 0.016 and 0.07)
    x = ddim(ring8, start[:10_000], karras_sigmas(100), generator=_gen(7), eta=1.0)
    assert_reproduces_mixture(ring8, x)


@pytest.mark.parametrize("sampler, coarse", [("euler_maruyama", 100), ("ddim_eta1", 50)])
def test_stochastic_samplers_converge_in_variance(sampler, coarse):
    """Weights and moments above hardly see the spread within a mode; check it on a 1-D N(0.3, 0.5^2).

    Both samplers are first order: the variance ratio Var/s^2 is 1.11 -> 1.06 (EM, 100 -> 200 steps) and
    0.78 -> 0.89 (DDIM eta=1, 50 -> 100 steps). The Richardson estimate 2 v(2N) - v(N) removes the O(1/N) bias
    (remainder measured at n = 2e5: < 0.01). With n = 50 000 per run and independent runs its MC standard error is
    sqrt(4 * 2/n + 2/n) = 0.014; bound 4 SE = 0.057. (Noise scaled by 0.9 in EM gives 0.81.)
    """
    m, s, n = 0.3, 0.5, 50_000
    gm = GaussianMixture(torch.tensor([[m]], dtype=f64), s)

    def run(steps, seed):
        g = _gen(seed)
        x = m + math.sqrt(s**2 + 80**2) * torch.randn(n, 1, generator=g, dtype=f64)  # exact p_80
        if sampler == "euler_maruyama":
            out = euler_maruyama(gm, x, karras_sigmas(steps), generator=g)
        else:
            out = ddim(gm, x, karras_sigmas(steps), generator=g, eta=1.0)
        return out.mean().item(), out.var().item() / s**2

    (_, v_c), (m_f, v_f) = run(coarse, 20), run(2 * coarse, 21)
    assert abs(v_f - 1) < abs(v_c - 1)
    assert abs(2 * v_f - v_c - 1) < 4 * math.sqrt(10 / n)
    assert abs(m_f - m) < 4 * s * math.sqrt(v_f / n)  # mean: SE = 0.0022


def test_euler_maruyama_is_seeded(ring8):
    x = 80 * torch.randn(128, 2, generator=_gen(8), dtype=f64)
    sig = karras_sigmas(20)
    a = euler_maruyama(ring8, x, sig, generator=_gen(9))
    assert torch.equal(a, euler_maruyama(ring8, x, sig, generator=_gen(9)))
    assert not torch.equal(a, euler_maruyama(ring8, x, sig, generator=_gen(10)))


class _ClassConditionalRing(nn.Module):
    """Label k: the exact denoiser of component k alone; label K (null): the whole mixture."""

    def __init__(self, gm):
        super().__init__()
        self.gm = gm

    def forward(self, x, sigma, cond=None):
        full = self.gm(x, sigma)
        if cond is None:
            return full
        k = self.gm.num_components
        mu, s2 = self.gm.means[cond.clamp(max=k - 1)], self.gm.stds[cond.clamp(max=k - 1)] ** 2
        sig2 = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1) ** 2
        comp = mu + s2 / (s2 + sig2) * (x - mu)
        return torch.where((cond == k)[:, None], full, comp)


def test_guidance_through_a_sampler(ring8):
    model = _ClassConditionalRing(ring8)
    n, label = 2000, 1  # a light mode (weight 0.05)
    x = 80 * torch.randn(n, 2, generator=_gen(11), dtype=f64)
    cond = torch.full((n,), label)
    sig = karras_sigmas(40)
    samples = {}
    for w in (1.0, 3.0):
        samples[w] = heun(ClassifierFreeGuidance(model, w, null_cond=8), x, sig, cond=cond)
        assigned = ring8.responsibilities(samples[w], 0.0).argmax(1)
        assert (assigned == label).all(), w  # the unconditional model puts 5% here
    # w = 1 is the conditional model: N(mu_1, 0.12^2), mean within 4 SE (0.12 / sqrt(2000) = 0.0027)
    dev = samples[1.0] - ring8.means[label]
    assert (dev.mean(0).abs() < 4 * 0.12 / math.sqrt(n)).all()
    assert abs(dev.std().item() / 0.12 - 1) < 4 / math.sqrt(2 * 2 * n)  # SE of a sample std ~ 1/sqrt(2n)
    # unguided vs guided through the same sampler differ (guidance pushes away from the other modes)
    assert not torch.allclose(samples[1.0], samples[3.0])
    # the cond=None path of the wrapper is the unconditional sampler
    torch.testing.assert_close(heun(ClassifierFreeGuidance(model, 3.0, null_cond=8), x[:64], sig),
                               heun(ring8, x[:64], sig))
