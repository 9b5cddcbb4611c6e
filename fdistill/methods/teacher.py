"""Teacher pretraining (``task=teacher``): a small Denoiser trained with EDM's denoising loss (MATH §4), so that
demos have a real learned teacher. One phase, ``denoiser_update``. Same outputs contract as distillation; the result, ``out_dir/teacher``, loads with
``fdistill.saved_models.load_denoiser`` (or as ``teacher.kind=pretrained teacher.path=out_dir/teacher``)."""
from __future__ import annotations

import os

import torch

from .. import objectives
from ..build import build_network
from ..ema import EMA, ema_decays
from ..noise_levels import LogNormal
from ..optim import REGRESSION_BETAS, adamw
from ..scale import DataScale
from ..sources import DatasetSource, MixtureSource, make_dataset
from ..step_random import StepRandom
from . import Method


class TeacherTrainer(Method):
    phases = ("denoiser_update",)
    progress_keys = ("loss",)
    default_betas = REGRESSION_BETAS

    def __init__(self, cfg, ctx):
        self.cfg, self.ctx, acc = cfg, ctx, ctx.acc
        t = cfg.train
        self.device = acc.device
        self.rand = StepRandom(cfg.seed, acc.process_index, acc.num_processes, self.device)
        kind = cfg.data.kind
        if kind in ("auto", "gmm"):
            from ..teachers import load_teacher

            self.mixture = load_teacher(cfg, self.device).mixture
            if self.mixture is None:
                raise ValueError("task=teacher learns from data: use data.kind=digits|folder, or data.kind=gmm with "
                                 "teacher.kind=gmm (samples of that mixture)")
            self.source = MixtureSource(self.mixture, self.rand)
            self.shape, self.num_classes = self.mixture.event_shape, 0
            scale = DataScale.from_mixture(self.mixture)
        elif kind in ("digits", "folder"):
            dataset = make_dataset(cfg.data)
            self.mixture = None
            self.source = DatasetSource(dataset, self.rand, ctx.local_batch)
            self.shape = tuple(dataset.shape)
            self.num_classes = cfg.teacher.num_classes
            scale = None  # images: the networks' own sigma_data (EDM's 0.5 unless network.sigma_data)
        else:
            raise ValueError(f"task=teacher needs data.kind in ['gmm', 'digits', 'folder']; got {kind!r}")
        torch.manual_seed(cfg.seed)
        net = build_network(cfg.network, self.shape, self.num_classes, scale).to(self.device)
        sd = getattr(net, "config", {}).get("sigma_data", 0.5) if scale is not None else 0.5
        self.dsm_levels = LogNormal(sigma_data=sd)  # EDM's training levels in the data's units (MATH §4)
        opt = adamw(net.parameters(), t.lr, t, self.device, self.default_betas)
        self.net, self.opt = ctx.prepare("denoiser", net, opt, t.lr)
        self.net_u = acc.unwrap_model(self.net)
        self.ema = EMA(self.net_u, ema_decays(t)).to(self.device)

    @property
    def ema_source(self):
        return self.net_u

    def denoiser_update(self, step: int) -> dict:
        """One DSM update (MATH §4) on the step's data batch, with 10 % label dropout for a class-conditional
        teacher."""
        acc, b = self.ctx.acc, self.ctx.local_batch
        x0, labels = self.source.batch(step, b)
        if self.num_classes and labels is not None:  # label dropout (10%) so the teacher also learns p(x) for CFG
            drop = self.rand.randint(step, "label-drop", b, 10) == 0
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        cond = labels if self.num_classes else None
        sigma = self.rand.sigmas(step, "sigma", b, self.dsm_levels)
        noise = self.rand.randn(step, "noise", b, self.shape)
        with acc.autocast():
            loss = objectives.fake_score_loss(self.net, x0, cond, sigma=sigma, noise=noise,
                                              sigma_data=self.dsm_levels.sigma_data)
        norm = self.ctx.update("denoiser", loss, self.net, self.opt)
        return {"loss": loss.detach(), "grad_norm": norm}

    def state_dict(self):
        return {"ema": self.ema.state_dict(), "source": self.source.state_dict()}

    def load_state_dict(self, state):
        self.ema.load_state_dict(state["ema"])
        self.source.load_state_dict(state["source"])

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, num_steps: int = 18):
        import samplers

        return samplers.MultiStepGenerator(self.ema.model(0), num_steps=num_steps).sample(n, seed=seed)

    def snapshot(self, step: int) -> str:
        from ..plots import save_samples

        n = 4000 if len(self.shape) == 1 else 64
        ref = self.mixture.sample(n, generator=torch.Generator().manual_seed(1)) if self.mixture is not None else None
        return save_samples(os.path.join(self.cfg.out_dir, "samples", f"step-{step:06d}"), self.sample(n), ref,
                            title=f"teacher step {step} (Heun, 35 evaluations)")

    def export(self) -> dict:
        self.ctx.acc.wait_for_everyone()
        if self.ctx.is_main:
            from ..saved_models import save_denoiser

            save_denoiser(self.ema.model(0), os.path.join(self.cfg.out_dir, "teacher"))
            self.snapshot(self.ctx.steps_done)
        self.ctx.acc.wait_for_everyone()
        return {"teacher": os.path.join(self.cfg.out_dir, "teacher")}


METHOD = TeacherTrainer
