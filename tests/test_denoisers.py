"""The Denoiser interface and every sigma / prediction-type conversion, checked against closed forms (MATH §0).

All exact checks run in float64 against formulas written here independently of the package code.
"""
import math
import types

import pytest
import torch
from torch import nn

from fdistill.denoiser import expand_sigma, score_from_denoised, sigma_per_sample
from fdistill.networks import (ClassifierFreeGuidance, DiffusersDenoiser, FlowMatchingDenoiser, GaussianMixture,
                               MLPDenoiser, Preconditioned, edm_precond)
from fdistill.networks.diffusers_adapter import denoised_from_prediction, sigma_to_timestep, vp_sigma_table
from fdistill.networks.precond import vp_coefficients

f64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _mixture(event_shape=(3,), k=3, stds="full", seed=0):
    """A random mixture with unequal weights; ``stds`` is 'scalar', 'per_component' or 'full'."""
    g = _gen(seed)
    means = 2 * torch.randn((k, *event_shape), generator=g, dtype=f64)
    s = {"scalar": 0.3,
         "per_component": 0.2 + torch.rand(k, generator=g, dtype=f64),
         "full": 0.2 + torch.rand((k, *event_shape), generator=g, dtype=f64)}[stds]
    return GaussianMixture(means, s, torch.tensor([0.5, 0.3, 0.2][:k], dtype=f64))


def _gaussian_closed_form(mu, s, x, sigma):
    """Independent closed forms for ``N(mu, diag(s^2))`` noised to sigma: D, score, log p (x: ``(B, *shape)``)."""
    var = s**2 + sigma**2
    d = mu + s**2 / var * (x - mu)
    score = (mu - x) / var
    logp = torch.distributions.Normal(mu, var.sqrt()).log_prob(x).reshape(x.shape[0], -1).sum(1)
    return d, score, logp


# ---------------------------------------------------------------------------------------------- GaussianMixture


