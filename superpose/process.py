"""One Euler–Maruyama step of the reverse SDE, written affine in the mixing weights kappa (MATH S1, S3).

With the step's noise drawn first, the increment in the process's coordinates is ``dy = b + sum_j kappa_j c_j`` and
every model's log-density increment is affine in kappa too: ``dlog q_i = a_i + sum_j A_ij kappa_j`` with
``a_i = increment_i(b)`` and ``A_ij = <c_j, s_i>``.

- ``ve`` (default): state ``y = x`` (the sigma form), ``g^2 dtau = sigma^2 - sigma'^2``, ``b = sqrt(g^2 dtau) xi``,
  ``c_j = g^2 dtau u_j``.
- ``vp``: state ``y = x / sqrt(1 + sigma^2)`` (the DDPM form), score ``s_y = sqrt(1 + sigma^2) s``,
  ``b = (beta dt / 2) y + sqrt(beta dt) xi``, ``c_j = beta dt u_j``.

Increments are always reported for the sigma-form densities ``log q_sigma(x_sigma)`` (VP increments are converted),
so the two processes give comparable numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .ito import inner, ito_increment_ve, ito_increment_vp, ve_g2dt, vp_beta_dt, vp_to_sigma_density

PROCESSES = ("ve", "vp")


@dataclass
class AffineStep:
    """``dy = b + sum_j kappa_j c_j``; ``increments(dy) -> (M, B)``; ``next_x(dy)`` maps back to the sigma form."""

    b: torch.Tensor
    c: torch.Tensor  # (M, B, ...)
    increments: Callable[[torch.Tensor], torch.Tensor]
    next_x: Callable[[torch.Tensor], torch.Tensor]
    track: torch.Tensor  # (M, B, ...) tracked scores in the process's coordinates

    def dy(self, kappa: torch.Tensor) -> torch.Tensor:
        """``b + sum_j kappa_j c_j`` for ``kappa`` of shape ``(M, B)``."""
        k = kappa.to(self.c.dtype).reshape(*kappa.shape, *([1] * (self.c.ndim - 2)))
        return self.b + (k * self.c).sum(0)

    def affine(self):
        """``(a, A)``: ``a (M, B) = increments(b)``, ``A (M, M, B)`` with ``A_ij = <c_j, s_i>`` (float64)."""
        a = self.increments(self.b)
        m = self.c.shape[0]
        A = torch.stack([torch.stack([inner(self.c[j], self.track[i]) for j in range(m)]) for i in range(m)])
        return a, A


def step(process: str, x, sigma: float, sigma_next: float, drift_scores, track_scores, noise) -> AffineStep:
    """The step ``sigma -> sigma_next`` from ``x`` (sigma form) with model scores ``(M, B, ...)`` and noise ``xi``."""
    if process == "ve":
        h = ve_g2dt(sigma, sigma_next)

        def increments(dy):
            return torch.stack([ito_increment_ve(dy, s, h) for s in track_scores])

        return AffineStep(b=math.sqrt(h) * noise, c=h * drift_scores, increments=increments,
                          next_x=lambda dy: x + dy, track=track_scores)
    if process == "vp":
        h = vp_beta_dt(sigma, sigma_next)
        scale, scale_next = math.sqrt(1 + sigma**2), math.sqrt(1 + sigma_next**2)
        y = x / scale
        track = track_scores * scale
        dim = x[0].numel()

        def increments(dy):
            return torch.stack([vp_to_sigma_density(ito_increment_vp(dy, y, s, h), dim, h) for s in track])

        return AffineStep(b=0.5 * h * y + math.sqrt(h) * noise, c=h * scale * drift_scores, increments=increments,
                          next_x=lambda dy: (y + dy) * scale_next, track=track)
    raise ValueError(f"unknown process {process!r}; valid: {list(PROCESSES)}")
