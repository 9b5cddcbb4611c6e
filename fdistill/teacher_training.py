"""Teacher pretraining (``task=teacher``): a small Denoiser trained with EDM's denoising loss (MATH §4), so that
demos have a real learned teacher. Same outputs contract as distillation; the result, ``out_dir/teacher``, loads with
``fdistill.generator_io.load_denoiser`` (or as ``teacher.kind=pretrained teacher.path=out_dir/teacher``)."""
from __future__ import annotations

import os

import torch

from . import objectives
from .build import build_gmm_teacher, build_network
from .ema import EMA, halflife_decay
from .run import guarded_step
from .sources import DatasetSource, MixtureSource, StepRandom, make_dataset
from .trainer import _DSM_SIGMAS


class TeacherTrainer:
    progress_keys = ("loss",)

    def __init__(self, cfg, ctx):
        self.cfg, self.ctx, acc = cfg, ctx, ctx.acc
        t = cfg.train
        self.device = acc.device
        self.rand = StepRandom(cfg.seed, acc.process_index, acc.num_processes, self.device)
        kind = cfg.data.kind
        if kind in ("auto", "gmm"):
            if cfg.teacher.kind != "gmm":
                raise ValueError("task=teacher learns from data: use data.kind=digits|folder, or data.kind=gmm with "
                                 "teacher.kind=gmm (samples of that mixture)")
            self.mixture = build_gmm_teacher(cfg.teacher).to(self.device)
            self.source = MixtureSource(self.mixture, self.rand)
            self.shape, self.num_classes = self.mixture.event_shape, 0
        elif kind in ("digits", "folder"):
            dataset = make_dataset(cfg.data)
            self.mixture = None
            self.source = DatasetSource(dataset, self.rand, ctx.local_batch)
            self.shape = tuple(dataset.shape)
            self.num_classes = cfg.teacher.num_classes
        else:
            raise ValueError(f"task=teacher needs data.kind in ['gmm', 'digits', 'folder']; got {kind!r}")
        torch.manual_seed(cfg.seed)
        net = build_network(cfg.network, self.shape, self.num_classes).to(self.device)
        adam = dict(betas=(0.9, 0.999), weight_decay=t.weight_decay,
                    **({"fused": True} if self.device.type == "cuda" else {}))
        opt = torch.optim.AdamW(net.parameters(), lr=t.lr, **adam)
        self.net, self.opt = acc.prepare(net, opt)
        self.net_u = acc.unwrap_model(self.net)
        decays = [halflife_decay(t.batch_size, t.ema_halflife_kimg)] if t.ema_halflife_kimg > 0 else list(t.ema)
        self.ema = EMA(self.net_u, decays).to(self.device)
        self.skipped = 0

    def step(self, step: int) -> dict:
        acc, t, b = self.ctx.acc, self.cfg.train, self.ctx.local_batch
        scale = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps > 0 else 1.0
        for group in self.opt.param_groups:
            group["lr"] = t.lr * scale
        x0, labels = self.source.batch(step, b)
        if self.num_classes and labels is not None:  # label dropout (10%) so the teacher also learns p(x) for CFG
            drop = self.rand.randint(step, "label-drop", b, 10) == 0
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        cond = labels if self.num_classes else None
        sigma = self.rand.sigmas(step, "sigma", b, _DSM_SIGMAS)
        noise = self.rand.randn(step, "noise", b, self.shape)
        with acc.autocast():
            loss = objectives.fake_score_loss(self.net, x0, cond, sigma=sigma, noise=noise)
        norm, skipped = guarded_step(acc, loss, self.net, self.opt, t.grad_clip)
        self.ema.update(self.net_u)
        return {"loss": loss.detach(), "grad_norm": norm, "skipped_count": torch.tensor(float(skipped))}

    def state_dict(self):
        return {"ema": self.ema.state_dict(), "source": self.source.state_dict()}

    def load_state_dict(self, state):
        self.ema.load_state_dict(state["ema"])
        self.source.load_state_dict(state["source"])

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, num_steps: int = 18):
        import samplers

        g = torch.Generator(device=self.device).manual_seed(seed)
        sigmas = samplers.karras_sigmas(num_steps)
        z = torch.randn((n, *self.shape), generator=g, device=self.device) * float(sigmas[0])
        cond = torch.randint(self.num_classes, (n,), generator=g, device=self.device) if self.num_classes else None
        return samplers.heun(self.ema.model(0), z, sigmas, cond=cond)

    def snapshot(self, step: int) -> str:
        from .plots import save_samples

        n = 4000 if len(self.shape) == 1 else 64
        ref = self.mixture.sample(n, generator=torch.Generator().manual_seed(1)) if self.mixture is not None else None
        return save_samples(os.path.join(self.cfg.out_dir, "samples", f"step-{step:06d}"), self.sample(n), ref,
                            title=f"teacher step {step} (Heun, 35 evaluations)")

    def export(self) -> dict:
        self.ctx.acc.wait_for_everyone()
        if self.ctx.is_main:
            from .generator_io import save_denoiser

            save_denoiser(self.ema.model(0), os.path.join(self.cfg.out_dir, "teacher"))
            self.snapshot(self.ctx.steps_done)
        self.ctx.acc.wait_for_everyone()
        return {"teacher": os.path.join(self.cfg.out_dir, "teacher")}
