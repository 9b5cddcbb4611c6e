"""MATH S1 (Itô density estimator) and the S2/S3 weight solves, against exact Gaussian-mixture densities."""
import math

import pytest
import torch

import superpose
from fdistill.networks import GaussianMixture
from samplers import euler_maruyama_step, karras_sigmas
from superpose.ito import inner, ito_increment_ve, ve_g2dt
from superpose.kappa import AndSolver, or_weights
from superpose.process import step

GMM = GaussianMixture([[-2.5, 2.5], [-2.5, -2.5], [0.0, 0.0]], 0.5)
B = 1000


def _single_errors(n_steps, process="ve", seed=0):
    """Estimator error ``log q_max(x_start) + sum dlog q - log q_min(x_end)`` per sample, on the model's own SDE."""
    gen = torch.Generator().manual_seed(seed)
    sig = karras_sigmas(n_steps, 0.01, 80.0, append_zero=False)
    x0 = torch.randn(B, 2, generator=gen, dtype=torch.float64) * sig[0]
    out = superpose.sample([GMM], x0, sig, mode="single", generator=gen, process=process)
    est = GMM.log_prob(x0, float(sig[0])) + out.log_q[0]
    return est - GMM.log_prob(out.samples, float(sig[-1]))


@pytest.mark.parametrize("process", ["ve", "vp"])
def test_single_model_estimator_converges(process):
    # Measured (seed 0, B = 1000, Karras sigmas 80 -> 0.01):
    #   ve: steps 50 / 200 / 800: mean error 1.36 / 0.29 / 0.058, rms 2.26 / 0.82 / 0.38
    #   vp: steps 50 / 200 / 800: mean error 0.73 / 0.15 / 0.025, rms 1.84 / 0.77 / 0.38
    # The bias falls like 1/N, the rms like N^-1/2 (the left-point Itô sum is strong order 1/2).
    errs = {n: _single_errors(n, process) for n in (50, 200, 800)}
    rms = {n: e.pow(2).mean().sqrt().item() for n, e in errs.items()}
    bias = {n: e.mean().item() for n, e in errs.items()}
    assert rms[200] < rms[50] / 1.6 and rms[800] < rms[200] / 1.6, rms
    assert abs(bias[200]) < abs(bias[50]) / 2 and abs(bias[800]) < abs(bias[200]) / 2, bias
    assert rms[800] < 0.5 and abs(bias[800]) < 0.1, (rms, bias)


def test_sign_of_the_score_norm_term_matters():
    # MATH S1 warning: with + (g^2 dtau / 2)|s|^2 the accumulated error is far larger
    # (measured, 200 steps: mean |error| 0.64 with the right sign, 18.8 flipped).
    gen = torch.Generator().manual_seed(1)
    sig = karras_sigmas(200, 0.01, 80.0, append_zero=False).tolist()
    x = torch.randn(B, 2, generator=gen, dtype=torch.float64) * sig[0]
    start = GMM.log_prob(x, sig[0])
    right = torch.zeros(B, dtype=torch.float64)
    flipped = torch.zeros(B, dtype=torch.float64)
    for s, s_next in zip(sig[:-1], sig[1:]):
        score = GMM.score(x, s)
        dx = euler_maruyama_step(x, score, s, s_next, torch.randn(x.shape, generator=gen, dtype=x.dtype))
        h = ve_g2dt(s, s_next)
        right += ito_increment_ve(dx, score, h)
        flipped += inner(dx, score) + 0.5 * h * inner(score, score)
        x = x + dx
    exact = GMM.log_prob(x, sig[-1])
    err_right = (start + right - exact).abs().mean()
    err_flipped = (start + flipped - exact).abs().mean()
    assert err_right < 1.0 and err_flipped > 10 * err_right, (err_right, err_flipped)


@pytest.mark.parametrize("process", ["ve", "vp"])
def test_increments_are_affine_in_kappa(process):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, 4, 4, generator=gen, dtype=torch.float64) * 3
    drift, track = torch.randn(2, 3, *x.shape, generator=gen, dtype=torch.float64)
    st = step(process, x, 3.0, 2.2, drift, track, torch.randn(x.shape, generator=gen, dtype=x.dtype))
    a, A = st.affine()
    kappa = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    direct = st.increments(st.dy(kappa))
    torch.testing.assert_close(direct, a + torch.einsum("ijb,jb->ib", A, kappa), rtol=1e-10, atol=1e-9)


