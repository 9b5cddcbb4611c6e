"""Classifier-free guidance as a Denoiser wrapper (MATH §2): ``D_cfg = D_u + w (D_c - D_u)``."""
from __future__ import annotations

import torch
from torch import nn

from ..denoiser import DenoiserMixin, expand_sigma


def guide(d_uncond: torch.Tensor, d_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance (MATH §2): ``D_cfg = D_u + w (D_c - D_u)``; the one place it is written."""
    return d_uncond + guidance_scale * (d_cond - d_uncond)


class ClassifierFreeGuidance(DenoiserMixin, nn.Module):
    """Guided denoiser. ``null_cond`` is what the wrapped model takes as "no condition": ``None`` (default), a null
    class label (an int) or a null embedding tensor ``(1, L, C)`` / ``(B, L, C)``.

    When the condition and the null condition are both tensors, both branches run in one batched call.
    ``guidance_scale == 1`` is the plain conditional model (one call).
    """

    def __init__(self, denoiser: nn.Module, guidance_scale: float, null_cond=None):
        super().__init__()
        self.denoiser, self.guidance_scale, self.null_cond = denoiser, float(guidance_scale), null_cond

    @property
    def sample_shape(self) -> tuple:
        return self.denoiser.sample_shape

    def _null_for(self, cond, batch: int, device):
        if self.null_cond is None:
            return None
        if isinstance(self.null_cond, int):
            return torch.full((batch,), self.null_cond, dtype=torch.long, device=device)
        nc = self.null_cond.to(device)
        return nc.expand(batch, *nc.shape[1:]) if nc.shape[0] == 1 else nc

    def unguided(self, x, sigma, cond=None):
        """Conditional and unconditional predictions ``(D_c, D_u)``."""
        null = self._null_for(cond, x.shape[0], x.device)
        if cond is None:
            d = self.denoiser(x, sigma, None)
            return d, d
        if torch.is_tensor(null) and torch.is_tensor(cond) and null.shape == cond.shape:
            s = expand_sigma(sigma, x)
            s2 = torch.cat([s, s]) if s.ndim > 0 else s
            d = self.denoiser(torch.cat([x, x]), s2, torch.cat([cond, null.to(cond.dtype)]))
            return d.chunk(2)
        return self.denoiser(x, sigma, cond), self.denoiser(x, sigma, null)

    def forward(self, x, sigma, cond=None):
        if self.guidance_scale == 1.0 or cond is None:
            return self.denoiser(x, sigma, cond)
        d_c, d_u = self.unguided(x, sigma, cond)
        return guide(d_u, d_c, self.guidance_scale)
