"""A method of one's own, outside the package (``task=method_example:MeanMatching``): the smallest thing the training
loop can run, used by tests/test_methods.py to check what the loop owns (learning-rate schedule and warm-up, EMA,
NaN-step skipping, checkpoints and exact resume) for a method that implements none of it. The walk-through in
docs/architecture.md ("Adding a method") builds a method the same way."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fdistill.ema import EMA, ema_decays
from fdistill.methods import Method
from fdistill.optim import REGRESSION_BETAS, adamw
from fdistill.sources import MixtureSource
from fdistill.step_random import StepRandom
from fdistill.teachers import load_teacher


class Point(torch.nn.Module):
    def __init__(self, dim: int, start: float):
        super().__init__()
        self.x = torch.nn.Parameter(torch.full((dim,), start))

    def forward(self):
        return self.x


@dataclass
class MeanMatchingOptions:
    start: float = 3.0  # every coordinate of the point at step 0


class MeanMatching(Method):
    """Fits one point to the mixture teacher's mean: ``min_p E ||p - x||^2`` over exact teacher samples ``x``."""
    options = MeanMatchingOptions
    phases = ("point_update",)
    progress_keys = ("loss",)
    default_betas = REGRESSION_BETAS

    def __init__(self, cfg, ctx):
        self.cfg, self.ctx, acc = cfg, ctx, ctx.acc
        self.mixture = load_teacher(cfg).mixture
        self.source = MixtureSource(self.mixture, StepRandom(cfg.seed, acc.process_index, acc.num_processes,
                                                             acc.device))
        point = Point(self.mixture.event_shape[0], cfg.method.start).to(acc.device)
        opt = adamw(point.parameters(), cfg.train.lr, cfg.train, acc.device, self.default_betas)
        self.point, self.opt = ctx.prepare("point", point, opt, cfg.train.lr)
        self.ema = EMA(acc.unwrap_model(self.point), ema_decays(cfg.train)).to(acc.device)

    @property
    def ema_source(self):
        return self.ctx.acc.unwrap_model(self.point)

    def point_update(self, step: int) -> dict:
        x, _ = self.source.batch(step, self.ctx.local_batch)
        loss = ((self.point() - x.float()) ** 2).sum(-1).mean()
        norm = self.ctx.update("point", loss, self.point, self.opt)
        return {"loss": loss.detach(), "grad_norm": norm, "lr": torch.tensor(self.opt.param_groups[0]["lr"])}

    def export(self) -> dict:
        return {"point": self.ema.model(0).x.detach().cpu().tolist()}
