""""Real" latents for the discriminator of a prompt-conditioned latent teacher (MATH F3).

- ``PromptTeacherPool`` (``data.kind=teacher``, data-free): latents drawn once from the guided teacher with a
  multi-step sampler over its own noise range, **each with the index of the prompt it was drawn for**, so the
  discriminator sees real and fake samples under their own prompts.
- ``CaptionLatents`` (``data.kind=captions``): captioned images encoded once by the VAE; each step draws
  (latent, caption) pairs and the captions are embedded like the generator's prompts.

Both are built in fixed-size chunks, each seeded by its own index, and processes split the chunks between them:
the result does not depend on the number of processes. It is cached in ``out_dir`` (with a key of everything it
depends on; a different key rebuilds it). Each step draws uniformly, for the global batch, sliced per process, so
the sources have no state to checkpoint.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..cache_key import build_cached, cache_key, shared_cache_path
from .captions import read_captions


def _files_digest(paths: list[str]) -> str:
    """SHA-256 of each file's path and bytes, in order."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class PromptTeacherPool:
    """Data-free "real" latents: ``pool_size`` samples of the (guided) teacher, each with its prompt index.

    The sampler (``data.sampler``, ``data.num_steps``) runs on a Karras schedule over the teacher's own noise range
    ``[sigma_min, sigma_max]`` (SD1.5: 0.0292 .. 14.6), from noise scaled by ``sigma_max``.
    """

    CHUNK = 32

    def __init__(self, teacher, shape, rand, conditioner, pool_size: int, sampler: str, num_steps: int,
                 cache_path: str, progress: bool = False, shared_dir: str | None = None):
        import samplers

        raw = getattr(teacher, "denoiser", teacher)  # inside classifier-free guidance
        sigmas = samplers.karras_sigmas(num_steps, raw.sigma_min, raw.sigma_max)
        fn, n_prompts = samplers.get(sampler), len(conditioner.prompts)
        # keyed by the teacher's and the text encoder's weights as well as the settings: another checkpoint with the
        # same prompts makes a new pool
        key = cache_key(raw, conditioner.text_encoder, kind="prompt-pool", pool_size=int(pool_size), sampler=sampler,
                        num_steps=int(num_steps), seed=rand.seed, prompts=conditioner.digest, shape=list(shape),
                        guidance_scale=float(getattr(teacher, "guidance_scale", 1.0)))
        cache_path = shared_cache_path(cache_path, shared_dir, key)  # data.pool_cache: kept under its key

        def make_chunk(c):
            n = min(self.CHUNK, pool_size - c * self.CHUNK)
            g = rand.generator(c, "teacher-pool")
            index = torch.randint(n_prompts, (n,), generator=g, device=g.device)
            z = torch.randn((n, *shape), generator=g, device=g.device) * float(sigmas[0])
            x = fn(teacher, z, sigmas, cond=conditioner.embed(index), generator=g)
            return {"x": x.float().cpu(), "prompt": index.cpu()}

        data = build_cached(cache_path, key, -(-pool_size // self.CHUNK), make_chunk, rand.rank, rand.world,
                            progress, "teacher pool")
        self.rand = rand
        self.x, self.prompt = data["x"].to(rand.device), data["prompt"].to(rand.device)

    def batch(self, step: int, local: int):
        """``(latents, prompt indices)``; the conditioner's ``real_condition`` embeds the prompts."""
        index = self.rand.randint(step, "real", local, len(self.x))
        return self.x[index], self.prompt[index]

    def state_dict(self):
        return {"pool_size": len(self.x)}  # a resumed run keeps its pool (fdistill.methods.distill)

    def load_state_dict(self, state):
        pass


class CaptionLatents:
    """Captioned images (``read_captions(path)`` entries with an image) as VAE latents.

    Images are centre-cropped and resized to the generator's resolution (latent size x 8 for SD), encoded once
    (a posterior sample, seeded per chunk) and kept on the CPU in float16; an image with several captions is encoded
    once. Each step draws (image, caption) entries uniformly.
    """

    CHUNK = 16

    def __init__(self, conditioner, shape, rand, path: str, cache_path: str, progress: bool = False):
        from ..data import _load_image

        entries = [c for c in read_captions(path) if c.image is not None]
        if not entries:
            raise ValueError(f"data.kind=captions: no captioned images in {path!r}")
        images = sorted({c.image for c in entries})
        where = {p: i for i, p in enumerate(images)}
        latent_channels = conditioner.vae.config.latent_channels
        if shape[0] != latent_channels:
            raise ValueError(f"the generator makes {shape[0]}-channel latents but the VAE has {latent_channels}")
        res = int(shape[-1]) * conditioner.vae_scale
        # keyed by the VAE's weights and the images' paths and bytes: an image edited in place is encoded again
        key = cache_key(conditioner.vae, kind="caption-latents", images=_files_digest(images), resolution=res,
                        seed=rand.seed)

        def make_chunk(c):
            paths = images[c * self.CHUNK:(c + 1) * self.CHUNK]
            x = torch.from_numpy(np.stack([_load_image(p, res, 3) for p in paths])).float() / 127.5 - 1
            g = rand.generator(c, "caption-latents")
            return {"latents": conditioner.encode_images(x, g).to(torch.float16).cpu()}

        data = build_cached(cache_path, key, -(-len(images) // self.CHUNK), make_chunk, rand.rank, rand.world,
                            progress, "encode captioned images")
        self.rand, self.conditioner = rand, conditioner
        self.latents = data["latents"]
        self.texts = [c.text for c in entries]
        self.image_of = torch.tensor([where[c.image] for c in entries], dtype=torch.long)

    def batch(self, step: int, local: int):
        """``(latents, caption embeddings)``."""
        index = self.rand.randint(step, "real", local, len(self.texts)).cpu()
        x = self.latents[self.image_of[index]].to(self.rand.device).float()
        return x, self.conditioner.embed_texts([self.texts[i] for i in index.tolist()])

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass
