"""Teacher bundles: one module per teacher kind (``teacher.kind``), each returning a ``TeacherBundle`` that answers
what the rest of the package asks of a teacher, so that nothing outside these modules asks what kind a teacher is.

A kind's module defines ``KINDS`` (the ``teacher.kind`` names it serves), ``KEYS`` (the ``teacher.*`` keys it reads
besides ``kind`` and ``guidance_scale``: any other set key is refused), ``load(cfg, device) -> TeacherBundle`` and
optionally ``validate(cfg)`` (config checks that raise ``ValueError``), ``DATA_KEYS`` (``data.*`` keys it reads
whatever ``data.kind``) and ``ANALYTIC = True`` (an exact formula: students are built from ``network.arch``). ``docs/architecture.md`` ("Adding a teacher
kind") lists the files a new kind touches: its module here and its test.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # importing this package stays light (fdistill.config reads KIND_MODULES)
    import torch
    from torch import nn

# teacher.kind -> the module of this package that serves it (imported only when that kind is used)
KIND_MODULES = {"gmm": "mixture", "pretrained": "saved", "edm": "saved", "diffusers": "diffusers_unet",
                "sd": "stable_diffusion"}

# defaults of the keys a config leaves null that depend on the teacher: a network's probability-flow map costs
# 2 num_steps - 1 evaluations per sample, so networks get 18 sampler levels and no regression term (the mixture
# module sets its own recipe), and the generator keeps its rate however long the run (no rate budget)
NETWORK_RECIPE = {"data.num_steps": 18, "objective.regression_weight": 0.0, "objective.regression_sigma": 0.0,
                  "train.lr_budget_steps": 0}


@dataclass
class TeacherBundle:
    """Everything the trainer, the pipeline and the benchmarks ask of a teacher.

    ``denoiser``: the frozen, unguided Denoiser (``fdistill.denoiser``; guidance is applied by the job);
    ``conditioner``: what the generator is conditioned on (``fdistill.conditioning``; for text models also the
    prompt encoding, the VAE and the export's components); ``mixture``: the exact distribution when the teacher is an
    analytic mixture (exact samples and metrics, the residual fake score), else ``None``; ``recipe``: defaults of the
    teacher-dependent keys a config leaves null; ``flow_fit_steps``: the default flow-map warm start (0: none)."""

    kind: str
    denoiser: "nn.Module"
    conditioner: object
    mixture: Optional["nn.Module"] = None
    recipe: dict = field(default_factory=lambda: dict(NETWORK_RECIPE))
    flow_fit_steps: int = 0

    @property
    def sample_shape(self) -> tuple:
        return tuple(self.denoiser.sample_shape)

    @property
    def num_classes(self) -> int:
        return self.conditioner.num_classes

    @property
    def analytic(self) -> bool:
        """Whether the teacher is an exact mixture (its scores, samples and densities are closed forms)."""
        return self.mixture is not None

    def scale(self, seed: int = 0):
        """The teacher's ``fdistill.scale.DataScale`` (MATH §0, scale from the teacher): the mixture's exact moments,
        a network's own sigma range and sigma_data, else estimated from Heun samples."""
        from ..scale import DataScale, teacher_scale

        if self.mixture is not None:
            return DataScale.from_mixture(self.mixture)
        return teacher_scale(self.denoiser, samples=lambda n: heun_samples(self.denoiser, n, seed))

    def to(self, device) -> "TeacherBundle":
        self.denoiser = self.denoiser.to(device)
        return self


def heun_samples(denoiser: nn.Module, n: int, seed: int) -> torch.Tensor:
    """``n`` samples of a teacher (Heun, 35 evaluations): what a scale is estimated from when a teacher carries none
    (``fdistill.scale.DataScale.from_samples``)."""
    import samplers

    return samplers.MultiStepGenerator(denoiser).sample(n, seed=seed)


def kinds() -> list[str]:
    """The ``teacher.kind`` names the package serves."""
    return list(KIND_MODULES)


def kind_module(kind: str):
    """The module serving ``teacher.kind=kind``."""
    if kind not in KIND_MODULES:
        raise ValueError(f"unknown teacher.kind {kind!r}; valid: {kinds()}")
    return importlib.import_module(f"{__name__}.{KIND_MODULES[kind]}")


COMMON_KEYS = ("kind", "guidance_scale")  # read for every kind (guidance wraps any conditional teacher)


def validate(cfg) -> None:
    """The chosen kind's own config checks (``ValueError`` naming the key and what is accepted). The check that every
    set ``teacher.*`` key is one the kind reads (``COMMON_KEYS`` + its ``KEYS``) is ``fdistill.config``'s."""
    check = getattr(kind_module(cfg.teacher.kind), "validate", None)
    if check is not None:
        check(cfg)


def load_teacher(cfg, device=None) -> TeacherBundle:
    """The bundle of the configured teacher (``cfg.teacher``), its denoiser frozen and on ``device``."""
    bundle = kind_module(cfg.teacher.kind).load(cfg, device)
    bundle.denoiser = bundle.denoiser.requires_grad_(False).eval()
    return bundle.to(device) if device is not None else bundle


def labels_conditioner(num_classes: int):
    """Class labels ``0..num_classes-1`` or nothing: the conditioner of every kind without prompts."""
    from ..conditioning import ClassLabels, Unconditional

    return ClassLabels(num_classes) if num_classes > 0 else Unconditional()


def path_required(cfg) -> None:
    """The check every kind loaded from a directory shares."""
    if not cfg.teacher.path:
        raise ValueError(f"teacher.kind={cfg.teacher.kind} needs teacher.path (a local directory)")
