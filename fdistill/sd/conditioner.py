"""Prompt conditioning of a Stable Diffusion teacher: the conditioner interface of ``fdistill.conditioning``.

Each step's prompts are indices into the prompt list drawn for the **global** batch from ``(seed, step, stream)``
and sliced per process (``StepRandom.randint``), so 1 and N processes see the same prompts. Their CLIP embeddings
come from the frozen text encoder exactly as ``OneStepPipeline.encode_prompt`` computes them (padded to the
tokenizer's ``model_max_length``, the last hidden state): the generator is trained on what the exported pipeline
feeds it. Lists of up to ``data.prompt_cache`` prompts are encoded once and kept on the device; longer ones (COCO
captions, LAION prompts) are encoded per step under ``no_grad``.
"""
from __future__ import annotations

import hashlib
import os
import warnings

import torch

from . import check_layout
from .captions import read_prompts


class PromptConditioner:
    """Prompts -> CLIP embeddings ``(B, L, C)`` (float32), the empty prompt as guidance null condition, and the VAE
    that turns latents into images.

    Args:
        prompts: the prompt list.
        tokenizer, text_encoder: CLIP tokenizer and text model (frozen; any dtype).
        vae: ``AutoencoderKL`` (frozen; any dtype).
        device: where embeddings are made and returned.
        cache_limit: prompt lists up to this length are encoded once (``embed`` is then a lookup).
        path: the pipeline directory (fp32 components for export are reloaded from it when the live ones are not
            fp32).
        data: the ``data`` config (for ``make_source``); out_dir: where sources cache their latents.
    """

    num_classes = 0

    def __init__(self, prompts: list[str], tokenizer, text_encoder, vae, device, cache_limit: int = 4096,
                 path: str | None = None, data=None, out_dir: str = ""):
        if not prompts:
            raise ValueError("PromptConditioner needs at least one prompt")
        self.prompts = list(prompts)
        self.tokenizer, self.device, self.path, self.data, self.out_dir = tokenizer, torch.device(device), path, \
            data, out_dir
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.vae = vae.requires_grad_(False).eval()
        self.digest = hashlib.sha256("\n".join(self.prompts).encode()).hexdigest()
        self.null_cond = self.encode([""])  # (1, L, C): classifier-free guidance's "no prompt" (MATH F2)
        self._cache = self._index = None
        if len(self.prompts) <= cache_limit:
            self._cache = self.encode(self.prompts).to(text_encoder.dtype)
            self._index = {p: i for i, p in enumerate(self.prompts)}

    @classmethod
    def from_config(cls, cfg, device):
        """Tokenizer, text encoder and VAE from ``teacher.path`` (bf16 when ``train.mixed_precision=bf16``), prompts
        from ``data.prompts`` (or the captions at ``data.path``)."""
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel, CLIPTokenizer

        path = cfg.teacher.path
        check_layout(path)
        dtype = torch.bfloat16 if cfg.train.mixed_precision == "bf16" else torch.float32
        tokenizer = CLIPTokenizer.from_pretrained(os.path.join(path, "tokenizer"), local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(os.path.join(path, "text_encoder"), local_files_only=True)
        vae = AutoencoderKL.from_pretrained(os.path.join(path, "vae"), local_files_only=True)
        _check_noise_range(cfg)
        return cls(read_prompts(cfg.data.prompts or cfg.data.path), tokenizer, text_encoder.to(device, dtype),
                   vae.to(device, dtype), device, cache_limit=cfg.data.prompt_cache, path=path, data=cfg.data,
                   out_dir=cfg.out_dir)

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode(self, texts: list[str], chunk: int = 256) -> torch.Tensor:
        """CLIP embeddings ``(B, L, C)`` float32 of ``texts``, as ``OneStepPipeline.encode_prompt`` makes them."""
        from ..networks.prompt_encoding import encode_prompts

        return encode_prompts(self.tokenizer, self.text_encoder, texts, self.device, chunk).float()

    @property
    def num_conditions(self) -> int:
        return len(self.prompts)

    def condition(self, index: torch.Tensor) -> torch.Tensor:
        """The conditions of prompt indices: their embeddings (the conditioner interface)."""
        return self.embed(index)

    @property
    def condition_key(self) -> dict:
        return {"prompts": self.digest}

    def embed(self, index: torch.Tensor) -> torch.Tensor:
        """Embeddings of the prompts at ``index`` (``(B,)`` long)."""
        if self._cache is not None:
            return self._cache[index.to(self._cache.device)].float()
        return self.encode([self.prompts[i] for i in index.tolist()])

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Embeddings of arbitrary texts (a cache lookup when every one is a cached prompt)."""
        if self._index is not None and all(t in self._index for t in texts):
            return self.embed(torch.tensor([self._index[t] for t in texts], dtype=torch.long))
        return self.encode(texts)

    # ------------------------------------------------------------------ the conditioner interface
    def draw(self, rand, step: int, stream: str, local: int) -> torch.Tensor:
        """This process's slice of the step's prompts (uniform over the list, drawn for the global batch)."""
        return self.embed(rand.randint(step, stream, local, len(self.prompts)))

    def example(self, n: int, device) -> torch.Tensor:
        return self.null_cond.expand(n, *self.null_cond.shape[1:]).contiguous().to(device)

    def for_samples(self, n: int, generator: torch.Generator, device) -> torch.Tensor:
        index = torch.randint(len(self.prompts), (n,), generator=generator, device=generator.device)
        return self.embed(index).to(device)

    def real_condition(self, data_cond, fake_cond):
        """Prompt indices (teacher pool) -> their embeddings; embeddings (captioned images) pass; none -> fake's."""
        if data_cond is None:
            return fake_cond
        if not data_cond.is_floating_point():
            return self.embed(data_cond)
        return data_cond

    @torch.no_grad()
    def decode(self, x: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """Latents -> images in ``[-1, 1]`` (``fdistill.networks.latent_codec``), ``chunk`` at a time."""
        from ..networks.latent_codec import decode_latents

        return torch.cat([decode_latents(self.vae, part) for part in x.split(chunk)])

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in ``[-1, 1]`` -> model latents (``fdistill.networks.latent_codec``), z drawn from the VAE
        posterior."""
        from ..networks.latent_codec import from_vae_latents

        dist = self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist
        return from_vae_latents(self.vae, dist.sample(generator).float())

    @property
    def vae_scale(self) -> int:
        """Image pixels per latent pixel (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def pipeline_components(self) -> dict:
        """VAE, text encoder (fp32: reloaded from ``path`` when the live ones are bf16) and tokenizer."""
        te, vae = self.text_encoder, self.vae
        if self.path and (te.dtype != torch.float32 or vae.dtype != torch.float32):
            from diffusers import AutoencoderKL
            from transformers import CLIPTextModel

            te = CLIPTextModel.from_pretrained(os.path.join(self.path, "text_encoder"), local_files_only=True).float()
            vae = AutoencoderKL.from_pretrained(os.path.join(self.path, "vae"), local_files_only=True).float()
        return {"vae": vae, "text_encoder": te, "tokenizer": self.tokenizer}

    def make_source(self, kind: str, teacher, shape, rand, pool_size: int, progress: bool = False):
        """"Real" latents for the discriminator: ``teacher`` (data-free pool of ``pool_size``, each latent with its
        prompt; ``fdistill.config.data_pool_size``) or ``captions`` (captioned images at ``data.path`` through the
        VAE)."""
        from .sources import CaptionLatents, PromptTeacherPool

        d = self.data
        if kind == "teacher":
            return PromptTeacherPool(teacher, shape, rand, self, pool_size, d.sampler, d.num_steps,
                                     os.path.join(self.out_dir, "teacher_pool.pt"), progress=progress,
                                     shared_dir=d.pool_cache)
        if kind == "captions":
            if not d.path:
                raise ValueError("data.kind=captions needs data.path: a captions folder or JSONL with images")
            return CaptionLatents(self, shape, rand, d.path, os.path.join(self.out_dir, "caption_latents.pt"),
                                  progress=progress)
        raise ValueError(f"teacher.kind=sd takes data.kind teacher (data-free), captions or auto; got {kind!r}")


def _check_noise_range(cfg) -> None:
    """Warn when the generator's sigma_init or the objective's noise levels pass the teacher's largest sigma: the
    UNet's timestep is clamped there, so the teacher is evaluated at a noise level it was not trained for."""
    from diffusers import DDPMScheduler

    from ..networks.diffusers_adapter import vp_sigma_table

    sched = DDPMScheduler.from_pretrained(os.path.join(cfg.teacher.path, "scheduler"), local_files_only=True)
    top = float(vp_sigma_table(sched.alphas_cumprod)[-1])
    o = cfg.objective
    for key, value in (("network.sigma_init", cfg.network.sigma_init), ("objective.sigma_max", o.sigma_max)):
        if value is not None and value > 1.01 * top:  # None: the teacher's own largest sigma (fdistill.scale)
            warnings.warn(f"{key}={value:g} exceeds the teacher's largest sigma {top:.4f}: set it to {top:.4f} "
                          "(configs/sd15-fdistill-js.yaml does)", stacklevel=2)
