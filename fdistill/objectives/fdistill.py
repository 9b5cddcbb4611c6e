"""f-distill: the per-noise-level f-divergence gradient (MATH F2); DMD / DMD2 with ``rkl``.

    grad_theta D_f(p_sigma || q_sigma) = E[ h(r(x_sigma)) (s_q - s_p)(x_sigma)^T dx_sigma/dtheta ]

In x0 units ``s_q - s_p = (D_fake - D_teacher) / sigma^2``. The loss is the stop-gradient surrogate

    g   = h~ (D_fake - D_teacher) / c(x0, sigma)            (per sample, networks under no_grad)
    L_G = 1/2 ||x0 - sg(x0 - g)||^2 / N  (+ gan_weight * softplus(-l(x_sigma)))

with N = B*C*H*W, the number of elements (DMD2's ``0.5 * mse_loss(..., reduction="mean")``), so
``dL_G/dx0 = g / N``. The published GAN weights (MATH §5: 1e-3, 3e-3) are relative to this mean; a per-sample sum
would shrink the GAN term by C*H*W (3072x on CIFAR-10).

``weighting="dmd"`` (default): ``c = mean_CHW |x0 - D_teacher|`` (DMD); ``"none"``: ``c = sigma^2``, and with
normalisation off the gradient is exactly ``grad_theta D_f / (C*H*W)`` (a positive constant factor).
"""
from __future__ import annotations

import torch

from .. import divergences
from ..denoiser import expand_sigma
from ..noise_levels import KarrasGrid
from ..ratio import estimate_ratio
from .base import GeneratorObjective, flat_sum

WEIGHTINGS = ("dmd", "none")


def fdistill_direction(h: torch.Tensor, d_fake: torch.Tensor, d_teacher: torch.Tensor, x0: torch.Tensor,
                       sigma: torch.Tensor, weighting: str = "dmd") -> torch.Tensor:
    """MATH (F2): ``g = h (D_fake - D_teacher) / c`` with ``c = mean_CHW|x0 - D_teacher|`` (dmd) or ``sigma^2``."""
    hb = h.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    if weighting == "dmd":
        c = (x0 - d_teacher).abs().flatten(1).mean(1).clamp(min=1e-5).reshape(hb.shape)
    elif weighting == "none":
        c = expand_sigma(sigma, x0) ** 2
    else:
        raise ValueError(f"unknown weighting {weighting!r}; valid: {list(WEIGHTINGS)}")
    return hb * (d_fake - d_teacher) / c


class FDistill(GeneratorObjective):
    """The f-distill generator objective (MATH F2) with the normalised ratio of MATH F3.

    Args:
        divergence: a name of ``fdistill.divergences`` (``rkl`` = DMD, ``js``, ``fkl``, ``alpha:<a>`` ...).
        gan_weight: weight of the non-saturating GAN term on the discriminator's logit at ``x_sigma`` (or at the
            term's own levels, ``gan_noise_levels``).
        sigma_min, sigma_max, rho, num_levels, index_range: generator noise levels are drawn uniformly from the
            indices ``index_range[0] .. index_range[1]`` (inclusive) of the ``num_levels``-step Karras grid
            (index 0 = sigma_max), unless ``noise_levels`` is given.
        noise_levels: any distribution of ``fdistill.noise_levels`` (``sample(n, generator, device)``) instead.
        logit_clamp, ratio_clamp: the clamps of ``r = exp(clamp(l))`` (``None`` = off).
        normalize: apply the two-stage normalisation of MATH F3 (needs ``normalizer=`` at call time).
        weighting: ``dmd`` or ``none`` (see the module docstring).
    """

    def __init__(self, divergence="rkl", gan_weight: float = 0.0, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 rho: float = 7.0, num_levels: int = 1000, index_range=(2, 998), logit_clamp: float | None = 10.0,
                 ratio_clamp=(0.1, 20.0), normalize: bool = True, weighting: str = "dmd", noise_levels=None):
        self.divergence = divergences.get(divergence)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; valid: {list(WEIGHTINGS)}")
        self.noise_levels = noise_levels or KarrasGrid(sigma_min, sigma_max, rho, num_levels, index_range)
        self.gan_weight, self.weighting = float(gan_weight), weighting
        self.logit_clamp, self.ratio_clamp, self.normalize = logit_clamp, ratio_clamp, normalize

    def __call__(self, x0, cond, teacher, fake, *, sigma, noise, discriminator=None, normalizer=None,
                 gan_sigma=None, gan_noise=None, gan_transform=None):
        """``(loss, stats)``; ``x0 = G(z)`` carries the graph, ``x_sigma = x0 + sigma * noise``; ``gan_sigma`` /
        ``gan_noise``: the GAN term's own noise levels and noise, ``gan_transform`` its augmentation (``gan_term``),
        else it is on ``x_sigma``."""
        s = expand_sigma(sigma, x0)
        x = x0 + s * noise
        with torch.no_grad():
            d_teacher, d_fake = teacher(x, sigma, cond), fake(x, sigma, cond)
        norm = normalizer if self.normalize else None
        logit = None
        gan_on_x = self.gan_weight > 0 and gan_sigma is None  # else the GAN term reads its own x (gan_term)
        if not self.divergence.constant_h or gan_on_x:  # rkl with its GAN term elsewhere: no pass at x_sigma
            r, logit = estimate_ratio(discriminator, x, sigma, cond, with_grad=gan_on_x,
                                      logit_clamp=self.logit_clamp, ratio_clamp=self.ratio_clamp, normalizer=norm)
        else:
            r = torch.ones(x0.shape[0], device=x0.device, dtype=x0.dtype)
        h_raw = self.divergence.h(r)
        h = norm.normalize_h(h_raw) if norm is not None else h_raw
        g = fdistill_direction(h, d_fake, d_teacher, x0.detach(), sigma, self.weighting)
        loss_dist = 0.5 * ((x0 - (x0 - g).detach()) ** 2).mean()  # mean over all N elements (module docstring)
        loss_gan = self.gan_term(x0, cond, discriminator, logit, gan_sigma, gan_noise, gan_transform)
        loss = loss_dist + self.gan_weight * loss_gan
        stats = {"loss": loss, "loss_dist": loss_dist, "loss_gan": loss_gan, "r_mean": r.mean(),
                 "h_mean": h_raw.mean(), "grad_norm": flat_sum(g**2).sqrt().mean()}
        return loss, {k: v.detach() for k, v in stats.items()}

    def __repr__(self) -> str:
        return (f"FDistill(divergence={self.divergence.name!r}, gan_weight={self.gan_weight}, "
                f"noise_levels={self.noise_levels!r}, weighting={self.weighting!r}, normalize={self.normalize})")
