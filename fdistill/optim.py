"""Optimisers and learning-rate schedules shared by every training job (distillation and teacher pretraining).

``adamw(params, lr, tcfg, device, default_betas)``: AdamW with the config's betas (or the method's own) and weight
decay (fused on CUDA).
``generator_lr(tcfg)``: the distilled generator's base rate (``train.lr``, scaled down for a run longer than
``train.lr_budget_steps``).
``lr_scale(step, tcfg)``: the multiplier of the base learning rates at ``step`` (0-based):

- linear warm-up over ``warmup_steps``, then
- ``constant``; ``inv_sqrt`` (EDM2: ``1 / sqrt(max(step / lr_ref_steps, 1))``, which depends on the step only, so a
  run and a longer run with the same settings agree on every step they share); ``cosine`` to 0 at
  ``train.steps`` (ties the schedule to the run's length); or ``wsd`` (warm-up, stable, decay): constant, then
  linear to 0 over the last ``lr_decay_fraction`` of ``train.steps``. ``wsd`` equals ``constant`` on every step before
  its decay, so a constant run's checkpoint can be continued into the decay (``resume=latest`` with
  ``lr_schedule=wsd`` and the final ``train.steps``) exactly as if the run had used ``wsd`` from the start.
"""
from __future__ import annotations

import math

import torch

LR_SCHEDULES = ("constant", "inv_sqrt", "cosine", "wsd")
DISTILL_BETAS = (0.0, 0.99)  # two-player distillation updates want no momentum (DMD2, SiD: beta1 = 0)
REGRESSION_BETAS = (0.9, 0.999)  # plain supervised training (teacher pretraining)
# regressions onto the teacher's probability-flow map (MATH R1: the ceiling, task=regress, and the students' warm
# start, network.flow_fit_steps): a second moment with a memory of ~100 steps, since their first steps' gradients
# are ~100x their late ones and beta2 = 0.999 would scale the late steps down for thousands of steps
FLOW_MAP_BETAS = (0.9, 0.99)


def adam_betas(tcfg, default: tuple[float, float]) -> tuple[float, float]:
    """``train.betas`` if set, else ``default`` (``train.betas: null`` means the method's own: its ``default_betas``)."""
    if tcfg.betas is not None:
        return tuple(float(b) for b in tcfg.betas)
    return tuple(default)


def adamw(params, lr: float, tcfg, device, default_betas: tuple[float, float] = DISTILL_BETAS) -> torch.optim.AdamW:
    """AdamW with ``adam_betas(tcfg, default_betas)`` and ``tcfg.weight_decay``; fused kernels on CUDA, foreach
    otherwise."""
    fast = {"fused": True} if torch.device(device).type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(params, lr=lr, betas=adam_betas(tcfg, default_betas), weight_decay=tcfg.weight_decay,
                             **fast)


def lr_scale(step: int, tcfg) -> float:
    """Multiplier of the base learning rates at ``step`` (module docstring)."""
    warm = min(1.0, (step + 1) / tcfg.warmup_steps) if tcfg.warmup_steps > 0 else 1.0
    if tcfg.lr_schedule == "inv_sqrt":
        return warm / math.sqrt(max(step / tcfg.lr_ref_steps, 1.0))
    if tcfg.lr_schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * min(step / tcfg.steps, 1.0)))
    if tcfg.lr_schedule == "constant":
        return warm
    if tcfg.lr_schedule == "wsd":
        decay_steps = tcfg.lr_decay_fraction * tcfg.steps
        return warm * min(1.0, max(0.0, (tcfg.steps - step) / decay_steps))
    raise ValueError(f"unknown train.lr_schedule {tcfg.lr_schedule!r}; valid: {list(LR_SCHEDULES)}")


def generator_lr(tcfg) -> float:
    """The distilled generator's base rate: ``train.lr``, times ``lr_budget_steps / steps`` for a run longer than
    ``train.lr_budget_steps`` (when set and not 0). Such a run moves its weights as far in total (the sum of its rates under the
    same schedule shape) as one of ``lr_budget_steps`` steps, and its extra steps average more batches instead."""
    budget = tcfg.lr_budget_steps
    return float(tcfg.lr) if not budget or tcfg.steps <= budget else float(tcfg.lr) * budget / tcfg.steps


def set_lr(optimizers_and_rates, scale: float) -> None:
    """Set every param group of each ``(optimizer, base_lr)`` pair to ``base_lr * scale``."""
    for opt, base in optimizers_and_rates:
        for group in opt.param_groups:
            group["lr"] = base * scale
