"""Uni-Instruct: the gradient of the expanded f-divergence (MATH U1-U3); SiD, SiDA and SIM as configurations.

``J_sigma(theta) = E_{x~q_sigma}[h(r) ||y||^2]``, ``y = s_q - s_p``. With network parameters frozen but their
inputs live, ``grad_theta J_sigma = E[dPhi/dx(x_sigma) dx_sigma/dtheta]`` with (MATH U2, x0 units)

    Phi(x) = (h(r) - r h'(r)) ||y||^2 + 2 h(r) y^T (x0 - D_fake) / sigma^2,    y = (D_fake - D_teacher) / sigma^2

``r(x)`` is a straight-through log-ratio: value from the discriminator (or an exact ``logit_fn``), gradient
``grad_x log r = -y``. Autograd differentiates ``Phi``; ``h'`` comes from ``h`` by autograd.

Estimators (``estimator=``):

- ``"expanded"`` (default): ``Phi`` above. ``zero_mean_term=False`` holds ``r`` fixed in the cross term's ``h(r)``,
  dropping ``-2 r h' (y^T res) y`` (``res = (x0 - D_fake)/sigma^2``). That term is ``b(x_sigma) res`` with
  ``E[res | x_sigma] = 0`` for an exact fake score, so dropping it is unbiased for parameters whose Jacobian
  ``dx_sigma/dtheta`` does not depend on ``z`` (e.g. a location); otherwise it biases the gradient (the tests
  measure it for a scale parameter). ``zero_mean_term=True`` is the full, exact ``grad J_sigma``.
- ``"sim"``: every term of that zero-mean form dropped (SIM, Luo et al. 2024, generalised to any ``h``):
  ``Psi = (h - r h') ||y||^2 - sg(h) ||y||^2 + 2 sg(h y)^T (x0 - D_teacher) / sigma^2``; ``rkl`` gives SIM's
  ``2 sg(D_t - D_f)^T (D_t - x0) / sigma^4``.

``alpha`` (SiD's knob, expanded estimator only): scales the ``||y||^2`` term by ``2 (1 - alpha)``; ``alpha=None`` or
0.5 is exact. ``weighting="sid"`` (default) multiplies ``Phi`` per sample by ``sigma^4 / (2 mean_CHW|x0 - D_teacher|)``
(detached), so ``rkl`` gives exactly SiD's loss
``L_SiD = (D_t - D_f)^T((D_t - x0) - alpha (D_t - D_f)) / mean_CHW|x0 - D_t|``; ``"none"`` leaves ``Phi`` as is
(with normalisation off the gradient is exactly ``grad_theta J_sigma``).
"""
from __future__ import annotations

import torch

from .. import divergences
from ..denoiser import expand_sigma
from ..noise_levels import KarrasRamp
from ..ratio import estimate_ratio
from .base import GeneratorObjective, flat_sum

WEIGHTINGS = ("sid", "none")
ESTIMATORS = ("expanded", "sim")



def straight_through_log_ratio(log_r: torch.Tensor, x: torch.Tensor, grad_log_r: torch.Tensor) -> torch.Tensor:
    """MATH (U2): value ``log_r`` (detached), gradient ``grad_log_r`` (detached) w.r.t. ``x``:
    ``sg(log r) + <x, sg(g)> - sg(<x, g>)``."""
    dot = flat_sum(x * grad_log_r.detach())
    return log_r.detach() + dot - dot.detach()


def uni_instruct_phi(div, r, y, res, alpha=None, zero_mean_term=False):
    """MATH (U2): per-sample ``Phi = c_fgm (h - r h') ||y||^2 + 2 h y^T res`` with ``c_fgm = 2 (1 - alpha)`` (1 when
    ``alpha`` is None); ``r`` is held fixed in the cross term's ``h`` unless ``zero_mean_term``.
    Returns ``(fgm, cross)``."""
    h = div.h(r)
    fgm = (h - r * div.h_prime(r)) * flat_sum(y**2)
    if alpha is not None:
        fgm = 2 * (1 - alpha) * fgm
    h_cross = h if zero_mean_term else h.detach()
    return fgm, 2 * h_cross * flat_sum(y * res)


def sim_psi(div, r, y, x0, d_teacher, s2):
    """SIM form: ``Psi = (h - r h') ||y||^2 - sg(h) ||y||^2 + 2 sg(h y)^T (x0 - D_teacher) / sigma^2``.
    Returns ``(fgm, cross)`` with ``fgm = (h - r h' - sg(h)) ||y||^2``."""
    h = div.h(r)
    fgm = (h - r * div.h_prime(r) - h.detach()) * flat_sum(y**2)
    hb = h.detach().reshape(-1, *([1] * (y.ndim - 1)))
    return fgm, 2 * flat_sum((hb * y).detach() * (x0 - d_teacher) / s2)


