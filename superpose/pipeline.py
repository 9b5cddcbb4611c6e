"""``SuperDiffPipeline``: SuperDiff (MATH S1–S3) for diffusers models, as a ``DiffusionPipeline``.

Two ways to hold the models:

(a) Stable-Diffusion style: one ``UNet2DConditionModel`` (``unet``) + ``text_encoder`` + ``tokenizer`` + ``vae``;
    every prompt is a model. The drift uses classifier-free guidance, the densities are tracked with the unguided
    conditional predictions (MATH S3, last sentence); all prompts and the empty prompt run in one batched UNet call.
(b) Several unconditional ``UNet2DModel``s: ``unet``, ``unet_1``, ``unet_2``, ``unet_3`` (up to four; diffusers loads
    a pipeline's components by the names in its constructor, so the slots are fixed).

The ``scheduler`` (``DDPMScheduler`` or any scheduler with ``alphas_cumprod`` and ``prediction_type``) only supplies
the models' training noise table; sampling runs in the sigma form through ``fdistill.networks.DiffusersDenoiser``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from fdistill.networks.diffusers_adapter import DiffusersDenoiser
from fdistill.networks.latent_codec import decode_latents
from samplers.schedules import karras_sigmas

from .kappa import AndSolver
from .models import DenoiserList, PromptModels
from .sampler import sample

UNET_SLOTS = ("unet", "unet_1", "unet_2", "unet_3")


@dataclass
class SuperDiffPipelineOutput(BaseOutput):
    """``images`` (PIL list, ``(B, H, W, C)`` array, ``(B, C, H, W)`` tensor or latents); ``log_q (M, B)`` float64
    accumulated log-density increments per model; ``kappa (N, M, B)``; ``fallbacks``/``solves`` of the AND solve."""

    images: list | np.ndarray | torch.Tensor
    log_q: torch.Tensor
    kappa: torch.Tensor
    fallbacks: int
    solves: int


class SuperDiffPipeline(DiffusionPipeline):
    """Compose diffusion models by OR / AND (MATH S2 / S3). See the module docstring for the two layouts."""

    _optional_components = ["text_encoder", "tokenizer", "vae", "unet_1", "unet_2", "unet_3"]
    model_cpu_offload_seq = "text_encoder->unet->unet_1->unet_2->unet_3->vae"

    def __init__(self, unet, scheduler, text_encoder=None, tokenizer=None, vae=None, unet_1=None, unet_2=None,
                 unet_3=None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer,
                              vae=vae, unet_1=unet_1, unet_2=unet_2, unet_3=unet_3)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load from a local directory written by ``save_pretrained`` (no network access)."""
        if not os.path.isdir(pretrained_model_name_or_path):
            raise FileNotFoundError(f"{pretrained_model_name_or_path!r} is not a local directory; "
                                    "SuperDiffPipeline loads saved pipelines only")
        kwargs["local_files_only"] = True
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # ------------------------------------------------------------------ pieces
    @property
    def text_mode(self) -> bool:
        return self.text_encoder is not None

    @property
    def unets(self) -> list:
        return [getattr(self, name) for name in UNET_SLOTS if getattr(self, name, None) is not None]

    def _denoiser(self, unet, device):
        return DiffusersDenoiser(unet, self.scheduler.alphas_cumprod, self.scheduler.config.prediction_type).to(device)

    @torch.no_grad()
    def encode_prompt(self, prompts, device) -> torch.Tensor:
        """CLIP text embeddings ``(len(prompts), L, C)`` in the UNet's dtype."""
        from fdistill.networks.prompt_encoding import encode_prompts

        return encode_prompts(self.tokenizer, self.text_encoder, prompts, device).to(self.unet.dtype)

    def _vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1

    def _models(self, prompts, guidance_scale, negative_prompt, device):
        if self.text_mode:
            if not prompts:
                raise ValueError("this pipeline holds a text encoder: pass prompts=[...] (each prompt is a model)")
            emb = self.encode_prompt(list(prompts) + [negative_prompt], device)
            den = self._denoiser(self.unet, device)
            conds = [emb[i: i + 1] for i in range(len(prompts))]
            return PromptModels(den, conds, emb[-1:], guidance_scale), den
        if prompts:
            raise ValueError("this pipeline holds unconditional UNets (no text encoder); prompts must be None")
        dens = [self._denoiser(u, device) for u in self.unets]
        return DenoiserList(dens), dens[0]

    def _postprocess(self, x, output_type):
        if output_type == "latent":
            return x
        if self.vae is not None:
            x = decode_latents(self.vae, x)
        image = (x.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return image
        image = image.permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "np":
            return image
        if output_type == "pil":
            return self.numpy_to_pil(image)
        raise ValueError(f"unknown output_type {output_type!r}; valid: ['pil', 'np', 'pt', 'latent']")

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(self, prompts=None, mode: str = "or", num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 negative_prompt: str = "", batch_size: int = 1, height: int | None = None, width: int | None = None,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True, T: float = 1.0, bias=None,
                 and_solver: AndSolver | None = None, process: str = "ve", rho: float = 7.0):
        """Sample ``batch_size`` images from the OR / AND / average of the models (MATH S2 / S3).

        ``prompts``: the models in text mode (``guidance_scale`` is the CFG scale of the drift); ``None`` with
        unconditional UNets. ``latents``: unit-variance starting noise (scaled here by the largest sigma).
        The sigmas are a Karras schedule (``rho``) over the models' noise table, ending with a denoising step.
        """
        device = self._execution_device
        models, den = self._models(prompts, guidance_scale, negative_prompt, device)
        cfg = self.unet.config
        scale = self._vae_scale()
        size = cfg.sample_size if isinstance(cfg.sample_size, (tuple, list)) else (cfg.sample_size,) * 2
        height = height or size[0] * scale
        width = width or size[1] * scale
        shape = (batch_size, cfg.in_channels, height // scale, width // scale)
        sigmas = karras_sigmas(num_inference_steps, den.sigma_min, den.sigma_max, rho)
        if latents is None:
            latents = torch.randn(shape, generator=generator, device=getattr(generator, "device", device))
        x = latents.to(device=device, dtype=torch.float32) * float(sigmas[0])
        with self.progress_bar(total=num_inference_steps) as bar:
            out = sample(models, x, sigmas, mode=mode, T=T, bias=bias, generator=generator, process=process,
                         and_solver=and_solver, callback=lambda *_: bar.update())
        images = self._postprocess(out.samples, output_type)
        if not return_dict:
            return (images,)
        return SuperDiffPipelineOutput(images=images, log_q=out.log_q, kappa=out.kappa, fallbacks=out.fallbacks,
                                       solves=out.solves)
