"""Optimisers and learning-rate schedules shared by every training job (distillation and teacher pretraining).

``adamw(params, lr, tcfg, device)``: AdamW with the config's betas and weight decay (fused on CUDA).
``lr_scale(step, tcfg)``: the multiplier of the base learning rates at ``step`` (0-based):

- linear warm-up over ``warmup_steps``, then
- ``constant``; ``inv_sqrt`` (EDM2: ``1 / sqrt(max(step / lr_ref_steps, 1))``, which depends on the step only, so a
  run and a longer run with the same settings agree on every step they share); or ``cosine`` to 0 at
  ``train.steps`` (ties the schedule to the run's length).
"""
from __future__ import annotations

import math

import torch

LR_SCHEDULES = ("constant", "inv_sqrt", "cosine")


REGRESSION_BETAS = (0.9, 0.999)  # plain supervised regression (warm starts, the probability-flow ceiling)
# ``train.betas: null`` means the task's own: distillation's two-player updates want no momentum (DMD2, SiD: beta1 =
# 0); supervised training (teacher pretraining, the regression ceiling) Adam's usual ones
TASK_BETAS = {"distill": (0.0, 0.99), "teacher": REGRESSION_BETAS, "regress": REGRESSION_BETAS}


def task_betas(tcfg, task: str) -> tuple[float, float]:
    """``train.betas`` if set, else the task's own (``TASK_BETAS``)."""
    if tcfg.betas is not None:
        return tuple(float(b) for b in tcfg.betas)
    if task not in TASK_BETAS:
        raise ValueError(f"no default Adam betas for task {task!r}; valid: {list(TASK_BETAS)}")
    return TASK_BETAS[task]


def adamw(params, lr: float, tcfg, device, task: str = "distill") -> torch.optim.AdamW:
    """AdamW with ``task_betas(tcfg, task)`` and ``tcfg.weight_decay``; fused kernels on CUDA, foreach otherwise."""
    fast = {"fused": True} if torch.device(device).type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(params, lr=lr, betas=task_betas(tcfg, task), weight_decay=tcfg.weight_decay, **fast)


def lr_scale(step: int, tcfg) -> float:
    """Multiplier of the base learning rates at ``step`` (module docstring)."""
    warm = min(1.0, (step + 1) / tcfg.warmup_steps) if tcfg.warmup_steps > 0 else 1.0
    if tcfg.lr_schedule == "inv_sqrt":
        return warm / math.sqrt(max(step / tcfg.lr_ref_steps, 1.0))
    if tcfg.lr_schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * min(step / tcfg.steps, 1.0)))
    if tcfg.lr_schedule == "constant":
        return warm
    raise ValueError(f"unknown train.lr_schedule {tcfg.lr_schedule!r}; valid: {list(LR_SCHEDULES)}")


def set_lr(optimizers_and_rates, scale: float) -> None:
    """Set every param group of each ``(optimizer, base_lr)`` pair to ``base_lr * scale``."""
    for opt, base in optimizers_and_rates:
        for group in opt.param_groups:
            group["lr"] = base * scale
