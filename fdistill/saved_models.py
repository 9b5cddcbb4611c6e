"""Saving and loading Denoisers and trained generators.

- ``save_denoiser`` / ``load_denoiser``: any network we train (``MLPDenoiser``, ``EDMDenoiser``: diffusers
  ``save_pretrained`` directories; ``DiffusersDenoiser``: ``unet/`` + ``scheduler/``).
- ``load_generator(path)``: a trained one-step generator (``out_dir/generator`` or a run's ``out_dir``), a
  ``fdistill.OneStepPipeline`` with ``.sample(n, seed=0, cond=None) -> Tensor``.
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn


def save_denoiser(denoiser: nn.Module, path: str) -> None:
    """Save a trainable Denoiser so that ``load_denoiser(path)`` restores it."""
    denoiser.save_pretrained(path)


def load_denoiser(path: str, torch_dtype=None) -> nn.Module:
    """Load what ``save_denoiser`` wrote: a diffusers-layout dir (``unet/`` + ``scheduler/``) or one of our
    ``ModelMixin`` denoisers (``config.json`` naming the class)."""
    from .networks import DiffusersDenoiser

    if os.path.isdir(os.path.join(path, "unet")) and os.path.isdir(os.path.join(path, "scheduler")):
        return DiffusersDenoiser.from_pretrained(path, torch_dtype=torch_dtype)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"no denoiser at {path!r}: expected {cfg_path!r} (our MLPDenoiser/EDMDenoiser) or "
                                f"'unet/' and 'scheduler/' subfolders (a diffusers model)")
    with open(cfg_path) as fh:
        cls_name = json.load(fh).get("_class_name")
    import fdistill

    if cls_name not in ("MLPDenoiser", "EDMDenoiser"):
        raise ValueError(f"{cfg_path!r} describes {cls_name!r}; loadable denoisers: MLPDenoiser, EDMDenoiser, "
                         "or a diffusers unet/+scheduler/ directory")
    return getattr(fdistill, cls_name).from_pretrained(path, torch_dtype=torch_dtype)


def one_step_pipeline(generator: nn.Module, sigma_init: float, shape, num_classes: int = 0, **components):
    """The ``OneStepPipeline`` users ship for a trained generator Denoiser; ``components``: ``vae``, ``text_encoder``,
    ``tokenizer`` of latent text-conditioned models. A generator that is not itself a pipeline component (a wrapped
    diffusers UNet) says what the pipeline holds through ``pipeline_parts()`` (its UNet and scheduler)."""
    from .pipeline import OneStepPipeline

    parts = generator.pipeline_parts() if hasattr(generator, "pipeline_parts") else {"generator": generator}
    return OneStepPipeline(**parts, sigma_init=float(sigma_init), sample_shape=list(shape),
                           num_classes=int(num_classes), **components)


def load_generator(path: str, device: str | torch.device | None = None):
    """Open a trained one-step generator: ``path`` is a ``generator/`` pipeline directory or a run's ``out_dir``.

    Returns a ``fdistill.OneStepPipeline`` (``.sample(n, seed=0, cond=None) -> Tensor``, or call it like any
    diffusers pipeline).
    """
    tried = [path, os.path.join(path, "generator")]
    for p in tried:
        if os.path.isfile(os.path.join(p, "model_index.json")):
            from .pipeline import OneStepPipeline

            pipe = OneStepPipeline.from_pretrained(p)
            return pipe.to(device) if device is not None else pipe
    raise FileNotFoundError(f"no one-step generator found: looked for model_index.json in {tried}")
