"""Flow-matching velocity models as Denoisers (MATH §0).

``x_t = (1 - t) x0 + t eps`` with velocity ``v = eps - x0`` maps to the sigma form by ``sigma = t / (1 - t)``
(``t = sigma / (1 + sigma)``): the network sees ``x / (1 + sigma)`` at time ``t`` and ``D = x / (1 + sigma) - t v_hat``.
"""
from __future__ import annotations

from torch import nn

from ..denoiser import DenoiserMixin, expand_sigma, sigma_per_sample


def flow_time(sigma):
    """``t = sigma / (1 + sigma)``."""
    return sigma / (1 + sigma)


class FlowMatchingDenoiser(DenoiserMixin, nn.Module):
    """Wrap ``net(x_t, t * time_scale, cond) -> v_hat`` (``time_scale=1000`` for diffusers-style transformers)."""

    def __init__(self, net: nn.Module, time_scale: float = 1.0):
        super().__init__()
        self.net, self.time_scale = net, float(time_scale)

    @property
    def sample_shape(self) -> tuple:
        return self.net.sample_shape

    def forward(self, x, sigma, cond=None):
        s = expand_sigma(sigma, x)
        t = flow_time(s)
        v = self.net(x / (1 + s), flow_time(sigma_per_sample(sigma, x)) * self.time_scale, cond)
        return x / (1 + s) - t * v.to(x.dtype)
