"""OR (MATH S2) and AND (MATH S3) of analytic Gaussian mixtures against their exact densities."""
import math

import pytest
import torch

import superpose
from fdistill.networks import GaussianMixture
from samplers import karras_sigmas

B = 2000
SE_HALF = math.sqrt(0.25 / B)  # Monte-Carlo standard error of a proportion near 1/2 (0.011)


def _run(models, mode, n_steps=200, seed=0, append_zero=True, **kw):
    gen = torch.Generator().manual_seed(seed)
    sig = karras_sigmas(n_steps, 0.01, 80.0, append_zero=append_zero)
    x0 = torch.randn(B, 2, generator=gen, dtype=torch.float64) * sig[0]
    return superpose.sample(models, x0, sig, mode=mode, generator=gen, **kw), sig


LEFT = GaussianMixture([[-4.0, 2.0], [-4.0, -2.0]], 0.5)
RIGHT = GaussianMixture([[4.0, 2.0], [4.0, -2.0]], 0.5)


def test_or_of_disjoint_mixtures_is_the_equal_weight_union():
    # measured (seed 0, 200 steps): 0.486 on the left; each of the four modes ~1/4
    out, _ = _run([LEFT, RIGHT], "or")
    x = out.samples
    left = (x[:, 0] < 0).double().mean().item()
    assert abs(left - 0.5) < 4 * SE_HALF, left
    per_mode = torch.stack([(x[:, 0].sign() == sx) & (x[:, 1].sign() == sy)
                            for sx in (-1, 1) for sy in (-1, 1)]).double().mean(1)
    assert (per_mode - 0.25).abs().max() < 4 * math.sqrt(0.25 * 0.75 / B), per_mode
    assert out.fallbacks == 0 and torch.isfinite(out.log_q).all()


def test_or_with_bias_gives_the_tilted_weights():
    # kappa = softmax(log q + l) is the mixture with weights softmax(l): l = (log 3, 0) -> 3/4 on the left.
    # measured (seed 0, 200 steps): 0.744
    out, _ = _run([LEFT, RIGHT], "or", bias=[math.log(3.0), 0.0])
    left = (out.samples[:, 0] < 0).double().mean().item()
    assert abs(left - 0.75) < 4 * math.sqrt(0.75 * 0.25 / B), left


# Two models sharing the region around the origin (different weights and widths there) plus one private mode each.
A = GaussianMixture([[-3.0, 1.5], [0.0, 0.0]], [0.5, 0.6], [0.6, 0.4])
C = GaussianMixture([[2.5, -2.0], [0.0, 0.0]], [0.4, 0.5], [0.5, 0.5])


def _and_stats(out, sig):
    x, s_end = out.samples, float(sig[-1])
    gap = (A.log_prob(x, s_end) - C.log_prob(x, s_end)).abs()
    equal = gap < 1
    shared = x.norm(dim=1) < 1
    return (equal & shared).double().mean().item(), gap


def test_and_ends_where_both_densities_are_equal():
    # Measured (seed 0, 200 steps, B = 2000), share with |log q_A - log q_C| < 1 and |x| < 1:
    #   AND 0.992, AND with kappa clipped to [0, 1] 0.787, plain score averaging 0.574.
    # AND's tracked log-densities (accumulated increments) differ by at most 0.39 (median 0.03); the exact gap
    # |log q_A - log q_C| at the end has median 0.30 and 99th percentile 0.55. 62% of the AND solves were clipped
    # to the default range (-10, 11): at large sigma and at the shared mode's centre, where the scores coincide.
    out_and, sig = _run([A, C], "and", append_zero=False)
    out_avg, _ = _run([A, C], "average", append_zero=False)
    out_01, _ = _run([A, C], "and", append_zero=False, and_solver=superpose.AndSolver(kappa_range=(0.0, 1.0)))
    share_and, gap_and = _and_stats(out_and, sig)
    share_avg, _ = _and_stats(out_avg, sig)
    share_01, _ = _and_stats(out_01, sig)
    assert share_and > 0.95 and share_avg < 0.7 and share_and > share_01 + 0.1, (share_and, share_01, share_avg)
    assert gap_and.quantile(0.99) < 1.0
    tracked = (out_and.log_q[0] - out_and.log_q[1]).abs()
    assert tracked.max() < 0.5 and tracked.median() < 0.1, (tracked.max(), tracked.median())
    assert 0 < out_and.fallbacks == out_and.clipped + out_and.degenerate <= out_and.solves == B * (len(sig) - 1)
    k = out_and.kappa
    assert torch.isfinite(k).all() and k.min() >= -10 - 1e-9 and k.max() <= 11 + 1e-9