class UniInstruct(GeneratorObjective):
    """The Uni-Instruct generator objective (MATH U2/U3) with the normalised ratio of MATH F3.

    Args:
        divergence: a name of ``fdistill.divergences``.
        alpha: ``None`` = exact expanded gradient; a float = SiD's knob (``||y||^2`` term times ``2 (1 - alpha)``).
        zero_mean_term: keep the zero-mean term (see module docstring); ``None`` = keep it (the exact gradient),
            except for ``estimator="sim"``, which drops it by definition.
        gan_weight: weight of the non-saturating GAN term on the discriminator's logit at ``x_sigma`` (or at the
            term's own levels, ``gan_noise_levels``).
        t_max, sigma_min, sigma_max, rho: generator noise levels ``sigma = karras(t)``, ``t ~ U[0, t_max]``, with
            ``t = 0`` at ``sigma_min`` and ``t = 1`` at ``sigma_max`` (``t_max = 0.8`` gives ``sigma <= 24.4``),
            unless ``noise_levels`` is given.
        noise_levels: any distribution of ``fdistill.noise_levels`` instead.
        logit_clamp, ratio_clamp: clamps of ``r = exp(clamp(l))`` (``None`` = off).
        normalize: two-stage normalisation of MATH F3 (needs ``normalizer=`` at call time); stage 2 divides the
            whole ``Phi`` by the global-batch mean of ``h(r)``.
        estimator: ``expanded`` or ``sim``.  weighting: ``sid`` or ``none``.
    """

    def __init__(self, divergence="rkl", alpha: float | None = None, zero_mean_term: bool | None = None,
                 gan_weight: float = 0.0, t_max: float = 0.8, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 rho: float = 7.0, logit_clamp: float | None = 10.0, ratio_clamp=(0.1, 20.0), normalize: bool = True,
                 estimator: str = "expanded", weighting: str = "sid", noise_levels=None):
        self.divergence = divergences.get(divergence)
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; valid: {list(ESTIMATORS)}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; valid: {list(WEIGHTINGS)}")
        if zero_mean_term is None:
            zero_mean_term = estimator != "sim"
        if estimator == "sim" and (alpha is not None or zero_mean_term):
            raise ValueError("estimator='sim' drops the zero-mean terms and has no alpha knob; "
                             "use alpha=None, zero_mean_term=False")
        self.noise_levels = noise_levels or KarrasRamp(sigma_min, sigma_max, rho, t_max)
        self.alpha = None if alpha is None else float(alpha)
        self.zero_mean_term, self.gan_weight = bool(zero_mean_term), float(gan_weight)
        self.logit_clamp, self.ratio_clamp, self.normalize = logit_clamp, ratio_clamp, normalize
        self.estimator, self.weighting = estimator, weighting

    def __call__(self, x0, cond, teacher, fake, *, sigma, noise, discriminator=None, normalizer=None,
                 gan_sigma=None, gan_noise=None, gan_transform=None):
        """``(loss, stats)``; ``x0 = G(z)`` carries the graph; gradients flow through both networks' inputs;
        ``gan_sigma`` / ``gan_noise``: the GAN term's own noise levels and noise, ``gan_transform`` its augmentation
        (``gan_term``)."""
        s = expand_sigma(sigma, x0)
        s2 = s**2
        x = x0 + s * noise
        d_teacher, d_fake = teacher(x, sigma, cond), fake(x, sigma, cond)
        y = (d_fake - d_teacher) / s2  # s_q - s_p
        norm = normalizer if self.normalize else None
        logit = None
        if self.needs_ratio:
            with_grad = self.gan_weight > 0 and gan_sigma is None  # else the GAN term reads its own x (gan_term)
            r_val, logit = estimate_ratio(discriminator, x, sigma, cond, with_grad=with_grad,
                                          logit_clamp=self.logit_clamp, ratio_clamp=self.ratio_clamp,
                                          normalizer=norm)
            r_val = r_val.to(x0.dtype)
        else:
            r_val = torch.ones(x0.shape[0], device=x0.device, dtype=x0.dtype)
        r = straight_through_log_ratio(r_val.log(), x, -y).exp()  # grad_x log r = s_p - s_q = -y
        if self.estimator == "expanded":
            fgm, cross = uni_instruct_phi(self.divergence, r, y, (x0 - d_fake) / s2, self.alpha, self.zero_mean_term)
        else:
            fgm, cross = sim_psi(self.divergence, r, y, x0, d_teacher, s2)
        w = torch.ones_like(fgm)
        if self.weighting == "sid":
            w = (s2.reshape(-1) ** 2 / (2 * (x0 - d_teacher).abs().flatten(1).mean(1).clamp(min=1e-5))).detach()
        h_raw = self.divergence.h(r_val)
        if norm is not None:
            w = w * norm.h_scale(h_raw)
        loss_fgm, loss_cross = (w * fgm).mean(), (w * cross).mean()
        loss_gan = self.gan_term(x0, cond, discriminator, logit, gan_sigma, gan_noise, gan_transform)
        loss = loss_fgm + loss_cross + self.gan_weight * loss_gan
        stats = {"loss": loss, "loss_fgm": loss_fgm, "loss_cross": loss_cross, "loss_gan": loss_gan,
                 "r_mean": r_val.mean(), "h_mean": h_raw.mean(), "y_norm": flat_sum(y**2).sqrt().mean()}
        return loss, {k: v.detach() for k, v in stats.items()}

    def __repr__(self) -> str:
        return (f"UniInstruct(divergence={self.divergence.name!r}, alpha={self.alpha}, estimator={self.estimator!r}, "
                f"zero_mean_term={self.zero_mean_term}, gan_weight={self.gan_weight}, weighting={self.weighting!r})")
