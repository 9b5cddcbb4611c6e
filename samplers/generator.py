"""A multi-step teacher sampler as a generator, so a teacher is scored exactly like a one-step student.

    gen = MultiStepGenerator(teacher)              # Heun, 18 Karras levels = 35 network evaluations
    x = gen.to("cuda").sample(1000, seed=0)        # same conventions as fdistill.OneStepPipeline.sample
    gen.nfe                                        # network evaluations of that call (35)

``sample(n, seed, cond)`` follows ``OneStepPipeline.sample``: the class labels (if any) and then the starting noise
are drawn from a CPU ``torch.Generator`` seeded with ``seed`` and moved to the denoiser's device; images come back
clamped to [-1, 1], vectors raw. The schedule is Karras' (``samplers.karras_sigmas``) over the denoiser's own
``sigma_min`` / ``sigma_max`` when it has them, else 0.002 / 80.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from .schedules import karras_sigmas

DEFAULT_SIGMA_MIN, DEFAULT_SIGMA_MAX = 0.002, 80.0


class CountingDenoiser:
    """Calls ``denoiser`` and counts the calls in ``.calls`` (network evaluations of a whole batch): wrap a Denoiser
    with it to read a sampler's NFE."""

    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma, cond=None):
        self.calls += 1
        return self.denoiser(x, sigma, cond)


def module_device(module) -> torch.device:
    """Device of a module's first parameter or buffer (CPU when it has neither)."""
    tensors = itertools.chain(module.parameters(), module.buffers()) if isinstance(module, nn.Module) else ()
    first = next(iter(tensors), None)
    return first.device if first is not None else torch.device("cpu")


def sigma_range(denoiser) -> tuple[float, float]:
    """The denoiser's own ``(sigma_min, sigma_max)`` if it has them (diffusers VP tables, EDM), else 0.002 / 80."""
    lo, hi = getattr(denoiser, "sigma_min", None), getattr(denoiser, "sigma_max", None)
    if lo is None or hi is None:
        return DEFAULT_SIGMA_MIN, DEFAULT_SIGMA_MAX
    return float(lo), float(hi)


def infer_num_classes(denoiser) -> int:
    """Class labels a Denoiser takes (0: unconditional). ``MLPDenoiser``: ``num_classes``; ``EDMDenoiser``:
    ``label_dim``; a diffusers ``UNet2DModel`` in ``DiffusersDenoiser``: ``num_class_embeds - 1`` (fdistill's
    class-conditional UNets keep the last embedding for the null label)."""
    unet = getattr(denoiser, "unet", None)
    if unet is not None:
        return max(int(unet.config.get("num_class_embeds") or 0) - 1, 0)
    cfg = getattr(denoiser, "config", None)
    if cfg is None or not hasattr(cfg, "get"):
        return 0
    return int(cfg.get("num_classes") or cfg.get("label_dim") or 0)


