"""The probability-flow ODE + Hutchinson log-density baseline against the exact mixture log-density."""
import math

import torch

from fdistill.networks import GaussianMixture
from samplers import karras_sigmas
from superpose.hutchinson import ode_log_density

GMM = GaussianMixture([[-2.5, 2.5], [-2.5, -2.5], [0.0, 0.0]], 0.5)
B = 1000


def _errors(divergence, ad="vjp", n_steps=40):
    gen = torch.Generator().manual_seed(0)
    sig = karras_sigmas(n_steps, 0.01, 80.0, append_zero=False)
    x0 = torch.randn(B, 2, generator=gen, dtype=torch.float64) * sig[0]
    out = ode_log_density(GMM, x0, sig, divergence=divergence, ad=ad, generator=gen)
    return GMM.log_prob(x0, float(sig[0])) + out.delta_log_q - GMM.log_prob(out.samples, float(sig[-1])), out


def test_exact_divergence_ode_is_accurate():
    # measured (Heun, 40 sigmas = 39 steps = 78 evaluations, 2 JVPs each): mean error 0.032, sd 0.028
    err, out = _errors("exact")
    assert abs(err.mean()) < 0.05 and err.pow(2).mean().sqrt() < 0.1
    assert out.nfe == 78 and out.jvps == 2 * 78


def test_hutchinson_agrees_with_the_exact_log_density_within_its_variance():
    # Same path as the exact run (the estimate does not feed back into x); the difference is the probes' noise,
    # zero-mean: measured mean 0.0023 with sd 0.28 per sample, so SE = sd / sqrt(B) = 0.0088.
    exact, _ = _errors("exact")
    hutch, out = _errors("hutchinson")
    diff = hutch - exact
    se = diff.std() / math.sqrt(B)
    assert abs(diff.mean()) < 4 * se, (diff.mean(), se)
    assert 0.05 < diff.std() < 0.6  # the probes add noise, of the expected size
    assert out.jvps == out.nfe == 78
    # forward mode (torch.func.jvp) and reverse mode give the same v^T J v for the same probes
    hutch_fwd, _ = _errors("hutchinson", ad="jvp", n_steps=10)
    hutch_rev, _ = _errors("hutchinson", ad="vjp", n_steps=10)
    torch.testing.assert_close(hutch_fwd, hutch_rev, rtol=1e-9, atol=1e-9)