@pytest.mark.parametrize("shape", [(3,), (2, 3, 3)])
@pytest.mark.parametrize("stds", ["scalar", "per_component", "full"])
def test_single_component_is_a_gaussian(shape, stds):
    gm = _mixture(shape, k=1, stds=stds)
    mu, s = gm.means[0], gm.stds[0]
    x = 3 * torch.randn((5, *shape), generator=_gen(1), dtype=f64)
    for sigma in (0.0, 0.05, 1.0, 30.0):
        d, score, logp = _gaussian_closed_form(mu, s, x, torch.tensor(sigma, dtype=f64))
        torch.testing.assert_close(gm(x, sigma), d, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gm.score(x, sigma), score, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gm.log_prob(x, sigma), logp, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("shape", [(3,), (2, 3, 3)])
@pytest.mark.parametrize("stds", ["scalar", "per_component", "full"])
def test_mixture_log_prob_score_and_tweedie(shape, stds):
    """log p against a sum of per-component Gaussians; score = autograd of log p; D = x + sigma^2 score."""
    gm = _mixture(shape, k=3, stds=stds)
    x = 2 * torch.randn((6, *shape), generator=_gen(2), dtype=f64)
    for sigma in (0.1, 0.7, 5.0):
        sig = torch.tensor(sigma, dtype=f64)
        comps = torch.stack([_gaussian_closed_form(gm.means[k], gm.stds[k], x, sig)[2] + gm.weights[k].log()
                             for k in range(3)], 1)
        torch.testing.assert_close(gm.log_prob(x, sigma), torch.logsumexp(comps, 1), rtol=1e-12, atol=1e-10)

        xg = x.clone().requires_grad_(True)
        (auto_score,) = torch.autograd.grad(gm.log_prob(xg, sigma).sum(), xg)
        torch.testing.assert_close(gm.score(x, sigma), auto_score, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gm(x, sigma), x + sigma**2 * auto_score, rtol=1e-10, atol=1e-10)
        # the mixin's generic score (from D) agrees with the direct one
        torch.testing.assert_close(score_from_denoised(x, gm(x, sigma), sigma), auto_score, rtol=1e-8, atol=1e-8)


def test_log_prob_integrates_to_one_in_1d():
    gm = GaussianMixture(torch.tensor([[-2.0], [0.5], [3.0]]), torch.tensor([0.3, 0.6, 0.2]), [0.2, 0.5, 0.3])
    grid = torch.linspace(-30, 30, 60001, dtype=f64).unsqueeze(1)  # > 9 noised stds either side
    for sigma in (0.0, 0.4, 3.0):
        mass = torch.trapezoid(gm.log_prob(grid, sigma).exp(), grid[:, 0])
        assert abs(mass.item() - 1) < 1e-6, (sigma, mass.item())


def test_sampling_matches_weights_and_components():
    gm = _mixture((2,), k=3, stds="full")
    n = 40_000
    x, labels = gm.sample(n, generator=_gen(3), return_labels=True, dtype=f64)
    assert x.shape == (n, 2) and x.dtype == f64
    freq = torch.bincount(labels, minlength=3).to(f64) / n
    se = (gm.weights * (1 - gm.weights) / n).sqrt()  # binomial standard error, <= 0.0025
    assert ((freq - gm.weights).abs() < 4 * se).all(), (freq, gm.weights)
    for k in range(3):  # per-component mean within 4 standard errors
        xk = x[labels == k]
        se_k = gm.stds[k] / math.sqrt(len(xk))
        assert ((xk.mean(0) - gm.means[k]).abs() < 4 * se_k).all()


def test_sigma_broadcasting():
    gm = _mixture((2, 3, 3), k=3)
    x = torch.randn(4, 2, 3, 3, generator=_gen(4), dtype=f64)
    sig = torch.tensor([0.1, 0.5, 2.0, 10.0], dtype=f64)
    per_sample = torch.cat([gm(x[i:i + 1], sig[i].item()) for i in range(4)])
    torch.testing.assert_close(gm(x, sig), per_sample, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gm(x, sig.reshape(4, 1, 1, 1)), per_sample, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gm(x, torch.tensor(0.5, dtype=f64)), gm(x, 0.5))
    torch.testing.assert_close(gm(x, torch.full((4,), 0.5, dtype=f64)), gm(x, 0.5))
    assert expand_sigma(sig, x).shape == (4, 1, 1, 1)
    assert sigma_per_sample(0.5, x).shape == (4,)
    assert sigma_per_sample(sig.reshape(4, 1, 1, 1), x).shape == (4,)
    with pytest.raises(ValueError):
        gm(x, torch.ones(3, dtype=f64))


# ---------------------------------------------------------------------------------------------- preconditioning


class _ZeroNet(nn.Module):
    def forward(self, x_in, c_noise, cond=None):
        return torch.zeros_like(x_in)


class _RecordingNet(nn.Module):
    """Returns ``sin(x_in) + c_noise`` and remembers its inputs."""

    def forward(self, x_in, c_noise, cond=None):
        self.x_in, self.c_noise = x_in, c_noise
        return torch.sin(x_in) + c_noise.reshape(-1, *([1] * (x_in.ndim - 1)))


def test_edm_precond_with_zero_net_is_the_gaussian_denoiser():
    """F = 0 leaves D = c_skip x = sigma_d^2 / (sigma^2 + sigma_d^2) x: the exact denoiser of N(0, sigma_d^2)."""
    for sd in (0.5, 1.3):
        den = edm_precond(_ZeroNet(), sigma_data=sd)
        exact = GaussianMixture(torch.zeros(1, 2, 4, 4, dtype=f64), sd)
        x = 3 * torch.randn(5, 2, 4, 4, generator=_gen(5), dtype=f64)
        sig = torch.tensor([0.002, 0.3, 1.0, 7.0, 80.0], dtype=f64)
        torch.testing.assert_close(den(x, sig), exact(x, sig), rtol=1e-12, atol=1e-12)


def test_edm_precond_coefficients_reach_the_network():
    net = _RecordingNet()
    den = Preconditioned(net, "edm", sigma_data=0.5)
    x = torch.randn(3, 4, generator=_gen(6), dtype=f64)
    sig = torch.tensor([0.1, 1.0, 20.0], dtype=f64)
    out = den(x, sig)
    s = sig[:, None]
    c_skip, c_out, c_in = 0.25 / (s**2 + 0.25), s * 0.5 / (s**2 + 0.25).sqrt(), 1 / (s**2 + 0.25).sqrt()
    torch.testing.assert_close(net.x_in, c_in * x)
    torch.testing.assert_close(net.c_noise, sig.log() / 4)
    torch.testing.assert_close(out, c_skip * x + c_out * (torch.sin(c_in * x) + sig.log()[:, None] / 4))
    # the mixin's score and eps follow from D
    torch.testing.assert_close(den.score(x, sig), (out - x) / s**2)
    torch.testing.assert_close(den.eps(x, sig), (x - out) / s)


def test_vp_and_ve_precond_noise_labels():
    """EDM's VP: sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) and c_noise = (M - 1) t; VE: log(sigma / 2)."""
    t = torch.linspace(1e-3, 1, 50, dtype=f64)
    sigma = (torch.exp(0.5 * 19.9 * t**2 + 0.1 * t) - 1).sqrt()
    c_skip, c_out, c_in, c_noise = vp_coefficients(sigma)
    torch.testing.assert_close(c_noise, 999 * t, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(c_in, 1 / (1 + sigma**2).sqrt())
    torch.testing.assert_close(c_out, -sigma)
    net = _RecordingNet()
    x = torch.randn(3, 2, generator=_gen(7), dtype=f64)
    sig = torch.tensor([0.1, 1.0, 20.0], dtype=f64)
    out = Preconditioned(net, "ve")(x, sig)
    torch.testing.assert_close(net.c_noise, (sig / 2).log())
    torch.testing.assert_close(out, x + sig[:, None] * (torch.sin(x) + (sig / 2).log()[:, None]))
    with pytest.raises(ValueError, match="edm"):
        Preconditioned(net, "vdm")


# ---------------------------------------------------------------------------------------------- diffusers (VP)


def _ddpm_alphas_cumprod(T=1000):
    betas = torch.linspace(1e-4, 0.02, T, dtype=f64)
    return torch.cumprod(1 - betas, 0)


class _Config(dict):
    """dict with attribute access, like diffusers' FrozenDict."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _ExactVPUNet(nn.Module):
    """Stand-in UNet: outputs the exact epsilon / v / x0 prediction of a Gaussian-mixture data set in the discrete VP
    parameterisation ``x_t = alpha_t x0 + s_t eps`` (alpha_t = sqrt(abar_t), s_t = sqrt(1 - abar_t)).

    The posterior mean is computed in VP coordinates: component k gives ``x_t ~ N(alpha mu_k, alpha^2 s_k^2 + s_t^2)``
    and ``E[x0 | x_t, k] = mu_k + alpha s_k^2 / (alpha^2 s_k^2 + s_t^2) (x_t - alpha mu_k)``. A continuous timestep
    maps to sigma by linear interpolation of log sigma in t (the adapter's convention).
    """

    def __init__(self, mixture, alphas_cumprod, prediction_type):
        super().__init__()
        self.mixture, self.prediction_type = mixture, prediction_type
        self.log_table = vp_sigma_table(alphas_cumprod).log()
        self.config = _Config(cross_attention_dim=None)
        self.calls = []

    @property
    def dtype(self):
        return f64

    def forward(self, x_t, t, class_labels=None, encoder_hidden_states=None):
        self.calls.append(t)
        self.cond = {"class_labels": class_labels, "encoder_hidden_states": encoder_hidden_states}
        t = t.to(f64)
        lo = t.floor().long().clamp(0, len(self.log_table) - 2)
        log_sigma = self.log_table[lo] + (t - lo) * (self.log_table[lo + 1] - self.log_table[lo])
        sigma = log_sigma.exp().reshape(-1, *([1] * (x_t.ndim - 1)))
        alpha, s_t = 1 / (1 + sigma**2).sqrt(), sigma / (1 + sigma**2).sqrt()
        b, gm = x_t.shape[0], self.mixture
        xf = x_t.reshape(b, 1, -1)
        mu = gm.means.reshape(1, gm.num_components, -1)
        s2 = gm.stds.reshape(1, gm.num_components, -1) ** 2
        a, st = alpha.reshape(b, 1, 1), s_t.reshape(b, 1, 1)
        var = a**2 * s2 + st**2
        logj = gm.weights.log() + torch.distributions.Normal(a * mu, var.sqrt()).log_prob(xf).sum(-1)
        post = mu + a * s2 / var * (xf - a * mu)
        x0 = (torch.softmax(logj, 1).unsqueeze(-1) * post).sum(1).reshape(x_t.shape)
        eps = (x_t - alpha * x0) / s_t
        out = {"epsilon": eps, "v_prediction": alpha * eps - s_t * x0, "sample": x0}[self.prediction_type]
        return types.SimpleNamespace(sample=out)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_vp_conversion_is_exact_on_a_mixture(prediction_type):
    gm = _mixture((2, 3, 3), k=3, stds="full", seed=7)
    a = _ddpm_alphas_cumprod()
    unet = _ExactVPUNet(gm, a, prediction_type)
    den = DiffusersDenoiser(unet, a, prediction_type)
    table = vp_sigma_table(a)
    x = 2 * torch.randn(6, 2, 3, 3, generator=_gen(8), dtype=f64)
    # at the table's own sigmas (integer timesteps) ...
    sig = table[torch.tensor([0, 10, 200, 500, 800, 999])]
    torch.testing.assert_close(den(x, sig), gm(x, sig), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(unet.calls[-1], torch.tensor([0.0, 10, 200, 500, 800, 999]), rtol=0, atol=0)
    # ... and between them (timestep passes through float32, hence the looser tolerance)
    sig = torch.exp(torch.empty(6, dtype=f64).uniform_(table[0].log().item(), table[-1].log().item(),
                                                       generator=_gen(9)))
    torch.testing.assert_close(den(x, sig), gm(x, sig), rtol=1e-5, atol=1e-5)


def test_diffusers_condition_routing():
    """Class labels go to ``class_labels``; with a ``cross_attention_dim`` the condition is the text embedding."""
    gm = _mixture((3,), k=2, stds="scalar")
    a = _ddpm_alphas_cumprod()
    x, labels, emb = torch.randn(2, 3, dtype=f64), torch.tensor([0, 1]), torch.randn(2, 5, 8, dtype=f64)
    unet = _ExactVPUNet(gm, a, "epsilon")
    DiffusersDenoiser(unet, a)(x, 1.0, labels)
    assert unet.cond["class_labels"] is labels and unet.cond["encoder_hidden_states"] is None
    unet.config = _Config(cross_attention_dim=8)
    DiffusersDenoiser(unet, a)(x, 1.0, emb)
    assert unet.cond["encoder_hidden_states"] is emb and unet.cond["class_labels"] is None


def test_vp_output_conversion_formulas():
    """MATH §0 formulas on a Gaussian N(0, 1): eps = x sigma / (1+sigma^2) ... checked through the exact x0."""
    x = torch.randn(4, 3, generator=_gen(10), dtype=f64)
    sigma = torch.tensor([0.1, 1.0, 3.0, 50.0], dtype=f64)[:, None]
    d = x / (1 + sigma**2)  # exact denoiser of N(0, I)
    eps = (x - d) / sigma
    alpha, s_t = 1 / (1 + sigma**2).sqrt(), sigma / (1 + sigma**2).sqrt()
    v = alpha * eps - s_t * d
    for kind, pred in (("epsilon", eps), ("v_prediction", v), ("sample", d)):
        torch.testing.assert_close(denoised_from_prediction(x, sigma[:, 0], pred, kind), d)
    with pytest.raises(ValueError, match="epsilon"):
        denoised_from_prediction(x, sigma, eps, "flow")


def test_sigma_to_timestep_exact_at_table_and_monotone():
    table = vp_sigma_table(_ddpm_alphas_cumprod())
    t = sigma_to_timestep(table, table)
    assert torch.equal(t, torch.arange(1000, dtype=f64))
    s = torch.exp(torch.linspace(table[0].log().item(), table[-1].log().item(), 20001, dtype=f64))
    t = sigma_to_timestep(s, table)
    assert (t.diff() >= 0).all() and t[0] == 0 and t[-1] == 999
    idx = torch.searchsorted(table, s).clamp(1, 999)  # t lies between the bracketing timesteps
    assert ((t >= idx - 1) & (t <= idx)).all()
    # out-of-range sigmas clamp to the ends
    assert sigma_to_timestep(torch.tensor([1e-6, 1e6], dtype=f64), table).tolist() == [0.0, 999.0]


def _tiny_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), attention_head_dim=None)
    with torch.no_grad():  # make the output depend on every weight
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet.eval()


def test_diffusers_unet_round_trip(tmp_path):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000)
    den = DiffusersDenoiser(_tiny_unet(), sched.alphas_cumprod, "v_prediction")
    den.save_pretrained(str(tmp_path))
    loaded = DiffusersDenoiser.from_pretrained(str(tmp_path))
    assert loaded.prediction_type == "v_prediction"
    assert torch.equal(loaded.alphas_cumprod, den.alphas_cumprod)  # float64 table survives the trip
    x = torch.randn(3, 1, 8, 8, generator=_gen(11))
    sig = torch.tensor([0.05, 1.0, 40.0])
    with torch.no_grad():
        out, out2 = den(x, sig), loaded(x, sig)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.equal(out2, out)
    with pytest.raises(FileNotFoundError, match="unet"):
        DiffusersDenoiser.from_pretrained(str(tmp_path / "missing"))


def test_diffusers_dtype_cast_keeps_the_noise_table():
    from diffusers import DDPMScheduler

    den = DiffusersDenoiser(_tiny_unet(), DDPMScheduler(num_train_timesteps=1000).alphas_cumprod)
    table = den.sigma_table.clone()
    den = den.to(torch.bfloat16)
    assert den.unet.dtype == torch.bfloat16
    assert den.sigma_table.dtype == f64 and torch.equal(den.sigma_table, table)
    assert den.alphas_cumprod.dtype == f64


# ---------------------------------------------------------------------------------------------- flow matching


class _ExactVelocity(nn.Module):
    """Exact velocity ``E[eps - x0 | x_t]`` of Gaussian data ``N(mu, diag(s^2))`` for ``x_t = (1-t) x0 + t eps``,
    with the time given scaled by ``time_scale``."""

    def __init__(self, mu, s, time_scale):
        super().__init__()
        self.mu, self.s, self.time_scale = mu, s, time_scale

    def forward(self, x_t, t, cond=None):
        t = (t / self.time_scale).reshape(-1, *([1] * (x_t.ndim - 1)))
        var = (1 - t) ** 2 * self.s**2 + t**2
        x0 = self.mu + (1 - t) * self.s**2 / var * (x_t - (1 - t) * self.mu)
        eps = (x_t - (1 - t) * x0) / t
        return eps - x0


@pytest.mark.parametrize("time_scale", [1.0, 1000.0])
def test_flow_matching_conversion_is_exact_on_a_gaussian(time_scale):
    gm = _mixture((2, 4, 4), k=1, stds="full", seed=12)
    den = FlowMatchingDenoiser(_ExactVelocity(gm.means[0], gm.stds[0], time_scale), time_scale=time_scale)
    x = 3 * torch.randn(5, 2, 4, 4, generator=_gen(13), dtype=f64)
    sig = torch.tensor([0.01, 0.5, 1.0, 8.0, 200.0], dtype=f64)
    torch.testing.assert_close(den(x, sig), gm(x, sig), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(den(x, 0.5), gm(x, 0.5), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------- guidance


class _ClassMixture(nn.Module):
    """Toy conditional denoiser: label k is component k of a mixture, label K (or None) the whole mixture.
    Accepts integer labels ``(B,)`` or one-hot embeddings ``(B, 1, K+1)``; counts its calls."""

    def __init__(self, gm):
        super().__init__()
        self.gm, self.calls = gm, 0
        k = gm.num_components
        self.parts = [GaussianMixture(gm.means[i:i + 1], gm.stds[i:i + 1]) for i in range(k)]

    def forward(self, x, sigma, cond=None):
        self.calls += 1
        k = self.gm.num_components
        if cond is None:
            return self.gm(x, sigma)
        labels = cond.argmax(-1).reshape(-1) if cond.is_floating_point() else cond
        sig = expand_sigma(sigma, x)
        out = torch.empty_like(x)
        for i in range(x.shape[0]):
            s_i = sig.reshape(-1)[i if sig.numel() > 1 else 0]
            model = self.gm if labels[i] == k else self.parts[int(labels[i])]
            out[i] = model(x[i:i + 1], s_i)[0]
        return out


def test_classifier_free_guidance_combines_the_branches():
    gm = _mixture((2,), k=3, stds="per_component", seed=14)
    model = _ClassMixture(gm)
    x = 2 * torch.randn(6, 2, generator=_gen(15), dtype=f64)
    sig = torch.tensor([0.2, 0.5, 1.0, 2.0, 3.0, 5.0], dtype=f64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    d_c, d_u = model(x, sig, labels), gm(x, sig)
    for w in (0.0, 2.5, 7.0):
        expected = d_u + w * (d_c - d_u)
        batched = ClassifierFreeGuidance(model, w, null_cond=3)  # null label tensor: one batched call
        model.calls = 0
        torch.testing.assert_close(batched(x, sig, labels), expected, rtol=1e-12, atol=1e-12)
        assert model.calls == 1
        unbatched = ClassifierFreeGuidance(model, w, null_cond=None)  # None as the null: two calls
        model.calls = 0
        torch.testing.assert_close(unbatched(x, sig, labels), expected, rtol=1e-12, atol=1e-12)
        assert model.calls == 2
        torch.testing.assert_close(batched(x, 0.7, labels), unbatched(x, 0.7, labels), rtol=1e-12, atol=1e-12)
    # embeddings: a (1, L, C) null embedding broadcast over the batch
    onehot = torch.nn.functional.one_hot(labels, 4).to(f64).unsqueeze(1)
    null = torch.nn.functional.one_hot(torch.tensor([3]), 4).to(f64).unsqueeze(1)
    emb = ClassifierFreeGuidance(model, 2.5, null_cond=null)
    torch.testing.assert_close(emb(x, sig, onehot), d_u + 2.5 * (d_c - d_u), rtol=1e-12, atol=1e-12)
    # w = 1 is the conditional model in one call; no condition is the unconditional model
    model.calls = 0
    torch.testing.assert_close(ClassifierFreeGuidance(model, 1.0, 3)(x, sig, labels), d_c)
    assert model.calls == 1
    torch.testing.assert_close(ClassifierFreeGuidance(model, 4.0, 3)(x, sig), d_u)
    d_c2, d_u2 = ClassifierFreeGuidance(model, 4.0, 3).unguided(x, sig, labels)
    torch.testing.assert_close(d_c2, d_c)
    torch.testing.assert_close(d_u2, d_u)


# ---------------------------------------------------------------------------------------------- MLP denoiser


def test_mlp_denoiser_save_and_load(tmp_path):
    torch.manual_seed(0)
    net = MLPDenoiser(dim=3, hidden=32, depth=2, emb_dim=16, num_classes=4).eval()
    x = torch.randn(5, 3, generator=_gen(16))
    sig = torch.tensor([0.01, 0.3, 1.0, 10.0, 80.0])
    labels = torch.tensor([0, 1, 2, 3, 4])
    with torch.no_grad():
        out = net(x, sig, labels)
        out_null = net(x, sig)
    net.save_pretrained(str(tmp_path))
    loaded = MLPDenoiser.from_pretrained(str(tmp_path)).eval()
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(net.config)
    with torch.no_grad():
        assert torch.equal(loaded(x, sig, labels), out)
        assert torch.equal(loaded(x, sig), out_null)
        assert len(loaded.features(x, sig, labels)) == 2
    assert torch.equal(out_null[4], out[4])  # label num_classes is the null label (what cond=None uses)
    assert out.shape == x.shape and torch.isfinite(out).all()
