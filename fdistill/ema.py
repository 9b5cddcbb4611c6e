"""Exponential moving averages of the generator's weights (several decays, or one half-life in images)."""
from __future__ import annotations

import copy

import torch
from torch import nn


def halflife_decay(batch_size: int, halflife_kimg: float) -> float:
    """Per-step decay whose weight halves after ``halflife_kimg`` thousand images: ``0.5 ** (batch / (1000 h))``."""
    return 0.5 ** (batch_size / (halflife_kimg * 1000.0))


class EMA(nn.Module):
    """Shadow copies of a model, one per decay. ``update(model)`` after each optimiser step.

    Under FSDP2 the EMA is made from the unsharded generator before ``prepare``, and its copies stay whole on every
    process; ``update`` gathers each trainable parameter of the sharded generator (``DTensor.full_tensor()``, a
    collective: every process calls it) and lerps the full tensors, the same arithmetic as without FSDP. Cost: one
    all-gather of the trainable weights per step, and a full EMA copy per process. ``sample``, ``export`` and the
    checkpoint's ``trainer_state.pt`` then need no gather.

    The copies are modules themselves (``self.copies[i]``), so the exported generator is a ready model. Only the
    parameters that are trainable when the EMA is made are averaged: frozen ones (a LoRA generator's base UNet) keep
    their copied values, so a LoRA step averages its adapters, not the 860M frozen weights of SD1.5.
    """

    def __init__(self, model: nn.Module, decays: list[float]):
        super().__init__()
        self.decays = [float(d) for d in decays]
        self.copies = nn.ModuleList(copy.deepcopy(model).requires_grad_(False).eval() for _ in self.decays)
        self.trainable = [i for i, p in enumerate(model.parameters()) if p.requires_grad]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = list(model.parameters())
        src = [_full(params[i].detach()) for i in self.trainable]
        for decay, shadow in zip(self.decays, self.copies):
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
