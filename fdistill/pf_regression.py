"""The supervised ceiling (``task=regress``): the one-step generator regressed onto the teacher's probability-flow map
(Luhman & Luhman 2021, "knowledge distillation"), with the architecture, warm start, optimiser, EMA and outputs of
distillation. It shows what the generator architecture can represent, so distillation can be read against it.

Each step draws noise ``z`` and its teacher sample ``x = PF(z)``: ``data.sampler`` (default Heun) with
``data.num_steps`` Karras levels over the teacher's range, started at ``mu + sigma_max z`` (MATH §0), and minimises
``mean ||G(z) - x||^2`` with ``G(z) = D_gen(mu + sigma_init z, sigma_init)``. Pairs are drawn fresh every step
(``2 num_steps - 1`` teacher evaluations per sample for Heun): cheap for mixture teachers, the price of an exact
target for networks.
"""
from __future__ import annotations

import torch

from .build import build_teacher, guided, sample_shape, student_networks
from .conditioning import build_conditioner
from .denoiser import one_step
from .ema import EMA, ema_decays
from .optim import adamw, lr_scale, set_lr
from .run import guarded_step
from .scale import teacher_scale
from .sources import StepRandom
from .student import OneStepStudent


class PFRegression(OneStepStudent):
    progress_keys = ("loss",)

    def __init__(self, cfg, ctx):
        import samplers

        self.cfg, self.ctx, acc = cfg, ctx, ctx.acc
        t = cfg.train
        self.device = acc.device
        teacher = build_teacher(cfg.teacher).to(self.device)
        self.raw_teacher = teacher
        self.shape = sample_shape(teacher)
        self.conditioner = build_conditioner(cfg, self.device)
        self.num_classes = self.conditioner.num_classes
        self.scale = teacher_scale(teacher).with_overrides(cfg.network.sigma_data, cfg.objective.sigma_min,
                                                           cfg.objective.sigma_max)
        gen, _ = student_networks(cfg, teacher, self.num_classes, progress=ctx.is_main and cfg.log.progress,
                                  scale=self.scale)
        lo, hi = samplers.generator.sigma_range(teacher)
        self.flow = samplers.MultiStepGenerator(guided(teacher, cfg.teacher, self.conditioner.null_cond),
                                                cfg.data.sampler, cfg.data.num_steps, sigma_min=lo, sigma_max=hi,
                                                num_classes=self.num_classes)
        self.sigma_init = float(cfg.network.sigma_init or self.scale.sigma_max)
        self.gen_mean = None if getattr(gen, "data_mean", None) is None else gen.data_mean.to(self.device)
        self.rand = StepRandom(cfg.seed, acc.process_index, acc.num_processes, self.device)
        gen = gen.to(self.device)
        self.gen, self.opt = acc.prepare(gen, adamw(gen.parameters(), t.lr, t, self.device))
        self.gen_u = acc.unwrap_model(self.gen)
        self.ema = EMA(self.gen_u, ema_decays(t)).to(self.device)
        self.skipped = 0

    def describe(self, step: int) -> dict:
        return {"method": "regress", "target": f"{self.cfg.data.sampler}-{self.flow.sigmas.numel() - 1}"}

    def pairs(self, step: int):
        """The step's noise ``z`` (this process's slice), its conditions and the teacher's samples ``PF(z)``."""
        b = self.ctx.local_batch
        z = self.rand.randn(step, "z/gen", b, self.shape)
        cond = self.conditioner.draw(self.rand, step, "label/gen", b)
        target = self.flow.from_noise(z, cond, self.rand.generator(step, "sampler")).float()
        return z, cond, target

    def step(self, step: int) -> dict:
        acc, t = self.ctx.acc, self.cfg.train
        set_lr(((self.opt, t.lr),), lr_scale(step, t))
        z, cond, target = self.pairs(step)
        with acc.autocast():
            loss = ((one_step(self.gen, z, self.sigma_init, cond, mean=self.gen_mean).float() - target) ** 2).mean()
        norm, skipped = guarded_step(acc, loss, self.gen, self.opt, t.grad_clip)
        self.skipped += int(skipped)
        self.ema.update(self.gen_u, step)
        return {"loss": loss.detach(), "grad_norm_g": norm, "skipped_generator_count": torch.tensor(float(skipped))}

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state["ema"])
