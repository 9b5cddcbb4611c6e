"""Preconditioning: wrap a raw network ``F(x_in, c_noise, cond)`` into a Denoiser (MATH §0).

``D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma), cond)``.
The coefficient functions are pure so that tests (and the EDM-network loader) can use them directly.
"""
from __future__ import annotations

import torch
from torch import nn

from ..denoiser import DenoiserMixin, expand_sigma, sigma_per_sample


def edm_coefficients(sigma: torch.Tensor, sigma_data: float = 0.5):
    """MATH §0, EDM: ``c_skip, c_out, c_in, c_noise`` for sigma (any shape)."""
    sd2 = sigma_data**2
    c_skip = sd2 / (sigma**2 + sd2)
    c_out = sigma * sigma_data / (sigma**2 + sd2).sqrt()
    c_in = 1 / (sigma**2 + sd2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def ve_coefficients(sigma: torch.Tensor):
    """EDM's VE preconditioning (Song et al. NCSN++): ``c_skip=1, c_out=sigma, c_in=1, c_noise=log(sigma/2)``."""
    one = torch.ones_like(sigma)
    return one, sigma, one, (0.5 * sigma).log()


def vp_coefficients(sigma: torch.Tensor, beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000):
    """EDM's VP preconditioning (DDPM++): ``c_out=-sigma, c_in=1/sqrt(1+sigma^2), c_noise=(M-1) t(sigma)``."""
    t = ((beta_min**2 + 2 * beta_d * (1 + sigma**2).log()).sqrt() - beta_min) / beta_d
    return torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1).sqrt(), (M - 1) * t


PRECONDITIONINGS = {"edm": edm_coefficients, "ve": ve_coefficients, "vp": vp_coefficients}


def coefficients(kind: str, sigma: torch.Tensor, sigma_data: float = 0.5, **vp_kwargs):
    """``c_skip, c_out, c_in, c_noise`` of the preconditioning ``kind`` (``edm`` in units of ``sigma_data``; ``vp``
    takes EDM's ``beta_d``, ``beta_min``, ``M``)."""
    if kind not in PRECONDITIONINGS:
        raise ValueError(f"unknown preconditioning {kind!r}; valid: {sorted(PRECONDITIONINGS)}")
    if kind == "edm":
        return edm_coefficients(sigma, sigma_data)
    return vp_coefficients(sigma, **vp_kwargs) if kind == "vp" else ve_coefficients(sigma)


def denoiser_output(x: torch.Tensor, c_skip, c_out, f: torch.Tensor) -> torch.Tensor:
    """MATH §0: ``D = c_skip x + c_out F``, in ``x``'s dtype whatever the network's (the one place it is written;
    ``MLPDenoiser`` keeps its two terms apart for the residual fake score)."""
    return c_skip * x + c_out * f.to(x.dtype)


class Preconditioned(DenoiserMixin, nn.Module):
    """A raw network ``net(x_in, c_noise, cond) -> F`` wrapped as a Denoiser with ``kind`` in ``edm|ve|vp``.

    The network is evaluated in its own dtype (e.g. bf16 weights); the skip connection and output are in x's dtype.
    """

    def __init__(self, net: nn.Module, kind: str = "edm", sigma_data: float = 0.5):
        super().__init__()
        if kind not in PRECONDITIONINGS:
            raise ValueError(f"unknown preconditioning {kind!r}; valid: {sorted(PRECONDITIONINGS)}")
        self.net, self.kind, self.sigma_data = net, kind, float(sigma_data)

    @property
    def sample_shape(self) -> tuple:
        return self.net.sample_shape

    def coefficients(self, sigma: torch.Tensor):
        return coefficients(self.kind, sigma, self.sigma_data)

    def forward(self, x, sigma, cond=None):
        c_skip, c_out, c_in, _ = self.coefficients(expand_sigma(sigma, x))
        c_noise = self.coefficients(sigma_per_sample(sigma, x))[3]
        return denoiser_output(x, c_skip, c_out, self.net(c_in * x, c_noise, cond))


def edm_precond(net: nn.Module, sigma_data: float = 0.5) -> Preconditioned:
    """EDM preconditioning around any raw network (MATH §0)."""
    return Preconditioned(net, "edm", sigma_data)


def log_normal_sigmas(n: int, p_mean: float = -1.2, p_std: float = 1.2, generator=None, device=None):
    """EDM training noise levels ``ln sigma ~ N(P_mean, P_std^2)`` (MATH §4, fake-score loss)."""
    return (torch.randn(n, generator=generator, device=device) * p_std + p_mean).exp()


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """EDM loss weight ``(sigma^2 + sigma_d^2) / (sigma sigma_d)^2`` (MATH §4)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2