def test_or_weights_give_the_mixture_score():
    # MATH S2 with T = 1 and exact log-densities: sum_i kappa_i s_i is the score of sum_i softmax(l)_i q_i.
    g1 = GaussianMixture([[-3.0, 1.0], [0.0, 2.0]], [0.5, 0.8], [0.3, 0.7])
    g2 = GaussianMixture([[2.0, -1.0]], 0.6)
    bias = torch.tensor([math.log(3.0), 0.0], dtype=torch.float64)
    w = torch.softmax(bias, 0)
    both = GaussianMixture(torch.cat([g1.means, g2.means]), torch.cat([g1.stds, g2.stds]),
                           torch.cat([w[0] * g1.weights, w[1] * g2.weights]))
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
    sigma = 0.7
    k = or_weights(torch.stack([g1.log_prob(x, sigma), g2.log_prob(x, sigma)]), 1.0, bias)
    u = k[0, :, None] * g1.score(x, sigma) + k[1, :, None] * g2.score(x, sigma)
    torch.testing.assert_close(u, both.score(x, sigma), rtol=1e-10, atol=1e-10)


def test_and_solve_matches_the_two_model_closed_form():
    # MATH S3, two models, VE, no guidance: kappa_1 = 1/2 + (<s_2 - s_1, xi'> + l_1 - l_2) / (g^2 dtau |s_1 - s_2|^2)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(200, 6, generator=gen, dtype=torch.float64)
    scores = torch.randn(2, *x.shape, generator=gen, dtype=torch.float64)
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    s, s_next = 1.3, 1.1
    h = ve_g2dt(s, s_next)
    st = step("ve", x, s, s_next, scores, scores, noise)
    bias = [0.3, -0.2]
    kappa, clipped, degenerate = AndSolver(kappa_range=(-1e6, 1e6), target="increment")(
        *st.affine(), torch.zeros(2, 200, dtype=torch.float64), bias)
    delta = scores[1] - scores[0]
    closed = 0.5 + (inner(delta, math.sqrt(h) * noise) + bias[0] - bias[1]) / (h * inner(delta, delta))
    torch.testing.assert_close(kappa[0], closed, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(kappa.sum(0), torch.ones(200, dtype=torch.float64))
    assert not clipped.any() and not degenerate.any()
    inc = st.increments(st.dy(kappa))
    torch.testing.assert_close(inc[1] - inc[0], torch.full((200,), bias[1] - bias[0], dtype=torch.float64),
                               rtol=0, atol=1e-9)


def test_and_solve_three_models_levels_clipping_and_fallback():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    scores = torch.randn(3, *x.shape, generator=gen, dtype=torch.float64) * 3
    st = step("ve", x, 2.0, 1.5, scores, scores, torch.randn(x.shape, generator=gen, dtype=x.dtype))
    levels = torch.randn(3, 50, generator=gen, dtype=torch.float64) * 0.1
    solver = AndSolver(kappa_range=(-1e6, 1e6))
    kappa, clipped, degenerate = solver(*st.affine(), levels)
    after = levels + st.increments(st.dy(kappa))
    torch.testing.assert_close(after - after[0], torch.zeros_like(after), rtol=0, atol=1e-8)  # levels made equal
    # a narrow range pulls kappa back along its direction, keeping sum 1, and counts it
    k2, clip2, _ = AndSolver(kappa_range=(-0.5, 1.5))(*st.affine(), levels)
    assert clip2.any() and (k2 >= -0.5 - 1e-12).all() and (k2 <= 1.5 + 1e-12).all()
    torch.testing.assert_close(k2.sum(0), torch.ones(50, dtype=torch.float64))
    # a ridge shrinks the solution toward equal weights
    k4, _, _ = AndSolver(kappa_range=(-1e6, 1e6), ridge=10.0)(*st.affine(), levels)
    assert ((k4 - 1 / 3).abs().sum(0) < (kappa - 1 / 3).abs().sum(0)).all()
    # identical scores: no kappa changes anything -> equal weights, counted as degenerate
    same = scores[:1].expand(3, *x.shape)
    st3 = step("ve", x, 2.0, 1.5, same, same, torch.randn(x.shape, generator=gen, dtype=x.dtype))
    k3, _, degen3 = solver(*st3.affine(), levels)
    assert degen3.all()
    torch.testing.assert_close(k3, torch.full_like(k3, 1 / 3))
    # non-finite inputs (a diverged network) fall back too, without raising
    a5, A5 = st.affine()
    A5[:, :, :3] = float("nan")
    k5, _, degen5 = solver(a5, A5, levels)
    assert degen5[:3].all() and not degen5[3:].any() and torch.isfinite(k5).all()


def test_sample_checks_its_arguments():
    x = torch.zeros(4, 2, dtype=torch.float64)
    sig = karras_sigmas(3, 0.1, 1.0)
    with pytest.raises(TypeError, match="list"):
        superpose.sample(GMM, x, sig)
    with pytest.raises(ValueError, match="mode"):
        superpose.sample([GMM], x, sig, mode="xor")
    with pytest.raises(ValueError, match="single"):
        superpose.sample([GMM, GMM], x, sig, mode="single")
    with pytest.raises(ValueError, match="bias"):
        superpose.sample([GMM, GMM], x, sig, mode="or", bias=[0.0])
    out = superpose.sample(torch.nn.ModuleList([GMM, GMM]), x, sig, mode="average")
    assert out.samples.shape == x.shape and out.kappa.shape == (2, 2, 4)
