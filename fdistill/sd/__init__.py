"""Stable Diffusion 1.x/2.x teachers: latent, text-conditioned distillation (``teacher.kind=sd``).

``teacher.path`` is a local diffusers pipeline directory (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``). The pieces:

- ``load_sd_unet(path)``: the UNet and its noise table as a Denoiser (MATH §0, epsilon or v prediction).
- ``PromptConditioner`` (``conditioner.py``): prompts -> CLIP embeddings for every step, the empty prompt as the
  guidance null condition, VAE decoding of latents, the VAE / text encoder / tokenizer for the exported pipeline.
- ``read_captions`` (``captions.py``): prompt lists and captioned image sets.
- ``PromptTeacherPool``, ``CaptionLatents`` (``sources.py``): "real" latents for the discriminator (MATH F3).
- ``add_lora``, ``merged_unet``, ``has_lora``: a LoRA generator and its export (``fdistill.networks.lora``: any
  diffusers UNet, re-exported here).

Nothing here downloads: every component is read from ``teacher.path`` with ``local_files_only``.
"""
from __future__ import annotations

import os

import torch

from ..networks.diffusers_adapter import DiffusersDenoiser

SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def check_layout(path: str) -> None:
    """Raise ``FileNotFoundError`` naming every missing subfolder of a Stable Diffusion pipeline directory."""
    missing = [s for s in SUBFOLDERS if not os.path.isdir(os.path.join(path, s))]
    if missing:
        raise FileNotFoundError(f"teacher.path={path!r} is not a Stable Diffusion pipeline directory: missing "
                                f"{', '.join(m + '/' for m in missing)} (expected {', '.join(SUBFOLDERS)})")


class SDDenoiser(DiffusersDenoiser):
    """A ``UNet2DConditionModel`` Denoiser whose text embeddings follow the UNet's dtype, so a bf16 teacher and an
    fp32 generator take the same (fp32) embeddings, inside autocast or not."""

    def forward(self, x, sigma, cond=None, **unet_kwargs):
        if torch.is_tensor(cond) and cond.is_floating_point():
            cond = cond.to(self.unet.dtype)
        return super().forward(x, sigma, cond, **unet_kwargs)


def load_sd_unet(path: str, prediction_type: str | None = None) -> SDDenoiser:
    """The teacher UNet of the pipeline at ``path`` with its scheduler's noise table (SD1.5: scaled-linear betas,
    epsilon prediction, sigma in [0.0292, 14.6146])."""
    check_layout(path)
    net = SDDenoiser.from_pretrained(path, prediction_type=prediction_type)
    if not net.text_conditioned:
        raise ValueError(f"{os.path.join(path, 'unet')!r} is not text-conditioned (no cross_attention_dim): "
                         "use teacher.kind=diffusers")
    return net


def __getattr__(name):
    # the submodules import transformers / peft: loaded on first use
    import importlib

    where = {"PromptConditioner": "conditioner", "read_captions": "captions", "read_prompts": "captions",
             "PromptTeacherPool": "sources", "CaptionLatents": "sources", "add_lora": "..networks.lora",
             "merged_unet": "..networks.lora", "has_lora": "..networks.lora"}
    if name in where:
        module = where[name]
        module = importlib.import_module(module, __name__) if module.startswith(".") else \
            importlib.import_module(f"{__name__}.{module}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CaptionLatents", "PromptConditioner", "PromptTeacherPool", "SDDenoiser", "add_lora", "check_layout",
           "has_lora", "load_sd_unet", "merged_unet", "read_captions", "read_prompts"]
