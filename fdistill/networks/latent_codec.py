"""The latent codec of latent diffusion models: a diffusers VAE with its ``scaling_factor`` and ``shift_factor``.

Model latents ``x`` and the VAE's own latents ``z`` are related by ``x = (z - shift_factor) * scaling_factor``
(SD1.5/SDXL have no shift; the SD3 and Flux VAEs do). Every decode and encode in the package goes through here.
"""
from __future__ import annotations

import torch


def _factors(vae) -> tuple[float, float]:
    cfg = vae.config
    return float(cfg.scaling_factor), float(cfg.get("shift_factor") or 0.0)


def to_vae_latents(vae, x: torch.Tensor) -> torch.Tensor:
    """Model latents -> the VAE's: ``x / scaling_factor + shift_factor``."""
    scale, shift = _factors(vae)
    return x / scale + shift


def from_vae_latents(vae, z: torch.Tensor) -> torch.Tensor:
    """The VAE's latents -> model latents: ``(z - shift_factor) * scaling_factor``."""
    scale, shift = _factors(vae)
    return (z - shift) * scale


def decode_latents(vae, x: torch.Tensor) -> torch.Tensor:
    """Model latents -> images in ``[-1, 1]`` (float32), on the VAE's device and in its dtype for the decode."""
    p = next(vae.parameters())
    return vae.decode(to_vae_latents(vae, x).to(p.device, p.dtype)).sample.float().clamp(-1, 1)