class _LabelledMixtures(torch.nn.Module):
    """Class-conditional toy: label 0 -> A, 1 -> C, 2 (null) -> their equal mixture."""

    def __init__(self):
        super().__init__()
        both = GaussianMixture(torch.cat([A.means, C.means]), torch.cat([A.stds, C.stds]),
                               torch.cat([A.weights, C.weights]))
        self.parts = torch.nn.ModuleList([A, C, both])

    def forward(self, x, sigma, cond):
        out = torch.stack([p(x, sigma) for p in self.parts])
        return out[cond, torch.arange(x.shape[0])]


def test_denoiser_list_drives_guided_and_tracks_conditional():
    # MATH S3 last sentence, through fdistill's ClassifierFreeGuidance wrapper with one condition per model.
    from fdistill.networks import ClassifierFreeGuidance
    from superpose.models import DenoiserList

    base = _LabelledMixtures()
    cfg = ClassifierFreeGuidance(base, 3.0, null_cond=2)
    labels = [torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.long)]
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 2
    drift, track = DenoiserList([cfg, cfg], labels)(x, 1.5)
    d_u = base(x, 1.5, torch.full((8,), 2))
    for i, c in enumerate(labels):
        torch.testing.assert_close(track[i], base(x, 1.5, c))
        torch.testing.assert_close(drift[i], d_u + 3.0 * (base(x, 1.5, c) - d_u))
    # PromptModels: the same in one batched call of (M + 1) B inputs, conditions given as int labels
    from superpose.models import PromptModels

    drift_p, track_p = PromptModels(base, [0, 1], null_cond=2, guidance_scale=3.0)(x, 1.5)
    torch.testing.assert_close(drift_p, drift)
    torch.testing.assert_close(track_p, track)
    per_model = [torch.zeros(B, dtype=torch.long), torch.ones(B, dtype=torch.long)]
    out, _ = _run([cfg, cfg], "and", n_steps=20, cond=per_model)
    assert torch.isfinite(out.log_q).all() and torch.isfinite(out.samples).all()


@pytest.mark.parametrize("ridge", [0.0, 0.1])
def test_two_model_and_solve_in_closed_form_equals_the_batched_solve(ridge):
    from superpose.kappa import _solve_batched, _solve_scalar

    g = torch.Generator().manual_seed(0)
    G = torch.randn(64, 1, 1, generator=g, dtype=torch.float64)
    G[:4] = torch.tensor([0.0, 1e-12, -1e-12, 2e-10], dtype=torch.float64)[:, None, None]  # near-singular: fall back
    r0 = torch.randn(64, 1, generator=g, dtype=torch.float64)
    finite = torch.ones(64, dtype=torch.bool)
    finite[5] = False
    z1, f1 = _solve_scalar(G, r0, finite, 1e-10, ridge)
    z2, f2 = _solve_batched(G, r0, finite, 1e-10, ridge)
    assert torch.equal(f1, f2) and f1[:3].all() and not f1[3] and f1[5]
    assert torch.allclose(z1, z2, rtol=1e-12, atol=0)
    assert torch.all(z1[f1] == 0)
