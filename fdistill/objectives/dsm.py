"""The fake-score loss: EDM denoising score matching on detached generator samples (MATH §4, U3)."""
from __future__ import annotations

import torch

from ..denoiser import expand_sigma
from ..networks.precond import edm_loss_weight, log_normal_sigmas


def fake_score_loss(fake, x0: torch.Tensor, cond=None, generator: torch.Generator | None = None,
                    p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float = 0.5,
                    sigma: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """EDM loss ``E[w(sigma) ||D_fake(x0 + sigma n, sigma) - x0||^2]`` on ``x0.detach()`` (MATH §4).

    ``ln sigma ~ N(p_mean, p_std^2)``, ``w = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2``. The mean runs over every
    element (EDM sums over C, H, W; the difference is the constant factor C*H*W). ``generator`` must live on
    ``x0``'s device. ``sigma`` (B,) and ``noise`` (like x0) may be given instead of drawn (the trainer draws them
    per global batch so that results do not depend on the number of processes).
    """
    x0 = x0.detach()
    if sigma is None:
        sigma = log_normal_sigmas(x0.shape[0], p_mean, p_std, generator=generator, device=x0.device)
    sigma = sigma.to(x0.dtype)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    s = expand_sigma(sigma, x0)
    denoised = fake(x0 + s * noise, sigma, cond)
    return (edm_loss_weight(s, sigma_data) * (denoised - x0) ** 2).mean()
