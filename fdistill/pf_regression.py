"""The teacher's probability-flow map and regressions onto it (MATH R1): the map itself (``flow_sampler``), the
distiller's warm start (``fit_flow_map``), the keyed pair pool of its regression term (``FlowPairPool``), and the loss
of the supervised ceiling (``task=regress``, ``fdistill.methods.regress``; Luhman & Luhman 2021, "knowledge
distillation"), which shows what the generator architecture can represent, so distillation can be read against it.

The ceiling's step draws noise ``z`` and its teacher sample ``x = PF(z)``: ``data.sampler`` (default Heun) with
``data.num_steps`` Karras levels over the teacher's range, started at ``mu + sigma_max z`` (MATH §0), and minimises
``mean ||G(z) - x||^2`` with ``G(z) = D_gen(mu + sigma_init z, sigma_init)``, at the learning rate
``network.flow_fit_lr`` under ``train.lr_schedule`` for ``train.steps``. ``fit_flow_map`` is the same regression as the
distiller's warm start (``network.flow_fit_steps``). Pairs are drawn fresh every step
(``2 num_steps - 1`` teacher evaluations per sample for Heun): cheap for mixture teachers, the price of an exact
target for networks.
"""
from __future__ import annotations

import torch

from .build import guided
from .denoiser import one_step
from .optim import FLOW_MAP_BETAS, REGRESSION_BETAS


def flow_sampler(teacher, cfg, null_cond=None, num_classes: int | None = None):
    """The teacher's probability-flow map ``z -> x`` (``data.sampler``, ``data.num_steps`` Karras levels over the
    teacher's range, started at ``mu + sigma_max z``)."""
    import samplers

    lo, hi = samplers.generator.sigma_range(teacher)
    return samplers.MultiStepGenerator(guided(teacher, cfg.teacher, null_cond), cfg.data.sampler, cfg.data.num_steps,
                                       sigma_min=lo, sigma_max=hi, num_classes=num_classes)


