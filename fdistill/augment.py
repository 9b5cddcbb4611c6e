"""Differentiable augmentation of the discriminator's images (MATH F3): a random translation by whole pixels.

A discriminator trained on a small real set learns the set itself (``bench/digits_disc_probe.py``: on 1437 digits
its logits tell its own images from held-out ones, AUC 0.84 after 3200 steps). Translating the real and the
generated images alike, every time either meets the discriminator (its loss and the generator's GAN term), shows it a
new image at each visit; the gradient reaches the generator through the translation (DiffAugment's argument). The
density ratio in ``h(r)`` reads the image untranslated.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def translate(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, max_shift: int) -> torch.Tensor:
    """``x`` ``(B, C, H, W)`` moved by ``dx[i]`` columns and ``dy[i]`` rows (integers in ``[-max_shift, max_shift]``),
    the border pixels repeated into the space uncovered; differentiable in ``x``."""
    if x.ndim != 4:
        raise ValueError(f"translate needs images (B, C, H, W); got shape {tuple(x.shape)}")
    k = int(max_shift)
    if k == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (k, k, k, k), mode="replicate")
    rows = torch.arange(h, device=x.device).reshape(1, h) + k - dy.reshape(b, 1).to(x.device)  # (B, H)
    cols = torch.arange(w, device=x.device).reshape(1, w) + k - dx.reshape(b, 1).to(x.device)  # (B, W)
    batch = torch.arange(b, device=x.device).reshape(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class Translate:
    """The trainer's augmentation: ``aug(x, step, stream)`` translates each image of the step's batch by its own
    shift, drawn from the step's random streams (``fdistill.step_random``: the same on 1 or N processes, and again
    on resume)."""

    def __init__(self, rand, max_shift: int):
        if max_shift < 0:
            raise ValueError(f"discriminator.augment_shift must be >= 0 pixels (0 = off); got {max_shift}")
        self.rand, self.max_shift = rand, int(max_shift)

    def __call__(self, x: torch.Tensor, step: int, stream: str) -> torch.Tensor:
        n, k = x.shape[0], self.max_shift
        dx = self.rand.randint(step, f"augment/{stream}/dx", n, 2 * k + 1) - k
        dy = self.rand.randint(step, f"augment/{stream}/dy", n, 2 * k + 1) - k
        return translate(x, dx, dy, k)
