"""diffusers UNets (discrete VP / DDPM, Stable Diffusion) as Denoisers (MATH §0).

A discrete VP model with ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` maps to the sigma form by
``sigma_t = sqrt((1 - abar_t) / abar_t)``. The network sees ``x / sqrt(1 + sigma^2)`` at the timestep ``t(sigma)``
interpolated in its sigma table (linear in log sigma), and its output converts as

- ``epsilon``:      ``D = x - sigma * eps_hat``
- ``v_prediction``: ``D = x / (1 + sigma^2) - sigma * v_hat / sqrt(1 + sigma^2)``
- ``sample``:       ``D = x0_hat``
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ..denoiser import PREDICTION_TYPES, DenoiserMixin, expand_sigma, sigma_per_sample


def vp_sigma_table(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``sigma_t = sqrt((1 - abar_t) / abar_t)`` for every discrete timestep (increasing in t)."""
    a = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return ((1 - a) / a).sqrt()


def sigma_to_timestep(sigma: torch.Tensor, sigma_table: torch.Tensor) -> torch.Tensor:
    """Continuous timestep for sigma: linear interpolation of t in ``log sigma`` over the table, clamped to its range.

    Exact (an integer) at the table's own sigmas.
    """
    log_table = sigma_table.log().to(sigma.device)
    log_s = sigma.to(torch.float64).clamp(min=1e-20).log().clamp(log_table[0], log_table[-1])
    hi = torch.searchsorted(log_table, log_s).clamp(1, len(log_table) - 1)
    lo = hi - 1
    w = (log_s - log_table[lo]) / (log_table[hi] - log_table[lo])
    return lo.to(torch.float64) + w


def denoised_from_prediction(x, sigma, pred, prediction_type: str):
    """MATH §0: convert a VP network output to ``D(x, sigma)`` for each prediction type."""
    s = expand_sigma(sigma, x)
    if prediction_type == "epsilon":
        return x - s * pred
    if prediction_type == "v_prediction":
        return x / (1 + s**2) - s * pred / (1 + s**2).sqrt()
    if prediction_type == "sample":
        return pred
    raise ValueError(f"unknown prediction_type {prediction_type!r}; valid: {list(PREDICTION_TYPES)}")


