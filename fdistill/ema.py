"""Exponential moving averages of the generator's weights: fixed decays, one half-life in images, or EDM2's power
function profile (an average over a fixed *fraction* of training, so it is the same at any training length)."""
from __future__ import annotations

import copy

import torch
from torch import nn


def halflife_decay(batch_size: int, halflife_kimg: float) -> float:
    """Per-step decay whose weight halves after ``halflife_kimg`` thousand images: ``0.5 ** (batch / (1000 h))``."""
    return 0.5 ** (batch_size / (halflife_kimg * 1000.0))


class PowerDecay:
    """EDM2's power-function EMA profile (Karras et al. 2024, eq. 3): at step ``t`` (1-based) the decay is
    ``(1 - 1/t)^(gamma + 1)``, so the average weights step ``tau <= t`` as ``tau^gamma``: its width is a fixed fraction
    of the steps so far (relative std ``sqrt((g+1) / ((g+2)^2 (g+3)))``: 0.10 at ``gamma = 6.94``). Starts as a copy
    (decay 0 at ``t = 1``), needs no warm-up and no bias correction."""

    def __init__(self, gamma: float):
        if gamma <= 0:
            raise ValueError(f"the power-function EMA needs gamma > 0; got {gamma}")
        self.gamma = float(gamma)

    def __call__(self, step: int) -> float:
        t = step + 1
        return (1.0 - 1.0 / t) ** (self.gamma + 1)

    def __repr__(self) -> str:
        return f"PowerDecay(gamma={self.gamma:g})"


def ema_decays(tcfg) -> list:
    """The EMA decays a training config asks for: ``ema_power`` (one power-function EMA), ``ema_halflife_kimg`` (one
    EMA with that half-life) or the fixed ``ema`` decays."""
    if tcfg.ema_power > 0:
        return [PowerDecay(tcfg.ema_power)]
    if tcfg.ema_halflife_kimg > 0:
        return [halflife_decay(tcfg.batch_size, tcfg.ema_halflife_kimg)]
    return [float(d) for d in tcfg.ema]


class EMA(nn.Module):
    """Shadow copies of a model, one per decay. ``update(model)`` after each optimiser step.

    Under FSDP2 the EMA is made from the unsharded generator before ``prepare``, and its copies stay whole on every
    process; ``update`` gathers each trainable parameter of the sharded generator (``DTensor.full_tensor()``, a
    collective: every process calls it) and lerps the full tensors, the same arithmetic as without FSDP. Cost: one
    all-gather of the trainable weights per step, and a full EMA copy per process. ``sample``, ``export`` and the
    checkpoint's ``trainer_state.pt`` then need no gather.

    ``decays``: floats, or callables ``step -> decay`` (``PowerDecay``).

    The copies are modules themselves (``self.copies[i]``), so the exported generator is a ready model. Only the
    parameters that are trainable when the EMA is made are averaged: frozen ones (a LoRA generator's base UNet) keep
    their copied values, so a LoRA step averages its adapters, not the 860M frozen weights of SD1.5.
    """

    def __init__(self, model: nn.Module, decays: list):
        super().__init__()
        self.decays = [d if callable(d) else float(d) for d in decays]
        self.copies = nn.ModuleList(copy.deepcopy(model).requires_grad_(False).eval() for _ in self.decays)
        self.trainable = [i for i, p in enumerate(model.parameters()) if p.requires_grad]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int = 0) -> None:
        """Average in ``model`` after the optimiser step of training step ``step`` (0-based; what a power-function
        decay depends on)."""
        params = list(model.parameters())
        src = [_full(params[i].detach()) for i in self.trainable]
        for profile, shadow in zip(self.decays, self.copies):
            decay = profile(step) if callable(profile) else profile
            shadow_params = list(shadow.parameters())
            dst = [shadow_params[i] for i in self.trainable]
            torch._foreach_lerp_(dst, [s.to(d.dtype) for s, d in zip(src, dst)], 1.0 - decay)
            for b_dst, b_src in zip(shadow.buffers(), model.buffers()):
                b_dst.copy_(_full(b_src))

    def model(self, index: int = 0) -> nn.Module:
        return self.copies[index]


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2-sharded ``DTensor`` (all-gathered); other tensors as they are."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t
