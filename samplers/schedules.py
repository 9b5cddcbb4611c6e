"""Noise-level schedules for the samplers (MATH §2: Karras rho-schedule; discrete VP tables)."""
from __future__ import annotations

import numpy as np
import torch


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  append_zero: bool = True) -> torch.Tensor:
    """EDM's schedule: ``num_steps`` values from sigma_max down to sigma_min spaced uniformly in ``sigma^(1/rho)``,
    then a final 0 (float64, as EDM computes it). ``append_zero=False`` leaves the final 0 out."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1; got {num_steps}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max; got {sigma_min}, {sigma_max}")
    i = torch.arange(num_steps, dtype=torch.float64)
    denom = max(num_steps - 1, 1)
    s = (sigma_max ** (1 / rho) + i / denom * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)]) if append_zero else s


def karras_sigma_at(u: torch.Tensor, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
    """Continuous Karras ramp at ``u in [0, 1]`` (0 -> sigma_max, 1 -> sigma_min)."""
    return (sigma_max ** (1 / rho) + u * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def vp_sigmas(num_steps: int, alphas_cumprod, spacing: str = "trailing", append_zero: bool = True) -> torch.Tensor:
    """Sigmas of a discrete VP (DDPM) model at ``num_steps`` of its timesteps, largest first, then 0.

    ``sigma_t = sqrt((1 - abar_t) / abar_t)``; ``spacing`` is ``trailing`` (starts at the last timestep), ``leading``
    or ``linspace`` as in diffusers' schedulers.
    """
    a = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    T = len(a)
    if spacing == "trailing":
        # numpy, exactly as diffusers computes it (torch's arange/linspace round differently at .5 ties)
        t = torch.from_numpy(np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64) - 1)
    elif spacing == "leading":
        t = (torch.arange(num_steps, dtype=torch.float64) * (T // num_steps)).long().flip(0)
    elif spacing == "linspace":
        t = torch.from_numpy(np.linspace(0, T - 1, num_steps).round()[::-1].astype(np.int64))
    else:
        raise ValueError(f"unknown spacing {spacing!r}; valid: ['trailing', 'leading', 'linspace']")
    s = ((1 - a[t]) / a[t]).sqrt()
    return torch.cat([s, s.new_zeros(1)]) if append_zero else s
