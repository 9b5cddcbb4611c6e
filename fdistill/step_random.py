"""Randomness for a training step: every random draw of step ``i`` comes from a generator seeded by
``(seed, i, stream)`` that draws the *global* batch; each process keeps its own slice. So a run gives the same numbers
on 1 or N processes (given the same global batch), and resuming from a checkpoint needs no RNG state at all.
"""
from __future__ import annotations

import hashlib

import torch


class StepRandom:
    """Deterministic per-step draws, sliced per process."""

    def __init__(self, seed: int, rank: int = 0, world_size: int = 1, device="cpu"):
        self.seed, self.rank, self.world, self.device = int(seed), rank, world_size, torch.device(device)

    def generator(self, step: int, stream: str, device=None) -> torch.Generator:
        digest = hashlib.sha256(f"{self.seed}/{step}/{stream}".encode()).digest()
        g = torch.Generator(device=device or self.device)
        g.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        return g

    def local_slice(self, t: torch.Tensor, local: int) -> torch.Tensor:
        """This process's ``local`` rows of a global-batch tensor."""
        return t[self.rank * local:(self.rank + 1) * local]

    def randn(self, step: int, stream: str, local: int, shape: tuple, dtype=torch.float32) -> torch.Tensor:
        g = self.generator(step, stream)
        return self.local_slice(torch.randn((local * self.world, *shape), generator=g, device=self.device,
                                       dtype=dtype), local)

    def randint(self, step: int, stream: str, local: int, high: int) -> torch.Tensor:
        g = self.generator(step, stream)
        return self.local_slice(torch.randint(high, (local * self.world,), generator=g, device=self.device), local)

    def sigmas(self, step: int, stream: str, local: int, levels) -> torch.Tensor:
        """Noise levels of a ``fdistill.noise_levels`` distribution for this step, sliced."""
        g = self.generator(step, stream)
        return self.local_slice(levels.sample(local * self.world, generator=g, device=self.device), local)
