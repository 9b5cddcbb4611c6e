"""A small MLP denoiser with EDM preconditioning, for low-dimensional data (MATH §0).

It is a diffusers ``ModelMixin`` so generators and fake-score networks built from it save and load with
``save_pretrained`` / ``from_pretrained``.
"""
from __future__ import annotations

import math

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from ..denoiser import DenoiserMixin, expand_sigma, sigma_per_sample
from .precond import edm_coefficients


def fourier_embedding(c_noise: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the noise label, ``(B,) -> (B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=c_noise.device, dtype=torch.float32) / half)
    ang = c_noise.float()[:, None] * freqs[None] * 100.0 / 4
    return torch.cat([ang.cos(), ang.sin()], dim=1)


class MLPDenoiser(DenoiserMixin, ModelMixin, ConfigMixin):
    """``D(x, sigma, cond)`` for vectors ``(B, dim)``: EDM preconditioning around a residual MLP.

    ``num_classes > 0`` adds a class embedding (``cond`` = integer labels; label ``num_classes`` or ``None``
    is the unconditional/null label used by classifier-free guidance).
    """

    @register_to_config
    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, emb_dim: int = 64, num_classes: int = 0,
                 sigma_data: float = 0.5):
        super().__init__()
        self.emb = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.class_emb = nn.Embedding(num_classes + 1, hidden) if num_classes > 0 else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim))

    def features(self, x, sigma, cond=None) -> list[torch.Tensor]:
        """Hidden activations of every block (the discriminator's feature taps, MATH §3)."""
        return self._run(x, sigma, cond)[1]

    def _run(self, x, sigma, cond):
        sd = self.config.sigma_data
        c_skip, c_out, c_in, _ = edm_coefficients(expand_sigma(sigma, x), sd)
        c_noise = edm_coefficients(sigma_per_sample(sigma, x), sd)[3]
        h = self.inp((c_in * x).to(self.inp.weight.dtype))
        e = self.emb(fourier_embedding(c_noise, self.config.emb_dim).to(h.dtype))
        if self.class_emb is not None:
            labels = torch.full((x.shape[0],), self.config.num_classes, device=x.device, dtype=torch.long) \
                if cond is None else cond.long()
            e = e + self.class_emb(labels)
        feats = []
        for block in self.blocks:
            h = h + block(h + e)
            feats.append(h)
        f = self.out(h)
        return c_skip * x + c_out * f.to(x.dtype), feats

    def forward(self, x, sigma, cond=None):
        return self._run(x, sigma, cond)[0]
