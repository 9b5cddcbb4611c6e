"""The "real" samples of a training step: exact mixture samples, a teacher pool (data-free), or a dataset; each
drawn through the step's random streams (``fdistill.step_random.StepRandom``), so they resume exactly."""
from __future__ import annotations

import torch

from .step_random import StepRandom


class MixtureSource:
    """Exact samples of an analytic mixture teacher (data kind ``gmm``)."""

    def __init__(self, mixture, rand: StepRandom):
        self.mixture, self.rand = mixture, rand

    def batch(self, step: int, local: int):
        g = self.rand.generator(step, "real", device=self.mixture.means.device)
        x = self.mixture.sample(local * self.rand.world, generator=g)
        return self.rand.local_slice(x, local).to(self.rand.device), None

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class TeacherPoolSource:
    """Data-free "real" samples: a pool drawn once from the teacher with a multi-step sampler (cached in
    ``out_dir/teacher_pool.pt``, keyed by everything that made it: the teacher's state and guidance, sampler, steps,
    size, shape, classes and seed; another key draws a new pool), from which each step draws uniformly. With
    ``shared_dir`` (``data.pool_cache``) the pool is kept there under its key, shared by every run that would draw
    the same one. Several processes share the drawing (``draw_teacher_samples``): the same pool as one process."""

    def __init__(self, teacher, shape, rand: StepRandom, pool_size: int, sampler: str, num_steps: int,
                 cache_path: str, num_classes: int = 0, batch_size: int = 256, progress: bool = False,
                 shared_dir: str | None = None):
        from .cache_key import cache_key, load_keyed, save_keyed, shared_cache_path

        self.rand = rand
        key = cache_key(teacher, kind="teacher-pool", sampler=sampler, num_steps=int(num_steps),
                        pool_size=int(pool_size), shape=list(shape), num_classes=int(num_classes), seed=rand.seed,
                        guidance_scale=float(getattr(teacher, "guidance_scale", 1.0)))
        cache_path = shared_cache_path(cache_path, shared_dir, key)
        pool = load_keyed(cache_path, key)
        if pool is None:
            pool = draw_teacher_samples(teacher, shape, pool_size, sampler, num_steps, rand.seed, num_classes,
                                        batch_size, rand.device, progress, rand.rank, rand.world, cache_path)
            if rand.rank == 0:  # every rank draws the same pool (same seed); one writes the cache
                save_keyed(cache_path, key, pool)
        self.x, self.labels = pool["x"].to(rand.device), pool["labels"]
        self.labels = None if self.labels is None else self.labels.to(rand.device)

    def batch(self, step: int, local: int):
        idx = self.rand.randint(step, "real", local, len(self.x))
        return self.x[idx], None if self.labels is None else self.labels[idx]

    def state_dict(self):
        return {"pool_size": len(self.x)}  # a resumed run keeps its pool (fdistill.methods.distill)

    def load_state_dict(self, state):
        pass


DETERMINISTIC_SAMPLERS = ("heun", "euler", "ddim")  # as samplers.get gives them (no churn, eta = 0)


@torch.no_grad()
def draw_teacher_samples(teacher, shape, n, sampler, num_steps, seed, num_classes=0, batch_size=256, device="cpu",
                         progress=False, rank: int = 0, world: int = 1, part_path: str = ""):
    """``n`` teacher samples with a multi-step sampler (Karras schedule), seeded; labels uniform if conditional.
    With ``world`` processes and a deterministic sampler each runs the sampler on every ``world``-th batch only
    (every process still draws every batch's noise and labels, so the generator advances as in one process) and
    they meet through ``<part_path>.part<rank>`` files: the same samples as one process, ``world`` times faster. A
    stochastic sampler draws from the same generator, so there every process draws the whole pool."""
    import os

    import samplers
    from tqdm.auto import tqdm

    from .cache_key import barrier, gather_parts

    fn = samplers.get(sampler)
    sigmas = samplers.karras_sigmas(num_steps)
    share = world > 1 and sampler in DETERMINISTIC_SAMPLERS
    g = torch.Generator(device=device).manual_seed(seed + 7919)
    starts = range(0, n, batch_size)
    mine = {}
    for i, start in enumerate(tqdm(starts, desc="teacher samples", disable=not progress, leave=False)):
        b = min(batch_size, n - start)
        labels = torch.randint(num_classes, (b,), generator=g, device=device) if num_classes else None
        z = torch.randn((b, *shape), generator=g, device=device) * float(sigmas[0])
        if share and i % world != rank:
            continue
        mine[i] = {"x": fn(teacher, z, sigmas, cond=labels, generator=g).float().cpu(),
                   "labels": None if labels is None else labels.cpu()}
    parts = gather_parts(part_path, mine, len(starts), rank, world) if share else [mine[i] for i in range(len(starts))]
    if share:
        barrier(world)
        os.remove(f"{part_path}.part{rank}")
    return {"x": torch.cat([p["x"] for p in parts]),
            "labels": None if num_classes == 0 else torch.cat([p["labels"] for p in parts])}


class DatasetSource:
    """Samples of a data set through ``fdistill.data.InfiniteLoader`` (its position is checkpointed)."""

    def __init__(self, dataset, rand: StepRandom, local_batch: int):
        from .data import InfiniteLoader

        self.rand = rand
        self.loader = InfiniteLoader(dataset, local_batch, seed=rand.seed, rank=rand.rank, world_size=rand.world)

    def batch(self, step: int, local: int):
        x, labels = next(self.loader)
        return x.to(self.rand.device), None if labels is None else labels.to(self.rand.device)

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)


def make_dataset(dcfg):
    """The image data set of ``data.kind`` (digits or folder)."""
    from . import data

    if dcfg.kind == "digits":
        return data.DigitsDataset(resolution=dcfg.resolution, split="train")
    if dcfg.kind == "folder":
        return data.ImageFolderDataset(dcfg.path, resolution=dcfg.resolution)
    raise ValueError(f"data.kind={dcfg.kind!r} is not a data set; data sets: ['digits', 'folder']")
