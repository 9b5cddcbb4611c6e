"""Multi-step samplers over any Denoiser (MATH §0). Pure functions: ``(denoiser, x, sigmas, cond=None,
generator=None, progress=False, ...) -> x0``, with ``x`` the starting noise already scaled by ``sigmas[0]``.

A schedule whose last value is 0 ends with a step to 0; one whose last value is positive stops at that sigma.
Guidance comes from wrapping the denoiser (``fdistill.networks.ClassifierFreeGuidance``).
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm


def _steps(sigmas, progress: bool, desc: str):
    pairs = list(zip(sigmas[:-1].tolist(), sigmas[1:].tolist()))
    return tqdm(pairs, desc=desc, disable=not progress, leave=False)


def _noise_like(x, generator):
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _d(denoiser, x, sigma, cond):
    return denoiser(x, torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype), cond)


@torch.no_grad()
def heun(denoiser, x, sigmas, cond=None, generator=None, progress=False, s_churn=0.0, s_tmin=0.0,
         s_tmax=float("inf"), s_noise=1.0):
    """EDM's 2nd-order Heun sampler (Karras et al. 2022, Alg. 2). Deterministic unless ``s_churn > 0``.

    With ``karras_sigmas(18)`` it uses 35 denoiser evaluations (no correction on the final step to 0).
    """
    n = len(sigmas) - 1
    for s, s_next in _steps(sigmas, progress, "heun"):
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(s_hat**2 - s**2) * s_noise * _noise_like(x, generator)
        d = (x - _d(denoiser, x, s_hat, cond)) / s_hat
        x_next = x + (s_next - s_hat) * d
        if s_next > 0:
            d2 = (x_next - _d(denoiser, x_next, s_next, cond)) / s_next
            x_next = x + (s_next - s_hat) * 0.5 * (d + d2)
        x = x_next
    return x


@torch.no_grad()
def euler(denoiser, x, sigmas, cond=None, generator=None, progress=False):
    """First-order probability-flow ODE: ``dx/dsigma = (x - D(x, sigma)) / sigma``."""
    for s, s_next in _steps(sigmas, progress, "euler"):
        x = x + (s_next - s) * (x - _d(denoiser, x, s, cond)) / s
    return x


def ve_g2dt(sigma: float, sigma_next: float) -> float:
    """VE: ``g^2 dtau = sigma^2 - sigma_next^2``, the exact integral of ``g(tau)^2 = d sigma^2 / d tau`` over the
    step ``sigma -> sigma_next`` (``2 sigma |dsigma|`` to first order, MATH S1)."""
    return sigma**2 - sigma_next**2


def euler_maruyama_step(x, score, sigma: float, sigma_next: float, noise):
    """One reverse-SDE step in VE form (MATH S1): ``dx = g^2 dtau * u + sqrt(g^2 dtau) * xi`` (``ve_g2dt``).
    ``score`` is the drift's score ``u`` (any combination of model scores). Returns the increment ``dx``.
    """
    g2 = ve_g2dt(sigma, sigma_next)
    return g2 * score + math.sqrt(g2) * noise


@torch.no_grad()
def euler_maruyama(denoiser, x, sigmas, cond=None, generator=None, progress=False, denoise_last=True):
    """Reverse-SDE Euler–Maruyama sampler (VE). A final step to sigma 0 returns ``D(x, sigma_last)``
    (``denoise_last=True``), the usual noise-free ending."""
    for s, s_next in _steps(sigmas, progress, "euler-maruyama"):
        if s_next == 0 and denoise_last:
            return _d(denoiser, x, s, cond)
        score = (_d(denoiser, x, s, cond) - x) / s**2
        x = x + euler_maruyama_step(x, score, s, s_next, _noise_like(x, generator))
    return x


@torch.no_grad()
def ddim(denoiser, x, sigmas, cond=None, generator=None, progress=False, eta=0.0):
    """DDIM (Song et al. 2021) in sigma form: ``x' = D + sigma_down * eps_hat + sigma_up * xi`` with
    ``sigma_up = eta * sigma' * sqrt(1 - sigma'^2 / sigma^2)``, ``sigma_down = sqrt(sigma'^2 - sigma_up^2)``.
    ``eta = 0`` is deterministic DDIM; ``eta = 1`` is ancestral (DDPM-like) sampling."""
    for s, s_next in _steps(sigmas, progress, "ddim"):
        den = _d(denoiser, x, s, cond)
        eps = (x - den) / s
        sigma_up = eta * s_next * math.sqrt(max(1 - s_next**2 / s**2, 0.0))
        sigma_down = math.sqrt(max(s_next**2 - sigma_up**2, 0.0))
        x = den + sigma_down * eps
        if sigma_up > 0:
            x = x + sigma_up * _noise_like(x, generator)
    return x


def one_step(denoiser, x, sigma: float, cond=None):
    """One-step generation (MATH §0): ``G(z) = D(sigma_init * z, sigma_init)`` with ``x = sigma_init * z``."""
    return _d(denoiser, x, float(sigma), cond)
