"""Saving and loading Denoisers and trained generators.

- ``save_denoiser`` / ``load_denoiser``: any network we train (``MLPDenoiser``, ``EDMDenoiser``: diffusers
  ``save_pretrained`` directories; ``DiffusersDenoiser``: ``unet/`` + ``scheduler/``).
- ``load_generator(path)``: a trained one-step generator (``out_dir/generator`` or a run's ``out_dir``), a
  ``fdistill.OneStepPipeline`` with ``.sample(n, seed=0, cond=None) -> Tensor``.
- ``init_from_generator(net, path, sigma_init)``: copy such a generator's weights into a network built for the same
  teacher (``network.generator_init``: a second training stage starts where a first one ended).
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


def init_from_generator(net: nn.Module, path: str, sigma_init: float | None = None) -> nn.Module:
    """Load the weights of the trained one-step generator at ``path`` (``load_generator``) into ``net``, a generator
    Denoiser built for the same teacher (``network.generator_init``), in place; returns ``net``.

    The generator is a map ``G(z) = D(mu + sigma_init z, sigma_init)`` (MATH §0): it continues as the same map only at
    the ``sigma_init`` it was trained at, so a different one (when given) is an error, as is another architecture."""
    pipe = load_generator(path)
    trained_at = float(pipe.config.sigma_init)
    if sigma_init is not None and abs(trained_at - float(sigma_init)) > 1e-6 * max(1.0, trained_at):
        raise ValueError(f"network.generator_init={path!r} was trained at sigma_init {trained_at:g}, this run's is "
                         f"{float(sigma_init):g}: the one-step map only continues at the level it learnt; set "
                         f"network.sigma_init={trained_at:g}")
    source = pipe.denoiser
    if type(source).__name__ != type(net).__name__:
        raise ValueError(f"network.generator_init={path!r} holds a {type(source).__name__} generator; this run builds "
                         f"a {type(net).__name__} for its teacher (network.init / arch): they must be the same kind")
    try:
        net.load_state_dict(source.state_dict())
    except RuntimeError as err:
        raise ValueError(f"network.generator_init={path!r}: its generator's weights do not fit the network this run "
                         f"builds for its teacher (another architecture or size):\n{err}") from None
    return net