class DiffusersDenoiser(DenoiserMixin, nn.Module):
    """A diffusers ``UNet2DModel`` (``cond`` = class labels) or ``UNet2DConditionModel`` (``cond`` = encoder hidden
    states) with a DDPM-style noise table, as a Denoiser.

    Args:
        unet: the diffusers model.
        alphas_cumprod: ``(T,)`` cumulative alphas of the scheduler the model was trained with.
        prediction_type: ``epsilon``, ``v_prediction`` or ``sample``.
    """

    def __init__(self, unet: nn.Module, alphas_cumprod, prediction_type: str = "epsilon"):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; valid: {list(PREDICTION_TYPES)}")
        self.unet = unet
        self.prediction_type = prediction_type
        self.register_buffer("alphas_cumprod", torch.as_tensor(alphas_cumprod, dtype=torch.float64))
        self.register_buffer("sigma_table", vp_sigma_table(self.alphas_cumprod))
        self.text_conditioned = hasattr(unet.config, "cross_attention_dim") and \
            unet.config.get("cross_attention_dim") is not None

    @property
    def sample_shape(self) -> tuple:
        """Shape of one sample (the Denoiser interface): the UNet's ``(in_channels, H, W)``."""
        c = self.unet.config
        h, w = (c.sample_size, c.sample_size) if isinstance(c.sample_size, int) else tuple(c.sample_size)
        return (int(c.in_channels), int(h), int(w))

    def _apply(self, fn, *args, **kwargs):
        # ``.to(dtype)`` / ``.half()`` cast the UNet but keep the noise tables in float64 (a bf16 table shifts the
        # timesteps); device moves still apply.
        tables = {name: getattr(self, name) for name in ("alphas_cumprod", "sigma_table")}
        super()._apply(fn, *args, **kwargs)
        for name, table in tables.items():
            setattr(self, name, table.to(device=getattr(self, name).device, dtype=torch.float64))
        return self

    @property
    def sigma_min(self) -> float:
        return float(self.sigma_table[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigma_table[-1])

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma_to_timestep(sigma, self.sigma_table)

    def forward(self, x, sigma, cond=None, **unet_kwargs):
        s = expand_sigma(sigma, x)
        t = self.timestep(sigma_per_sample(sigma, x)).to(torch.float32)
        x_in = (x / (1 + s**2).sqrt()).to(self.unet.dtype)
        if self.text_conditioned:
            out = self.unet(x_in, t, encoder_hidden_states=cond, **unet_kwargs).sample
        else:
            out = self.unet(x_in, t, class_labels=cond, **unet_kwargs).sample
        out = out[:, : x.shape[1]].to(x.dtype)  # drop learned-variance channels if any
        return denoised_from_prediction(x, sigma, out, self.prediction_type)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, path: str, unet_subfolder: str = "unet", scheduler_subfolder: str = "scheduler",
                        torch_dtype=None, prediction_type: str | None = None):
        """Load from a local diffusers pipeline directory (``unet/`` + ``scheduler/``).

        ``prediction_type`` overrides the scheduler's. No network access is attempted.
        """
        from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel

        unet_dir = os.path.join(path, unet_subfolder)
        sched_dir = os.path.join(path, scheduler_subfolder)
        for d in (unet_dir, sched_dir):
            if not os.path.isdir(d):
                raise FileNotFoundError(f"no directory {d!r}: expected a diffusers layout with "
                                        f"'{unet_subfolder}/' and '{scheduler_subfolder}/' under {path!r}")
        import json

        with open(os.path.join(unet_dir, "config.json")) as fh:
            cls_name = json.load(fh).get("_class_name", "UNet2DModel")
        unet_cls = UNet2DConditionModel if cls_name == "UNet2DConditionModel" else UNet2DModel
        unet = unet_cls.from_pretrained(unet_dir, torch_dtype=torch_dtype, local_files_only=True)
        scheduler = DDPMScheduler.from_pretrained(sched_dir, local_files_only=True)
        alphas_cumprod = scheduler.alphas_cumprod
        if scheduler.config.get("trained_betas") is not None:
            # the scheduler rounds trained betas to float32; rebuild the table from the saved values in float64
            # so that save_pretrained -> from_pretrained reproduces the table (and the outputs) exactly
            betas = torch.tensor(scheduler.config.trained_betas, dtype=torch.float64)
            alphas_cumprod = torch.cumprod(1 - betas, 0)
        return cls(unet, alphas_cumprod, prediction_type or scheduler.config.prediction_type)

    def scheduler(self):
        """A ``DDPMScheduler`` that reproduces this noise table and prediction type."""
        from diffusers import DDPMScheduler

        a = self.alphas_cumprod
        betas = 1 - a / torch.cat([a.new_ones(1), a[:-1]])
        return DDPMScheduler(num_train_timesteps=len(a), trained_betas=betas.tolist(),
                             prediction_type=self.prediction_type)

    def pipeline_parts(self) -> dict:
        """What a ``OneStepPipeline`` holds for this generator: the UNet (a LoRA generator's adapters merged into a
        copy) and the scheduler that defines its noise table."""
        from .lora import merged_unet

        return {"generator": merged_unet(self.unet), "scheduler": self.scheduler()}

    def save_pretrained(self, path: str):
        """Write ``unet/`` and a ``scheduler/`` (DDPM) that reproduces this noise table."""
        self.unet.save_pretrained(os.path.join(path, "unet"))
        self.scheduler().save_pretrained(os.path.join(path, "scheduler"))
