"""A LoRA generator: the teacher's UNet copy with low-rank adapters (peft), only the adapters trained — for any
diffusers UNet teacher (Stable Diffusion's or an unconditional / class-conditional ``UNet2DModel``).

``add_lora`` injects adapters into the UNet of a ``DiffusersDenoiser`` (``W x + (alpha / r) B A x`` on the named
modules, ``B = 0`` at the start, so the generator starts as the teacher copy). ``merged_unet`` folds them into the
weights of a copy and removes the peft layers: the exported generator is a plain ``UNet2DConditionModel``.
"""
from __future__ import annotations

import copy

from torch import nn

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the attention projections of diffusers' UNets


def has_lora(unet: nn.Module) -> bool:
    """Whether ``unet`` carries peft adapters."""
    return bool(getattr(unet, "_hf_peft_config_loaded", False))


def add_lora(net: nn.Module, rank: int, alpha: float | None = None, targets=DEFAULT_TARGETS) -> nn.Module:
    """Freeze ``net`` (a ``DiffusersDenoiser``) and add LoRA adapters of ``rank`` to ``targets`` of its UNet; only
    the adapters require grad. ``alpha`` defaults to ``rank`` (scale 1). Returns ``net``."""
    from peft import LoraConfig

    from ..networks.diffusers_adapter import DiffusersDenoiser

    if not isinstance(net, DiffusersDenoiser):
        raise TypeError(f"network.lora_rank needs a diffusers UNet generator; got {type(net).__name__}")
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1; got {rank}")
    net.requires_grad_(False)
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else rank),
                        target_modules=list(targets), init_lora_weights=True)
    try:
        net.unet.add_adapter(config)
    except ValueError as e:  # peft: no module matched
        raise ValueError(f"network.lora_targets={list(targets)} matched no module of the UNet ({e})") from None
    trainable = 0
    for name, p in net.unet.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
            trainable += p.numel()
    if trainable == 0:
        raise ValueError(f"network.lora_targets={list(targets)} added no adapter parameters")
    return net


def merged_unet(unet: nn.Module) -> nn.Module:
    """A copy of ``unet`` with its adapters merged into the weights and the peft layers removed (``unet`` itself is
    left as it is). A UNet without adapters is returned unchanged."""
    if not has_lora(unet):
        return unet
    out = copy.deepcopy(unet)
    out.fuse_lora()
    out.unload_lora()
    return out
