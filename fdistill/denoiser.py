"""The Denoiser interface every teacher, generator and fake-score network exposes (MATH §0).

A denoiser is called as ``D(x, sigma, cond=None) -> x0_hat``: the estimate of ``E[x0 | x_sigma = x]`` in the
variance-exploding form ``x_sigma = x0 + sigma * eps``. ``sigma`` is a float or a tensor broadcastable to the batch
(shape ``()``, ``(B,)`` or ``(B, 1, ..., 1)``). ``cond`` is ``None``, integer class labels ``(B,)``, or a conditioning
tensor (text embeddings ``(B, L, C)``). The score follows from it: ``s(x) = (D(x, sigma) - x) / sigma**2``. A
denoiser also states ``sample_shape``, the shape of one sample (``(d,)`` or ``(C, H, W)``), so that samplers and
pipelines need not ask what kind of network it is.
"""
from __future__ import annotations

import torch
from samplers.sampling import one_step as denoise_once  # samplers knows only this interface: no cycle

# what a diffusion network's raw output may be (the noise, the velocity or the clean sample), from which a Denoiser
# recovers D(x, sigma) (MATH §0)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def expand_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    """Return ``sigma`` as a tensor of shape ``(B, 1, ..., 1)`` (or ``()``) that broadcasts against ``x``.

    Accepts a Python number, a 0-d tensor, a ``(B,)`` tensor, or a tensor already shaped ``(B, 1, ..., 1)``.
    """
    if not torch.is_tensor(sigma):
        return torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    sigma = sigma.to(device=x.device, dtype=x.dtype if sigma.is_floating_point() else x.dtype)
    if sigma.ndim == 0:
        return sigma
    if sigma.ndim == 1:
        if sigma.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"sigma has {sigma.shape[0]} entries but the batch has {x.shape[0]}")
        return sigma.reshape(-1, *([1] * (x.ndim - 1)))
    if sigma.ndim == x.ndim:
        return sigma
    raise ValueError(
        f"sigma of shape {tuple(sigma.shape)} does not broadcast to x of shape {tuple(x.shape)}; "
        "pass a number, a (B,) tensor or a (B, 1, ..., 1) tensor"
    )


def sigma_per_sample(sigma, x: torch.Tensor) -> torch.Tensor:
    """``sigma`` as a flat ``(B,)`` tensor (what network embeddings want)."""
    s = expand_sigma(sigma, x)
    return s.reshape(-1).expand(x.shape[0]) if s.numel() == 1 else s.reshape(x.shape[0])


def score_from_denoised(x: torch.Tensor, denoised: torch.Tensor, sigma) -> torch.Tensor:
    """MATH §0: ``s(x) = (D(x, sigma) - x) / sigma**2``."""
    s = expand_sigma(sigma, x)
    return (denoised - x) / s**2


class DenoiserMixin:
    """Gives any module with ``forward(x, sigma, cond=None) -> x0_hat`` the rest of the interface."""

    def score(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        """Score ``grad log p_sigma(x) = (D(x, sigma) - x) / sigma**2`` (MATH §0)."""
        return score_from_denoised(x, self(x, sigma, cond), sigma)

    def eps(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        """Predicted noise ``(x - D(x, sigma)) / sigma``."""
        return (x - self(x, sigma, cond)) / expand_sigma(sigma, x)


def one_step(denoiser, z: torch.Tensor, sigma_init: float, cond=None, mean: torch.Tensor | None = None):
    """The one-step generator map (MATH §0): ``G(z) = D(mu + sigma_init z, sigma_init, cond)``.

    ``mean`` is the data mean ``mu`` the generator is centred on (``denoiser.data_mean``; ``None`` = 0, as for
    images). Pass it explicitly when ``denoiser`` is a wrapper (DDP) that does not expose the attribute. The
    denoiser call is the samplers' ``one_step`` (one place for ``D(x, sigma_init)``); this adds the centring."""
    if mean is None:
        mean = getattr(denoiser, "data_mean", None)
    x = sigma_init * z if mean is None else mean.to(z.dtype) + sigma_init * z
    return denoise_once(denoiser, x, float(sigma_init), cond)
