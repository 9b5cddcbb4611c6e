"""``teacher.kind=pretrained`` (a Denoiser saved by this package, e.g. ``runs/digits-teacher/teacher``) and
``teacher.kind=edm`` (an EDM snapshot converted by ``python -m fdistill.convert_edm``: an ``EDMDenoiser`` directory):
both load with ``fdistill.saved_models.load_denoiser``."""
from __future__ import annotations

from . import TeacherBundle, labels_conditioner, path_required

KINDS = ("pretrained", "edm")
KEYS = ("path", "num_classes")  # the teacher.* keys this kind reads (besides kind and guidance_scale)
validate = path_required


def load(cfg, device=None) -> TeacherBundle:
    from ..saved_models import load_denoiser

    return TeacherBundle(kind=cfg.teacher.kind, denoiser=load_denoiser(cfg.teacher.path),
                         conditioner=labels_conditioner(cfg.teacher.num_classes))
