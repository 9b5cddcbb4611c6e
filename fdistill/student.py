"""What every job that trains a one-step generator shares (distillation, the probability-flow regression baseline):
sampling the EMA generator ``G(z) = D_gen(mu + sigma_init z, sigma_init)`` (MATH §0), pictures, the exact mixture
metrics (MATH §7) during and after training, and the export as a ``OneStepPipeline``.

A job using it sets ``cfg``, ``ctx``, ``device``, ``shape``, ``conditioner``, ``num_classes``, ``raw_teacher``,
``teacher_bundle``, ``sigma_init``, ``gen_mean``, ``gen_u`` and ``ema``, and may override ``describe(step)``.
"""
from __future__ import annotations

import json
import os

import torch

from .denoiser import one_step


def resolve_teacher_defaults(cfg, bundle) -> None:
    """Fill the keys left ``null`` that depend on the teacher, in place, from its bundle's ``recipe``
    (``fdistill.teachers``): for an analytic mixture 70 sampler levels and the regression term through the denoiser
    (MATH R1b: README "Longer training"), for a network 18 levels and no regression term (its flow map costs
    2 num_steps - 1 calls per sample)."""
    for key, value in bundle.recipe.items():
        section, name = key.split(".")
        if cfg[section][name] is None:
            cfg[section][name] = value


class OneStepStudent:
    def build_for_teacher(self, cfg, ctx):
        """Set ``cfg``, ``ctx``, ``device``, ``teacher_bundle`` (``fdistill.teachers``), ``shape``, ``conditioner``,
        ``num_classes``, ``scale`` (scale from the teacher, MATH §0; config keys override) and ``sigma_init``; return
        the teacher and the generator and fake-score networks built for it (``fdistill.build.student_networks``)."""
        from .build import sigma_init_of, student_networks
        from .teachers import load_teacher

        self.cfg, self.ctx, self.device = cfg, ctx, ctx.acc.device
        bundle = self.teacher_bundle = load_teacher(cfg, self.device)
        resolve_teacher_defaults(cfg, bundle)
        self.shape = bundle.sample_shape
        self.conditioner = bundle.conditioner
        self.num_classes = bundle.num_classes
        self.scale = bundle.scale(cfg.seed).with_overrides(cfg.network.sigma_data, cfg.objective.sigma_min,
                                                           cfg.objective.sigma_max)
        gen, fake = student_networks(cfg, bundle, progress=ctx.is_main and cfg.log.progress, scale=self.scale)
        self.sigma_init = cfg.network.sigma_init = sigma_init_of(cfg.network, self.scale)
        if ctx.is_main and cfg.network.generator_init:
            print(f"network.generator_init: the generator starts from {cfg.network.generator_init} (no warm start)")
        return bundle.denoiser, gen, fake

    def describe(self, step: int) -> dict:
        """What trained the generator up to ``step``: recorded with its metrics and used in picture titles."""
        return {"method": self.cfg.task}

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, ema_index: int | None = 0) -> torch.Tensor:
        """``n`` one-step samples of the EMA generator ``ema_index`` (``None``: the raw generator).

        The EMA copies are unsharded modules on every process, also under FSDP. The raw generator is sharded under
        FSDP: ``ema_index=None`` then all-gathers its weights and must be called on every process."""
        g = torch.Generator(device=self.device).manual_seed(seed)
        z = torch.randn((n, *self.shape), generator=g, device=self.device)
        cond = self.conditioner.for_samples(n, g, self.device)
        net = self.gen_u if ema_index is None else self.ema.model(ema_index)
        return one_step(net, z, self.sigma_init, cond, mean=self.gen_mean).float()

    @property
    def mixture_teacher(self):
        """The exact mixture when the teacher is one (``fdistill.networks.GaussianMixture``), else ``None``."""
        return self.teacher_bundle.mixture

    def reference(self, n: int):
        gmm = self.mixture_teacher
        return None if gmm is None else gmm.sample(n, generator=torch.Generator().manual_seed(1)).float()

    def snapshot(self, step: int) -> str:
        from .plots import save_samples

        n = 4000 if len(self.shape) == 1 else 64
        gmm = self.mixture_teacher
        title = ", ".join(f"{k}={v}" for k, v in self.describe(step - 1).items())
        return save_samples(os.path.join(self.cfg.out_dir, "samples", f"step-{step:06d}"),
                            self.conditioner.decode(self.sample(n)), self.reference(n),
                            title=f"{title}\nstep {step}", means=None if gmm is None else gmm.means)

    @property
    def measured(self) -> bool:
        """Whether runs of this job are measured: a mixture teacher and the run's ``measures`` hook
        (``RunContext.measures``; ``train.py`` passes ``eval.gmm.gmm_metrics``)."""
        return self.mixture_teacher is not None and self.ctx.measures is not None

    def mixture_metrics(self, step: int) -> dict:
        """Exact metrics (MATH §7) of ``train.eval_samples`` samples of the EMA generator against a mixture teacher,
        by the run's ``measures`` hook."""
        if self.ctx.measures is None:
            raise ValueError("this run has no measures hook: pass measures=eval.gmm.gmm_metrics to fdistill.run.run "
                             "(or RunContext), as train.py does")
        x = self.sample(self.cfg.train.eval_samples, seed=12345)
        metrics = {k: v for k, v in self.ctx.measures(x.double(), self.raw_teacher).items() if k != "mode_mass"}
        metrics.update(self.describe(step - 1), steps=step, seed=self.cfg.seed)
        return metrics

    def evaluate(self, step: int) -> dict:
        """``train.eval_every``: append the exact mixture metrics at ``step`` to ``out_dir/eval.jsonl`` (mixture
        teachers of a measured run; nothing otherwise). Draws no training randomness, so a run's curve is the same
        with or without."""
        if not (self.ctx.is_main and self.measured):
            return {}
        metrics = self.mixture_metrics(step)
        with open(os.path.join(self.cfg.out_dir, "eval.jsonl"), "a") as fh:
            fh.write(json.dumps(metrics) + "\n")
        return metrics

    def export(self) -> dict:
        """Save the first EMA generator as a ``OneStepPipeline`` in ``out_dir/generator`` and each further one
        (``train.ema: [d0, d1, ...]``) in ``out_dir/generator-ema<d>``, to be compared and picked after training; for
        mixture teachers (of a measured run), write exact metrics (MATH §7) to ``final_metrics.json``. Returns the
        metrics."""
        acc, cfg = self.ctx.acc, self.cfg
        acc.wait_for_everyone()
        metrics = {}
        if self.ctx.is_main:
            from .saved_models import one_step_pipeline

            for i, folder in enumerate(ema_export_folders(self.ema.decays)):
                one_step_pipeline(self.ema.model(i), self.sigma_init, self.shape, self.num_classes,
                                  **self.conditioner.pipeline_components()).save_pretrained(
                    os.path.join(cfg.out_dir, folder))
            self.snapshot(self.ctx.steps_done)
            if self.measured:
                metrics = self.mixture_metrics(self.ctx.steps_done)
                with open(os.path.join(cfg.out_dir, "final_metrics.json"), "w") as fh:
                    json.dump(metrics, fh, indent=1)
        acc.wait_for_everyone()
        return metrics


def ema_export_folders(decays: list) -> list[str]:
    """The export folder of each EMA copy: ``generator`` for the first, ``generator-ema<decay>`` for the others (a
    power-function or half-life EMA is always alone, so the others are fixed decays)."""
    return ["generator"] + [f"generator-ema{d:g}" for d in decays[1:]]
