"""``teacher.kind=sd``: the UNet of a Stable Diffusion 1.x/2.x pipeline directory; its conditioner holds the prompts,
the text encoder and the VAE (``fdistill.sd``): latent, text-conditioned distillation."""
from __future__ import annotations

from . import TeacherBundle, path_required

KINDS = ("sd",)
KEYS = ("path", "prediction_type")  # the teacher.* keys this kind reads (besides kind and guidance_scale)
DATA_KEYS = ("prompts", "prompt_cache", "path")  # data.* keys it reads whatever data.kind (path: captions as prompts)


def validate(cfg) -> None:
    path_required(cfg)
    if not (cfg.data.prompts or (cfg.data.kind == "captions" and cfg.data.path)):
        raise ValueError("teacher.kind=sd needs prompts: data.prompts (a text file, captions folder or JSONL), or "
                         "data.kind=captions with data.path")
    if cfg.network.init != "teacher":
        raise ValueError("teacher.kind=sd needs network.init=teacher (the generator is a copy of the teacher UNet)")


def load(cfg, device=None) -> TeacherBundle:
    from ..sd import PromptConditioner, load_sd_unet

    net = load_sd_unet(cfg.teacher.path, prediction_type=cfg.teacher.prediction_type or None)
    return TeacherBundle(kind="sd", denoiser=net, conditioner=PromptConditioner.from_config(cfg, device))
