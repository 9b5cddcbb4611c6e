"""Generate images for evaluation (MATH §7): from any object with ``.sample(n, seed=..., cond=...)`` to PNG files.

Images ``[i0, i0 + batch_size)`` form one chunk, drawn by one ``sample`` call whose seed is derived from
``(seed, i0)``. Chunks are dealt round-robin to processes, so the files are identical for any number of processes
(for a given seed and batch size). Class-conditional generation uses the balanced labels ``i mod num_classes``;
text generation uses prompt ``i mod len(prompts)``.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from tqdm import tqdm


def chunk_seed(seed: int, start: int) -> int:
    """A well-mixed 63-bit seed for the chunk starting at image index ``start``."""
    state = np.random.SeedSequence([int(seed), int(start)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def conditions(indices: range, num_classes: int | None = None, prompts: list[str] | None = None):
    """The ``cond`` of the images ``indices``: balanced labels, cycled prompts, or ``None``."""
    if num_classes:
        return torch.arange(indices.start, indices.stop) % num_classes
    if prompts:
        return [prompts[i % len(prompts)] for i in indices]
    return None


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(n, C, H, W)`` in [-1, 1] -> ``(n, H, W, C)`` uint8 (round to nearest), as EDM saves its PNGs."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"image metrics need samples shaped (n, C, H, W) with C in (1, 3); got "
                         f"{tuple(images.shape)} (for Gaussian-mixture vectors use python -m eval.gmm)")
    x = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def save_pngs(images: torch.Tensor, folder: str, start: int) -> list[str]:
    """Write ``images`` as ``folder/{start + j:06d}.png``."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    paths = []
    for j, img in enumerate(to_uint8(images)):
        path = os.path.join(folder, f"{start + j:06d}.png")
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)
        paths.append(path)
    return paths


def chunks(num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[range]:
    """This process's share of the index chunks ``[i0, i0 + batch_size)``."""
    starts = range(0, num_samples, batch_size)
    return [range(s, min(s + batch_size, num_samples)) for s in starts][rank::world_size]


@torch.no_grad()
def generate_to_folder(gen, folder: str, num_samples: int, seed: int = 0, batch_size: int = 100,
                       num_classes: int | None = None, prompts: list[str] | None = None, rank: int = 0,
                       world_size: int = 1, progress: bool = True) -> list[str]:
    """Write this process's share of ``num_samples`` generated images to ``folder``; returns the paths."""
    os.makedirs(folder, exist_ok=True)
    mine = chunks(num_samples, batch_size, rank, world_size)
    paths = []
    bar = tqdm(total=sum(len(c) for c in mine), desc=f"generate (seed {seed}, rank {rank})", unit="img",
               disable=not progress)
    for idx in mine:
        images = gen.sample(len(idx), seed=chunk_seed(seed, idx.start), cond=conditions(idx, num_classes, prompts))
        if len(images) != len(idx):
            raise ValueError(f"generator returned {len(images)} samples for n={len(idx)}")
        paths += save_pngs(images, folder, idx.start)
        bar.update(len(idx))
    bar.close()
    return paths
