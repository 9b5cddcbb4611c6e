"""A fake score that is the frozen teacher plus a learned correction (MATH R2).

``D_fake(x, sigma) = D_teacher(x, sigma) + c_out(sigma) F(c_in (x - mu), c_noise)`` with ``F`` an MLP whose output
layer starts at zero: the fake score starts *as* the teacher, exactly, and the generator's direction
``D_fake - D_teacher`` is the correction alone. For an analytic teacher this is what a copy of the teacher's weights
gives a network teacher (DMD's fake-score initialisation): the function it must reach when the student matches,
``D_fake = D_teacher``, is one the network represents exactly (``F = 0``). An MLP fitted to the exact denoiser
represents it only up to its fitting error, and the generator then settles where the fake's biased view of it
equals the teacher, not where it matches the teacher.
"""
from __future__ import annotations

import torch
from torch import nn

from ..denoiser import DenoiserMixin
from .mlp import MLPDenoiser


class TeacherResidual(DenoiserMixin, nn.Module):
    """``D(x, sigma, cond) = teacher(x, sigma, cond) + correction.correction(x, sigma, cond)`` (MATH R2).

    ``teacher`` is frozen (no parameters of it train; gradients still flow to ``x``); ``correction`` is an
    ``MLPDenoiser`` set to output zero (``zero_init=True``) so that the module starts equal to the teacher."""

    def __init__(self, teacher: nn.Module, correction: MLPDenoiser, zero_init: bool = True):
        super().__init__()
        if not isinstance(correction, MLPDenoiser):
            raise TypeError(f"the correction must be an MLPDenoiser (it has a `correction` path without the skip "
                            f"connection); got {type(correction).__name__}")
        self.teacher = teacher.requires_grad_(False)
        self.correction = correction.zero_output() if zero_init else correction

    @property
    def sample_shape(self) -> tuple:
        return self.teacher.sample_shape

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: never in training mode
        return self

    def forward(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        return self.teacher(x, sigma, cond).to(x.dtype) + self.correction.correction(x, sigma, cond)

    def features(self, x, sigma, cond=None) -> list[torch.Tensor]:
        """The correction network's hidden activations (discriminator taps with ``discriminator.features=fake``)."""
        return self.correction.features(x, sigma, cond)

    @property
    def sigma_data(self) -> float:
        return self.correction.config.sigma_data