def squared_error(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean ||x - target||^2`` over all elements: MATH R1's ``L_reg`` for ``x = G(z)``, ``target = PF(z)``."""
    return ((x - target) ** 2).mean()


def flow_loss(gen, z, target, sigma_init: float, cond=None, mean=None) -> torch.Tensor:
    """``mean ||G(z) - PF(z)||^2`` over all elements (the regression of the module docstring)."""
    return squared_error(one_step(gen, z, sigma_init, cond, mean=mean).float(), target)


def target_chunk(batch_size: int, shape: tuple, elements: int = 65536, most: int = 16) -> int:
    """How many steps' targets ``fit_flow_map`` draws in one sampler call: up to ``most`` while they hold at most
    ``elements`` numbers (small samples, where a sampler call's cost is its per-call overhead: mixtures), else 1."""
    import math

    return max(1, min(most, elements // (batch_size * math.prod(shape))))


def num_conditions(conditioner) -> int:
    """How many conditions ``conditioner`` indexes (``fdistill.conditioning``; ``None``: unconditional, 0)."""
    return int(getattr(conditioner, "num_conditions", 0) or 0)


def draw_indices(n: int, conditioner, generator: torch.Generator) -> torch.Tensor | None:
    """``n`` uniform condition indices (class labels, prompt indices) from ``generator``, drawn after the noises they
    go with; ``None`` (and nothing drawn, so an unconditional fit's noises are those it always had) without
    conditions."""
    k = num_conditions(conditioner)
    return torch.randint(k, (n,), generator=generator) if k > 0 else None


def cat_conditions(conds: list):
    """The conditions of several batches as one (``None`` for an unconditional teacher's)."""
    return None if conds[0] is None else torch.cat(conds)


def condition_of(conditioner, index):
    """The conditions of ``index`` (``None`` stays ``None``)."""
    return None if index is None else conditioner.condition(index)


def fit_flow_map(gen, flow, sigma_init: float, steps: int, batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
                 progress: bool = False, betas: tuple[float, float] = FLOW_MAP_BETAS, conditioner=None):
    """Warm start of a one-step generator by the regression above (DMD's regression loss used alone, before
    distillation): ``steps`` Adam steps on fresh pairs, learning rate cosine-decayed to 0. A conditional teacher
    (``conditioner`` with ``num_conditions > 0``: class labels, prompts) gives each pair a uniform condition ``c`` and
    the pair ``(z, c) -> Phi(z, c)``. Returns ``gen``, with no gradient left on it."""
    import math

    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(gen.parameters(), lr=lr, betas=tuple(betas))
    mean = getattr(gen, "data_mean", None)
    shape = tuple(flow.shape)
    chunk = target_chunk(batch_size, shape)
    for i in tqdm(range(steps), desc="fit flow map", disable=not progress, leave=False):
        if i % chunk == 0:  # the next steps' noises, drawn in order as one per step, through one sampler call
            zs, cs = [], []
            for _ in range(min(chunk, steps - i)):
                zs.append(torch.randn((batch_size, *shape), generator=g))
                cs.append(condition_of(conditioner, draw_indices(batch_size, conditioner, g)))
            targets = flow.from_noise(torch.cat(zs), cat_conditions(cs)).float().split(batch_size)
        z, c, target = zs[i % chunk], cs[i % chunk], targets[i % chunk]
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * i / steps))
        loss = flow_loss(gen, z, target, sigma_init, c, mean=mean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    gen.zero_grad(set_to_none=True)  # no gradient left behind: a fit loaded from the cache has none either
    return gen


class FlowPairPool:
    """DMD's paired set: ``n`` noises ``z`` (with a ``conditioner`` of ``num_conditions > 0``: and uniform condition
    indices ``c``, class labels or prompts) and their probability-flow samples ``Phi(z, c)`` (``flow.from_noise``),
    drawn once with ``seed`` and cached at ``cache_path`` keyed by everything that made them (the teacher's state, the
    flow map's sampler and levels, ``n``, the shape, the conditions and the seed; another key draws a new pool).
    It is drawn in chunks of ``CHUNK`` pairs, each seeded by its index, which ``world`` processes share
    (``cache_key.build_cached``): the same pool for any number of processes, each drawing ``1 / world`` of it.
    ``batch`` takes a step's pairs uniformly from the step's own stream (exact resume)."""

    CHUNK = 64

    def __init__(self, flow, teacher, n: int, seed: int, cache_path: str, device="cpu", rank: int = 0,
                 world: int = 1, progress: bool = False, conditioner=None):
        from .cache_key import build_cached, cache_key
        from .step_random import StepRandom

        shape = tuple(flow.shape)
        conditional = num_conditions(conditioner) > 0
        conds = conditioner.condition_key if conditional else {}  # unconditional pools: no condition in the key
        key = cache_key(teacher, kind="flow-pairs", flow=repr(flow), flow_sigmas=flow.sigmas.tolist(), n=int(n),
                        shape=list(shape), seed=int(seed), chunk=self.CHUNK, **conds)
        chunk_seeds = StepRandom(seed)

        def make_chunk(k):
            g = chunk_seeds.generator(k, "regression-pairs")
            z = torch.randn((min(self.CHUNK, n - k * self.CHUNK), *shape), generator=g)
            c = draw_indices(len(z), conditioner, g)
            x = flow.from_noise(z.to(device), condition_of(conditioner, c)).float().cpu()
            return {"z": z, "x": x} if c is None else {"z": z, "x": x, "c": c}

        pool = build_cached(cache_path, key, -(-int(n) // self.CHUNK), make_chunk, rank, world, progress,
                            "regression pairs")
        self.z, self.x = pool["z"].to(device), pool["x"].to(device)
        c = pool.get("c")  # condition indices, on the device: a step's batch takes them with no host sync
        self.c = None if c is None else c.to(device)
        self.conditioner = conditioner

    def __len__(self) -> int:
        return len(self.z)

    def batch(self, rand, step: int, local: int):
        """This process's slice of the step's pairs: ``(z, c, Phi(z, c))`` with ``c`` the conditions (labels,
        prompt embeddings; None for an unconditional teacher), stream ``"regression/pairs"``."""
        idx = rand.randint(step, "regression/pairs", local, len(self.z))
        c = None if self.c is None else condition_of(self.conditioner, self.c[idx]).to(self.z.device)
        return self.z[idx], c, self.x[idx]


def warm_start_key(gen, teacher, **settings) -> str:
    """The cache key of a flow-map warm start: everything that makes it (the generator's weights before the fit, the
    teacher's state, the sampler and fit settings; ``fdistill.cache_key``)."""
    from .cache_key import cache_key

    return cache_key(gen, teacher, **settings)


def cached_fit_flow_map(gen, teacher, flow, sigma_init: float, steps: int, batch_size: int, lr: float, seed: int,
                        cache_dir: str = "", progress: bool = False, betas: tuple[float, float] = FLOW_MAP_BETAS,
                        conditioner=None):
    """``fit_flow_map``, reusing a finished fit from ``cache_dir`` (``""``: no cache) keyed by ``warm_start_key``; a
    new fit is written there atomically. Runs that share teacher, network, seed and fit settings (students of several
    divergences) fit once."""
    import os

    from safetensors.torch import load_file, save_file

    if not cache_dir:
        return fit_flow_map(gen, flow, sigma_init, steps, batch_size, lr, seed, progress, betas, conditioner)
    betas = tuple(float(b) for b in betas)
    # fits with (0.9, 0.999), the only betas until network.flow_fit_betas existed, keep their keys (no betas in them);
    # any other betas, the default FLOW_MAP_BETAS included, is part of the key
    extra = {} if betas == REGRESSION_BETAS else {"betas": list(betas)}
    if num_conditions(conditioner) > 0:  # unconditional fits keep their keys
        extra.update(conditioner.condition_key)
    key = warm_start_key(gen, teacher, sigma_init=sigma_init, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                         flow=repr(flow), flow_sigmas=flow.sigmas.tolist(), **extra)
    path = os.path.join(cache_dir, f"flow-fit-{key}.safetensors")
    if os.path.isfile(path):
        gen.load_state_dict(load_file(path))
        return gen
    fit_flow_map(gen, flow, sigma_init, steps, batch_size, lr, seed, progress, betas, conditioner)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    save_file({k: v.detach().cpu().contiguous() for k, v in gen.state_dict().items()}, tmp)
    os.replace(tmp, path)
    return gen
