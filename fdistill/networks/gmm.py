"""Analytic Gaussian-mixture teacher: exact denoiser, score, log-density and sampling (MATH §0, §7).

Clean data ``p = sum_k w_k N(mu_k, diag(s_k^2))``. Noised at level sigma, component k becomes
``N(mu_k, diag(s_k^2 + sigma^2))``, so everything is closed form:

- ``log p_sigma(x) = logsumexp_k [log w_k + log N(x; mu_k, s_k^2 + sigma^2)]``
- ``score = sum_k gamma_k (mu_k - x) / (s_k^2 + sigma^2)`` with responsibilities ``gamma_k(x)``
- ``D(x, sigma) = E[x0 | x] = sum_k gamma_k [mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)]``

Works for vectors (``means`` of shape ``(K, d)``) and images (``(K, C, H, W)``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..denoiser import DenoiserMixin, expand_sigma, sigma_per_sample


class GaussianMixture(DenoiserMixin, nn.Module):
    """The exact teacher ``sum_k w_k N(means[k], diag(stds[k]^2))``.

    Args:
        means: ``(K, d)`` or ``(K, C, H, W)``.
        stds: a scalar, ``(K,)`` (isotropic per component) or shaped like ``means`` (diagonal covariance).
        weights: ``(K,)`` non-negative; normalised here. Default: equal.
    """

    def __init__(self, means, stds=1.0, weights=None):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim < 2:
            raise ValueError(f"means must be (K, d) or (K, C, H, W); got shape {tuple(means.shape)}")
        k = means.shape[0]
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.ndim == 0:
            stds = stds.expand(means.shape)
        elif stds.shape == (k,):
            stds = stds.reshape(k, *([1] * (means.ndim - 1))).expand(means.shape)
        elif stds.shape != means.shape:
            raise ValueError(
                f"stds must be a scalar, ({k},) or shaped like means {tuple(means.shape)}; got {tuple(stds.shape)}"
            )
        if (stds <= 0).any():
            raise ValueError("stds must be positive")
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(
            weights, dtype=torch.float64)
        if weights.shape != (k,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights must be ({k},) non-negative with a positive sum; got {weights.tolist()}")
        self.register_buffer("means", means.contiguous())
        self.register_buffer("stds", stds.contiguous())
        self.register_buffer("weights", weights / weights.sum())

    # ------------------------------------------------------------------ shapes
    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def event_shape(self) -> tuple:
        return tuple(self.means.shape[1:])

    @property
    def sample_shape(self) -> tuple:
        """Shape of one sample (the Denoiser interface): the event shape."""
        return self.event_shape

    # ------------------------------------------------------------------ scale (MATH §0: scale from the teacher)
    @property
    def data_mean(self) -> torch.Tensor:
        """The mixture's mean ``sum_k w_k mu_k``, shaped like one sample (float64)."""
        return (self.weights.reshape(-1, *([1] * len(self.event_shape))) * self.means).sum(0)

    @property
    def sigma_data(self) -> float:
        """RMS standard deviation per element about the mean: ``sqrt(mean_i Var[x_i])``, exact
        (``Var[x_i] = sum_k w_k (s_ki^2 + mu_ki^2) - mean_i^2``)."""
        w = self.weights.reshape(-1, *([1] * len(self.event_shape)))
        var = (w * (self.stds**2 + self.means**2)).sum(0) - self.data_mean**2
        return float(var.clamp(min=0).mean().sqrt())

    @property
    def sigma_min(self) -> float:
        """Lowest noise level for sampling: EDM's 0.002 in units of ``sigma_data`` (MATH §0)."""
        return 0.004 * self.sigma_data

    @property
    def sigma_max(self) -> float:
        """Highest noise level for sampling: EDM's 80 in units of ``sigma_data``; samplers start at
        ``data_mean + sigma_max z``."""
        return 160.0 * self.sigma_data

    @property
    def finest_scale(self) -> float:
        """The smallest length scale of the mixture: its smallest component standard deviation."""
        return float(self.stds.min())

    def _flat(self, x):
        return x.reshape(x.shape[0], -1)

    def _component_terms(self, x, sigma):
        """Per-component log-joint ``log w_k + log N(x; mu_k, s_k^2+sigma^2)`` ``(B, K)`` and the variances."""
        xf = self._flat(x).unsqueeze(1)  # (B, 1, d)
        mu = self.means.to(x.dtype).reshape(1, self.num_components, -1)
        s2 = self.stds.to(x.dtype).reshape(1, self.num_components, -1) ** 2
        sig = expand_sigma(sigma, x).reshape(-1, 1, 1)  # (B, 1, 1) or (1, 1, 1)
        var = s2 + sig**2  # (B or 1, K, d)
        diff = xf - mu
        log_n = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)
        return torch.log(self.weights.to(x.dtype)).unsqueeze(0) + log_n, mu, s2, var, xf

    def responsibilities(self, x, sigma) -> torch.Tensor:
        """Posterior component probabilities ``gamma_k(x)`` at noise level sigma, ``(B, K)``."""
        logj, *_ = self._component_terms(x, sigma)
        return torch.softmax(logj, dim=1)

    # ------------------------------------------------------------------ the interface
    def features(self, x, sigma, cond=None) -> list[torch.Tensor]:
        """Discriminator features of the analytic teacher (MATH F3), in the mixture's own units (scale from the
        teacher, MATH §0): ``c_in (x - mu)``, the posterior component probabilities, ``log p_sigma(x) / d + ln
        sigma_data`` and ``ln(sigma / sigma_data) / 4``. All differentiable in x, and the same for a scaled or
        shifted copy of the mixture."""
        s = sigma_per_sample(sigma, x).to(x.dtype)
        d = x[0].numel()
        sd = self.sigma_data
        logj = self._component_terms(x, s)[0]
        c_in = (s**2 + sd**2).rsqrt().reshape(-1, *([1] * (x.ndim - 1)))
        centred = x - self.data_mean.to(x.dtype)
        log_density = torch.logsumexp(logj, 1) / d + math.log(sd)
        return [torch.cat([(c_in * centred).reshape(x.shape[0], -1), torch.softmax(logj, 1),
                           log_density.unsqueeze(1).clamp(min=-50), ((s / sd).log() / 4).unsqueeze(1)], 1)]

    def forward(self, x, sigma, cond=None):
        """Exact ``D(x, sigma) = E[x0 | x_sigma = x]``; ``cond`` is ignored (unconditional teacher)."""
        logj, mu, s2, var, xf = self._component_terms(x, sigma)
        gamma = torch.softmax(logj, dim=1).unsqueeze(-1)
        post = mu + s2 / var * (xf - mu)
        return (gamma * post).sum(1).reshape(x.shape)

    def score(self, x, sigma, cond=None):
        """Exact ``grad log p_sigma(x)``, computed directly (stable also at small sigma)."""
        logj, mu, s2, var, xf = self._component_terms(x, sigma)
        gamma = torch.softmax(logj, dim=1).unsqueeze(-1)
        return (gamma * (mu - xf) / var).sum(1).reshape(x.shape)

    def log_prob(self, x, sigma=0.0):
        """Exact ``log p_sigma(x)``, shape ``(B,)``."""
        logj, *_ = self._component_terms(x, sigma)
        return torch.logsumexp(logj, dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None, return_labels: bool = False,
               dtype=torch.float32):
        """Exact samples of the clean mixture (``sigma = 0``); optionally the component of each."""
        device = self.means.device
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn((n, *self.event_shape), generator=generator, device=device, dtype=torch.float64)
        x = (self.means[labels] + self.stds[labels] * noise).to(dtype)
        return (x, labels) if return_labels else x

    def extra_repr(self) -> str:
        return f"components={self.num_components}, event_shape={self.event_shape}"