class MultiStepGenerator:
    """A Denoiser sampled with a multi-step sampler of ``samplers.SAMPLERS``, exposing ``.sample(n, seed, cond)``.

    Args:
        denoiser: the teacher ``D(x, sigma, cond)``.
        sampler: a name in ``samplers.SAMPLERS`` (``heun``, ``euler``, ``euler_maruyama``, ``ddim``).
        num_steps: Karras noise levels before the final 0 (Heun: ``2 * num_steps - 1`` evaluations).
        sigma_min, sigma_max: schedule range (default: the denoiser's own, else 0.002 / 80); ``rho``: Karras' rho.
        num_classes: class labels of a conditional teacher (default: inferred, see ``infer_num_classes``).
        sampler_kwargs: extra sampler arguments (``eta`` of ``ddim``, ``s_churn`` of ``heun``, ...).

    ``nfe`` holds the network evaluations of the last ``sample`` call (per batch, not per image).
    """

    def __init__(self, denoiser, sampler: str = "heun", num_steps: int = 18, sigma_min: float | None = None,
                 sigma_max: float | None = None, rho: float = 7.0, num_classes: int | None = None,
                 sampler_kwargs: dict | None = None):
        from . import get

        self.denoiser = denoiser
        self.sampler_name = sampler
        self.sampler = get(sampler)
        own_min, own_max = sigma_range(denoiser)
        self.sigma_min = own_min if sigma_min is None else float(sigma_min)
        self.sigma_max = own_max if sigma_max is None else float(sigma_max)
        self.num_steps = int(num_steps)
        self.sigmas = karras_sigmas(self.num_steps, self.sigma_min, self.sigma_max, rho)
        if getattr(denoiser, "sample_shape", None) is None:
            raise TypeError(f"cannot tell the sample shape of {type(denoiser).__name__}: a Denoiser states it as its "
                            f"`sample_shape` property")
        self.shape = tuple(denoiser.sample_shape)
        self.num_classes = infer_num_classes(denoiser) if num_classes is None else int(num_classes)
        self.sampler_kwargs = dict(sampler_kwargs or {})
        self.nfe = 0

    @property
    def device(self) -> torch.device:
        return module_device(self.denoiser)

    @property
    def deterministic(self) -> bool:
        """Whether ``from_noise`` draws no randomness (``heun`` without churn, ``euler``, ``ddim`` with ``eta = 0``):
        its map ``z -> x`` is then a function of ``z`` alone, the same whatever the batch it is drawn in."""
        kw = self.sampler_kwargs
        return ((self.sampler_name == "heun" and not kw.get("s_churn", 0.0)) or self.sampler_name == "euler"
                or (self.sampler_name == "ddim" and not kw.get("eta", 0.0)))

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def to(self, device):
        """Move the denoiser; returns ``self``."""
        self.denoiser.to(device)
        return self

    def _labels(self, n: int, cond, g: torch.Generator):
        """``cond`` for ``n`` samples: random labels (conditional teachers) or ``None`` when not given."""
        if cond is None:
            return torch.randint(self.num_classes, (n,), generator=g) if self.num_classes > 0 else None
        if isinstance(cond, str) or (isinstance(cond, (list, tuple)) and cond and isinstance(cond[0], str)):
            raise ValueError("MultiStepGenerator takes class labels or a conditioning tensor, not prompts")
        cond = torch.as_tensor(cond)
        if not cond.is_floating_point():
            if self.num_classes == 0:
                raise ValueError("this teacher is unconditional: it takes no class labels (pass num_classes= if "
                                 "it is conditional)")
            cond = cond.long().reshape(-1)
        if cond.shape[0] != n:
            raise ValueError(f"cond has {cond.shape[0]} rows for n={n} samples")
        return cond

    def start(self, z: torch.Tensor) -> torch.Tensor:
        """The sampler's starting point ``mu + sigma_max z`` (MATH §0), with ``mu`` the denoiser's ``data_mean`` when it
        has one (vector data), else 0."""
        mean = getattr(self.denoiser, "data_mean", None)
        x = z * float(self.sigmas[0])
        return x if mean is None else x + mean.to(x)

    @torch.no_grad()
    def from_noise(self, z: torch.Tensor, cond=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """The sampler's map ``z -> x`` from the start ``mu + sigma_max z`` (deterministic for ``heun``, ``euler`` and
        ``ddim`` with ``eta=0``: the teacher's probability-flow map), raw (not clamped). ``nfe`` counts its calls."""
        counter = CountingDenoiser(self.denoiser)
        training = getattr(self.denoiser, "training", False)
        if isinstance(self.denoiser, nn.Module):
            self.denoiser.eval()
        try:
            x = self.sampler(counter, self.start(z), self.sigmas, cond=cond, generator=generator,
                             **self.sampler_kwargs)
        finally:
            if isinstance(self.denoiser, nn.Module):
                self.denoiser.train(training)
        self.nfe = counter.calls
        return x

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, cond=None) -> torch.Tensor:
        """``n`` samples from seed ``seed``: images ``(n, C, H, W)`` in ``[-1, 1]``, vectors ``(n, d)`` raw."""
        g = torch.Generator("cpu").manual_seed(int(seed))
        device = self.device
        labels = self._labels(n, cond, g)
        labels = labels.to(device) if labels is not None else None
        z = torch.randn((n, *self.shape), generator=g, dtype=torch.float32).to(device)
        noise_gen = torch.Generator(device).manual_seed(int(seed))  # stochastic samplers only
        x = self.from_noise(z, labels, noise_gen).float()
        return x.clamp(-1, 1) if self.is_image else x

    def __repr__(self) -> str:
        return (f"MultiStepGenerator({type(self.denoiser).__name__}, sampler={self.sampler_name!r}, "
                f"num_steps={self.num_steps}, sigma=[{self.sigma_min:.4g}, {self.sigma_max:.4g}], "
                f"num_classes={self.num_classes})")
