"""The Itô density estimator (MATH S1): each model's log-density along any reverse-SDE path, without a divergence.

For a forward SDE ``dx = f dt + g dW`` and any reverse-time path ``dx = u dtau + g dW_bar``,

    d log q_i(x_tau) = <dx, s_i> + [div f + <f - (g^2/2) s_i, s_i>] dtau.

Discretised with the score at the start of the step (Itô), one step ``x -> x + dx`` gives

- VE / EDM (``f = 0``):                    ``dlog q_i = <dx, s_i> - (g^2 dtau / 2) |s_i|^2``
- VP / DDPM (``f = -beta x / 2``, ``g^2 = beta``): ``dlog q_i = <dx, s_i> - (beta dt / 2) (dim + <x, s_i> + |s_i|^2)``

``g^2 dtau`` is the exact integral of ``g^2`` over the step, the same number the Euler–Maruyama step uses
(``samplers.euler_maruyama_step``), so the step and the estimator agree. Everything is returned in float64.
"""
from __future__ import annotations

import math

import torch

from samplers.sampling import ve_g2dt  # noqa: F401  (g^2 dtau of MATH S1, written once in the samplers)


def _flat64(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).to(torch.float64)


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product ``<a, b>`` in float64, ``(B, ...) x (B, ...) -> (B,)``."""
    return (_flat64(a) * _flat64(b)).sum(1)


def vp_beta_dt(sigma: float, sigma_next: float) -> float:
    """VP: ``beta dt = log((1 + sigma^2) / (1 + sigma_next^2))``, the exact integral of ``beta = -d log abar / dt``
    between the VP times with ``sigma_t = sqrt((1 - abar_t) / abar_t)`` (MATH §0)."""
    return math.log((1 + sigma**2) / (1 + sigma_next**2))


def ito_increment_ve(dx: torch.Tensor, score: torch.Tensor, g2dt: float) -> torch.Tensor:
    """MATH S1, VE: ``<dx, s> - (g^2 dtau / 2) |s|^2`` per sample, float64 ``(B,)``.

    ``score`` is the tracked model's score at the start of the step. The ``|s|^2`` term is *subtracted*
    (the Itô correction ``(g^2/2) Laplacian log q`` cancels against the Fokker–Planck term, leaving
    ``-(g^2/2)|s|^2``).
    """
    return inner(dx, score) - 0.5 * g2dt * inner(score, score)


def ito_increment_vp(dx: torch.Tensor, x: torch.Tensor, score: torch.Tensor, beta_dt: float) -> torch.Tensor:
    """MATH S1, VP: ``<dx, s> - (beta dt / 2) (dim + <x, s> + |s|^2)`` per sample, float64 ``(B,)``.

    ``x`` and ``score`` are the VP state ``x_t = sqrt(abar_t) (x0 + sigma eps)`` and its score at the start of the
    step; the result is the increment of the VP density ``log q_t(x_t)``.
    """
    dim = x[0].numel()
    return inner(dx, score) - 0.5 * beta_dt * (dim + inner(x, score) + inner(score, score))


def vp_to_sigma_density(delta_vp: torch.Tensor, dim: int, beta_dt: float) -> torch.Tensor:
    """Turn a VP log-density increment into the increment of the sigma-form density ``log q_sigma(x_sigma)``.

    ``x_sigma = x_t / a`` with ``a = 1/sqrt(1+sigma^2)``, so ``log q_sigma = log q_t + dim log a`` and the step adds
    ``dim (log a' - log a) = dim * beta_dt / 2``.
    """
    return delta_vp + 0.5 * dim * beta_dt
