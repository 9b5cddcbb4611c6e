"""The probability-flow regression ceiling (``task=regress``, MATH R1): the one-step generator regressed onto the
teacher's probability-flow map with the architecture, warm start, optimiser, EMA and outputs of distillation
(``fdistill.pf_regression`` has the map and the loss). One phase, ``generator_update``.
"""
from __future__ import annotations

import torch

from ..ema import EMA, ema_decays
from ..optim import FLOW_MAP_BETAS, adamw
from ..pf_regression import flow_loss, flow_sampler, target_chunk
from ..step_random import StepRandom
from ..student import OneStepStudent
from . import Method


class PFRegression(OneStepStudent, Method):
    phases = ("generator_update",)
    progress_keys = ("loss",)
    default_betas = FLOW_MAP_BETAS

    def __init__(self, cfg, ctx):
        acc, t = ctx.acc, cfg.train
        teacher, gen, _ = self.build_for_teacher(cfg, ctx)
        self.raw_teacher = teacher
        self.flow = flow_sampler(teacher, cfg, self.conditioner.null_cond, self.num_classes)
        self.gen_mean = None if getattr(gen, "data_mean", None) is None else gen.data_mean.to(self.device)
        self.rand = StepRandom(cfg.seed, acc.process_index, acc.num_processes, self.device)
        gen = gen.to(self.device)
        opt = adamw(gen.parameters(), cfg.network.flow_fit_lr, t, self.device, self.default_betas)
        self.gen, self.opt = ctx.prepare("generator", gen, opt, cfg.network.flow_fit_lr)
        self.gen_u = acc.unwrap_model(self.gen)
        self.ema = EMA(self.gen_u, ema_decays(t)).to(self.device)
        self.ahead = {}  # step -> (z, PF(z)) drawn ahead of time (pairs)

    def describe(self, step: int) -> dict:
        return {"method": "regress", "target": f"{self.cfg.data.sampler}-{self.flow.sigmas.numel() - 1}"}

    def pairs(self, step: int):
        """The step's noise ``z`` (this process's slice), its conditions and the teacher's samples ``PF(z)``. For an
        unconditional teacher and a deterministic sampler the targets of the next steps (``pf_regression.target_chunk``
        of them) go through one sampler call: the same noises, the same pairs."""
        b = self.ctx.local_batch
        cond = self.conditioner.draw(self.rand, step, "label/gen", b)
        if cond is None and self.flow.deterministic:
            if step not in self.ahead:
                steps = range(step, min(step + target_chunk(b, self.shape), self.cfg.train.steps))
                zs = [self.rand.randn(s, "z/gen", b, self.shape) for s in steps]
                self.ahead = dict(zip(steps, zip(zs, self.flow.from_noise(torch.cat(zs)).float().split(b))))
            z, target = self.ahead.pop(step)
            return z, cond, target
        z = self.rand.randn(step, "z/gen", b, self.shape)
        target = self.flow.from_noise(z, cond, self.rand.generator(step, "sampler")).float()
        return z, cond, target

    @property
    def ema_source(self):
        return self.gen_u

    def generator_update(self, step: int) -> dict:
        """One regression step: ``mean ||G(z) - PF(z)||^2 / sigma_data^2`` on the step's pairs (MATH R1): a loss
        without units, so that ``train.grad_clip`` means the same at every scale of the teacher."""
        z, cond, target = self.pairs(step)
        with self.ctx.acc.autocast():
            loss = flow_loss(self.gen, z, target, self.sigma_init, cond, self.gen_mean) / self.scale.sigma_data ** 2
        norm = self.ctx.update("generator", loss, self.gen, self.opt)
        return {"loss": loss.detach(), "grad_norm_g": norm}


METHOD = PFRegression
