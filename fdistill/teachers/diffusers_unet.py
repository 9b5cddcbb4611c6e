"""``teacher.kind=diffusers``: a diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` directory (or a pipeline with
``unet/`` and ``scheduler/``), wrapped as a Denoiser with its scheduler's noise table (``DiffusersDenoiser``)."""
from __future__ import annotations

from . import TeacherBundle, labels_conditioner, path_required

KINDS = ("diffusers",)
KEYS = ("path", "num_classes", "prediction_type")  # the teacher.* keys this kind reads (besides kind and guidance_scale)
validate = path_required


def load(cfg, device=None) -> TeacherBundle:
    from ..networks import DiffusersDenoiser

    net = DiffusersDenoiser.from_pretrained(cfg.teacher.path, prediction_type=cfg.teacher.prediction_type or None)
    return TeacherBundle(kind="diffusers", denoiser=net, conditioner=labels_conditioner(cfg.teacher.num_classes))
