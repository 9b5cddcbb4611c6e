"""A small MLP denoiser with EDM preconditioning, for low-dimensional data (MATH §0).

It is a diffusers ``ModelMixin`` so generators and fake-score networks built from it save and load with
``save_pretrained`` / ``from_pretrained``.

Scale and location come from the data (MATH §0, "scale from the teacher"): ``sigma_data`` is the data's RMS standard
deviation and ``data_mean`` its mean, and with ``noise_label="relative"`` the noise label is ``ln(sigma /
sigma_data) / 4``. Then ``D(x, sigma) = mu + sigma_d D1((x - mu) / sigma_d, sigma / sigma_d)`` for the same weights
``D1`` at unit scale: a network built for a mixture, the same mixture scaled by ``c`` and shifted by ``m`` compute the
same function in their own units. ``noise_label="edm"`` (EDM's ``ln(sigma) / 4``) is what networks saved before this
option used.

``fourier_features > 0`` adds ``sin`` / ``cos`` of ``2 pi B c_in (x - mu)`` to the input, ``B ~ N(0, fourier_scale^2)``
fixed (drawn from seed 0, saved with the weights): random Fourier features, which let an MLP learn the steep maps
of a one-step generator between separated modes much faster than a linear input layer (spectral bias). On ring8,
an MLP regressed onto the teacher's probability-flow map reached 4.2 % off-mode samples in 4000 steps with 64
features against 10 % without (an earlier session's measurement; the benchmark is bench/gmm_recipe.py).
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


NOISE_LABELS = ("edm", "relative")


class MLPDenoiser(DenoiserMixin, ModelMixin, ConfigMixin):
    """``D(x, sigma, cond)`` for vectors ``(B, dim)``: EDM preconditioning around a residual MLP.

    ``num_classes > 0`` adds a class embedding (``cond`` = integer labels; label ``num_classes`` or ``None``
    is the unconditional/null label used by classifier-free guidance).
    """

    @property
    def sample_shape(self) -> tuple:
        """Shape of one sample (the Denoiser interface): ``(dim,)``."""
        return (int(self.config.dim),)

    @register_to_config
    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, emb_dim: int = 64, num_classes: int = 0,
                 sigma_data: float = 0.5, data_mean: list | None = None, noise_label: str = "edm",
                 fourier_features: int = 0, fourier_scale: float = 1.0):
        super().__init__()
        if noise_label not in NOISE_LABELS:
            raise ValueError(f"unknown noise_label {noise_label!r}; valid: {list(NOISE_LABELS)}")
        if data_mean is not None and len(data_mean) != dim:
            raise ValueError(f"data_mean has {len(data_mean)} entries but dim={dim}")
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be > 0; got {sigma_data}")
        mean = torch.zeros(dim) if data_mean is None else torch.as_tensor(data_mean, dtype=torch.float32)
        self.register_buffer("_mean", mean, persistent=False)
        b = torch.randn(dim, fourier_features, generator=torch.Generator().manual_seed(0)) * fourier_scale
        self.register_buffer("fourier_b", b)
        self.emb = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.class_emb = nn.Embedding(num_classes + 1, hidden) if num_classes > 0 else None
        self.inp = nn.Linear(dim + 2 * fourier_features, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim))

    def features(self, x, sigma, cond=None) -> list[torch.Tensor]:
        """Hidden activations of every block (the discriminator's feature taps, MATH §3)."""
        return self._run(x, sigma, cond)[2]

    @property
    def sigma_min(self) -> float:
        """Lowest noise level for sampling: EDM's 0.002 in units of ``sigma_data`` (0.002 at sigma_data = 0.5)."""
        return 0.004 * self.config.sigma_data

    @property
    def sigma_max(self) -> float:
        """Highest noise level for sampling: EDM's 80 in units of ``sigma_data`` (80 at sigma_data = 0.5)."""
        return 160.0 * self.config.sigma_data

    @property
    def data_mean(self) -> torch.Tensor | None:
        """The data mean ``mu`` this network is centred on (``None`` when built without one)."""
        return None if self.config.data_mean is None else self._mean

    def _input_features(self, u):
        if self.fourier_b.shape[1] == 0:
            return u
        a = 2 * math.pi * u @ self.fourier_b.to(u.dtype)
        return torch.cat([u, a.sin(), a.cos()], dim=1)

    def _run(self, x, sigma, cond):
        sd = self.config.sigma_data
        c_skip, c_out, c_in, _ = edm_coefficients(expand_sigma(sigma, x), sd)
        s = sigma_per_sample(sigma, x)
        c_noise = edm_coefficients(s / sd if self.config.noise_label == "relative" else s, sd)[3]
        mu = self._mean.to(x.dtype)
        x = x - mu
        h = self.inp(self._input_features((c_in * x).to(self.inp.weight.dtype)))
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
        return mu + c_skip * x, c_out * f.to(x.dtype), feats

    def forward(self, x, sigma, cond=None):
        base, learned, _ = self._run(x, sigma, cond)
        return base + learned

    def correction(self, x, sigma, cond=None) -> torch.Tensor:
        """The learned part ``c_out(sigma) F(c_in (x - mu), c_noise)`` of ``D`` alone, without the skip path
        ``mu + c_skip (x - mu)``: what ``fdistill.networks.TeacherResidual`` adds to a teacher."""
        return self._run(x, sigma, cond)[1]

    def zero_output(self) -> "MLPDenoiser":
        """Set the output layer to zero, so that ``correction`` is 0 everywhere until trained; returns ``self``."""
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        return self
