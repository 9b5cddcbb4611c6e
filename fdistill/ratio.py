"""The density ratio ``r = p_sigma / q_sigma`` from a discriminator, and its normalisation (MATH F3).

- ``Discriminator``: small heads over the features of a *frozen* network (the teacher by default, the fake score as an
  option). At the optimum of the non-saturating GAN loss its logit is ``log(p_sigma / q_sigma)``.
- Feature taps: ``register_taps(predicate_or_class, fn)`` tells the discriminator how to read features from a
  network; MLPDenoiser, DiffusersDenoiser (diffusers UNet2DModel / UNet2DConditionModel) and
  ClassifierFreeGuidance are built in.
- ``ratio_from_logit``, ``discriminator_loss``, ``generator_gan_loss``, ``r1_penalty``.
- ``RatioNormalizer``: the two-stage normalisation (per-sigma-bin EMA, then per global batch), all-reduced.
- ``exact_ratio``: the exact ``log(p_sigma / q_sigma)`` of two analytic densities, a drop-in for a discriminator.

Nothing here imports diffusers: the built-in taps match classes only once their modules are loaded.
"""
from __future__ import annotations

import math
import sys
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

TapFn = Callable[..., list]  # fn(net, x, sigma, cond) -> list of feature tensors (B, ...)

# ---------------------------------------------------------------------------------------------- feature taps
_TAPS: list[tuple[Callable[[object], bool], TapFn]] = []


def register_taps(predicate_or_class, fn: TapFn) -> None:
    """Teach the discriminator to read features from a network.

    ``predicate_or_class``: a class (matched with ``isinstance``) or a callable ``net -> bool``.
    ``fn(net, x, sigma, cond) -> list[Tensor]``: feature maps, each ``(B, ...)``, differentiable w.r.t. ``x``.
    Later registrations take precedence over earlier ones and over the built-ins.
    """
    if isinstance(predicate_or_class, type):
        cls = predicate_or_class
        predicate = lambda net: isinstance(net, cls)  # noqa: E731
    elif callable(predicate_or_class):
        predicate = predicate_or_class
    else:
        raise TypeError("register_taps needs a class or a predicate net -> bool")
    _TAPS.insert(0, (predicate, fn))


def find_taps(net) -> TapFn:
    """The tap function registered for ``net`` (a ``.features(x, sigma, cond)`` method is the fallback)."""
    for predicate, fn in _TAPS:
        if predicate(net):
            return fn
    if callable(getattr(net, "features", None)):
        return lambda n, x, sigma, cond: list(n.features(x, sigma, cond))
    raise TypeError(f"no feature taps for {type(net).__name__}; register them with "
                    "fdistill.ratio.register_taps(cls_or_predicate, fn(net, x, sigma, cond) -> list[Tensor])")


def _loaded_class(module: str, name: str):
    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def _is_instance_of(module: str, name: str):
    def predicate(net):
        cls = _loaded_class(module, name)
        return cls is not None and isinstance(net, cls)
    return predicate


class _StopForward(Exception):
    """Raised by a hook once the last tapped block has run, so the decoder half of a UNet is skipped."""


def unet_taps(net, x, sigma, cond=None) -> list[torch.Tensor]:
    """Outputs of every ``down_blocks[i]`` and the ``mid_block`` of a DiffusersDenoiser's UNet (forward hooks)."""
    unet = net.unet
    blocks = list(unet.down_blocks) + ([unet.mid_block] if getattr(unet, "mid_block", None) is not None else [])
    feats: list[torch.Tensor] = []

    def hook(module, inputs, output):
        feats.append(output[0] if isinstance(output, tuple) else output)
        if module is blocks[-1]:
            raise _StopForward

    handles = [b.register_forward_hook(hook) for b in blocks]
    try:
        net(x, sigma, cond)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return feats


def _guidance_taps(net, x, sigma, cond=None):
    """Classifier-free guidance: the features of the wrapped (conditional) denoiser."""
    inner = net.denoiser
    return find_taps(inner)(inner, x, sigma, cond)


register_taps(_is_instance_of("fdistill.networks.mlp", "MLPDenoiser"),
              lambda net, x, sigma, cond=None: list(net.features(x, sigma, cond)))
register_taps(_is_instance_of("fdistill.networks.diffusers_adapter", "DiffusersDenoiser"), unet_taps)
register_taps(_is_instance_of("fdistill.networks.guidance", "ClassifierFreeGuidance"), _guidance_taps)


# ---------------------------------------------------------------------------------------------- discriminator
def _groups(c: int) -> int:
    return math.gcd(c, 32)


def make_head(shape: Sequence[int], hidden: int) -> nn.Module:
    """A small head ``(B, *shape) -> (B,)`` for one feature map: vector ``(C,)``, tokens ``(L, C)`` or ``(C, H, W)``."""
    shape = tuple(shape)
    if len(shape) == 1:
        return nn.Sequential(nn.LayerNorm(shape[0]), nn.Linear(shape[0], hidden), nn.SiLU(), nn.Linear(hidden, 1),
                             nn.Flatten(0))
    if len(shape) == 2:
        return _TokenHead(shape[1], hidden)
    if len(shape) == 3:
        c, h, w = shape
        down = nn.Conv2d(c, hidden, 4, 2, 1) if min(h, w) >= 4 else nn.Conv2d(c, hidden, 3, 1, 1)
        return nn.Sequential(down, nn.GroupNorm(_groups(hidden), hidden), nn.SiLU(), nn.Conv2d(hidden, 1, 1),
                             _SpatialMean())
    raise ValueError(f"no head for a feature map of shape {shape}; expected (C,), (L, C) or (C, H, W)")


class _SpatialMean(nn.Module):
    def forward(self, x):
        return x.flatten(1).mean(1)


class _TokenHead(nn.Module):
    def __init__(self, c: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1).mean(1)


class Discriminator(nn.Module):
    """``logit(x_sigma, sigma, cond) = sum_k head_k(feature_k)`` over the features of a frozen network (MATH F3).

    Args:
        feature_net: the frozen network (teacher by default, or the fake score). It is **not** a submodule:
            ``parameters()`` / ``state_dict()`` hold the heads only and ``.to()`` does not move it. Gradients w.r.t.
            ``x`` flow through it (the generator's GAN term needs them); its own parameters are left as they are.
        feature_shapes: per-sample shape of every tapped feature (``make_discriminator`` probes them).
        hidden: width of each head.
        taps: ``fn(net, x, sigma, cond) -> list[Tensor]``; default: the registered taps for ``feature_net``.
    """

    def __init__(self, feature_net: nn.Module, feature_shapes: Sequence[Sequence[int]], hidden: int = 128,
                 taps: TapFn | None = None):
        super().__init__()
        self._feature_net = (feature_net,)  # a tuple hides it from nn.Module registration
        self.taps = taps or find_taps(feature_net)
        self.feature_shapes = [tuple(s) for s in feature_shapes]
        self.heads = nn.ModuleList(make_head(s, hidden) for s in self.feature_shapes)

    @property
    def feature_net(self) -> nn.Module:
        return self._feature_net[0]

    def features(self, x, sigma, cond=None) -> list[torch.Tensor]:
        feats = self.taps(self.feature_net, x, sigma, cond)
        if len(feats) != len(self.heads):
            raise RuntimeError(f"the taps gave {len(feats)} features but the discriminator has {len(self.heads)} heads")
        return feats

    def forward(self, x_sigma, sigma, cond=None) -> torch.Tensor:
        """The logit ``(B,)``: at the optimum ``log(p_sigma / q_sigma)`` (real = teacher / data side)."""
        out = 0
        for head, f in zip(self.heads, self.features(x_sigma, sigma, cond)):
            p = next(head.parameters())
            out = out + head(f.to(p.dtype))
        return out


def make_discriminator(feature_net: nn.Module, x_example, sigma_example, cond_example=None, hidden: int = 128,
                       taps: TapFn | None = None) -> Discriminator:
    """Build a Discriminator, probing the feature shapes with one forward pass (no grad) of ``feature_net``."""
    taps = taps or find_taps(feature_net)
    with torch.no_grad():
        feats = taps(feature_net, x_example, sigma_example, cond_example)
    disc = Discriminator(feature_net, [f.shape[1:] for f in feats], hidden=hidden, taps=taps)
    return disc.to(x_example.device)


# ---------------------------------------------------------------------------------------------- losses, ratio
def discriminator_loss(logit_real: torch.Tensor, logit_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss ``softplus(-l(real)) + softplus(l(fake))`` (MATH F3); optimum ``l = log p/q``."""
    return F.softplus(-logit_real).mean() + F.softplus(logit_fake).mean()


def generator_gan_loss(logit_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator GAN term ``softplus(-l(fake))`` (MATH F2)."""
    return F.softplus(-logit_fake).mean()


def r1_penalty(disc, x_real, sigma, cond=None, noise_scale: float = 0.1, generator=None) -> torch.Tensor:
    """Approximate R1 (MATH F3): ``mean ||l(x_real) - l(x_real + noise_scale * n)||^2``, unweighted (times gamma)."""
    n = torch.randn(x_real.shape, generator=generator, device=x_real.device, dtype=x_real.dtype)
    return ((disc(x_real, sigma, cond) - disc(x_real + noise_scale * n, sigma, cond)) ** 2).mean()


def ratio_from_logit(logit: torch.Tensor, logit_clamp: float | None = 10.0,
                     ratio_clamp: tuple[float, float] | None = (0.1, 20.0)) -> torch.Tensor:
    """``r = clamp(exp(clamp(l, -c, c)), lo, hi)`` (MATH F3); ``None`` switches a clamp off."""
    if logit_clamp is not None:
        logit = logit.clamp(-logit_clamp, logit_clamp)
    r = logit.exp()
    if ratio_clamp is not None:
        r = r.clamp(*ratio_clamp)
    return r


def exact_ratio(p, q) -> Callable:
    """``logit_fn(x, sigma, cond) = log p_sigma(x) - log q_sigma(x)`` for analytic densities with
    ``.log_prob(x, sigma)`` (e.g. GaussianMixture). Objectives accept it in place of a discriminator (tests)."""

    def logit_fn(x, sigma, cond=None):
        return p.log_prob(x, sigma) - q.log_prob(x, sigma)

    return logit_fn


# ---------------------------------------------------------------------------------------------- normalisation
def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over processes when torch.distributed is initialised (in place, returned); identity otherwise."""
    if _dist_ready():
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


class RatioNormalizer(nn.Module):
    """Two-stage normalisation of MATH F3, with every statistic all-reduced in fp32 and kept on device.

    1. ``normalize_ratio``: ``r <- r / (EMA-mean of r in its sigma bin + eps)``; ``num_bins`` bins uniform in
       ``log sigma`` over ``[sigma_min, sigma_max]`` (values outside go to the end bins). A bin's first batch sets
       its mean; later batches update it as ``mean <- ema_decay * mean + (1 - ema_decay) * batch_mean``.
    2. ``normalize_h``: ``h <- h / (mean of h over the global batch + eps)``.

    ``bin_mean`` and ``bin_count`` are buffers (saved in checkpoints). ``enabled=False`` makes both identities.
    """

    def __init__(self, num_bins: int = 10, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 ema_decay: float = 0.99, eps: float = 1e-6, enabled: bool = True):
        super().__init__()
        if num_bins < 1 or not 0 < sigma_min < sigma_max or not 0 <= ema_decay < 1:
            raise ValueError("need num_bins >= 1, 0 < sigma_min < sigma_max and 0 <= ema_decay < 1")
        self.num_bins, self.ema_decay, self.eps, self.enabled = int(num_bins), float(ema_decay), float(eps), enabled
        edges = torch.linspace(math.log(sigma_min), math.log(sigma_max), num_bins + 1)
        self.register_buffer("log_sigma_edges", edges)
        self.register_buffer("bin_mean", torch.ones(num_bins))
        self.register_buffer("bin_count", torch.zeros(num_bins, dtype=torch.long))

    def bin_index(self, sigma: torch.Tensor) -> torch.Tensor:
        """Bin of each sigma ``(B,)`` (long)."""
        inner = self.log_sigma_edges[1:-1]
        return torch.bucketize(sigma.float().log().contiguous(), inner.contiguous())

    @torch.no_grad()
    def update(self, r: torch.Tensor, bins: torch.Tensor) -> None:
        """EMA update of the per-bin means with the all-reduced per-bin sums and counts of this batch."""
        stats = torch.zeros(2, self.num_bins, device=r.device, dtype=torch.float32)
        stats[0].index_add_(0, bins, r.float())
        stats[1].index_add_(0, bins, torch.ones_like(r, dtype=torch.float32))
        all_reduce_sum(stats)
        seen = stats[1] > 0
        batch_mean = stats[0] / stats[1].clamp(min=1.0)
        ema = self.ema_decay * self.bin_mean + (1 - self.ema_decay) * batch_mean
        new = torch.where(self.bin_count > 0, ema, batch_mean)
        self.bin_mean.copy_(torch.where(seen, new, self.bin_mean))
        self.bin_count.add_(stats[1].round().long())

    def normalize_ratio(self, r: torch.Tensor, sigma, update: bool = True) -> torch.Tensor:
        """Stage 1 (MATH F3): ``r / (EMA-mean of r in its sigma bin + eps)``; ``r`` is ``(B,)``."""
        if not self.enabled:
            return r
        sigma = torch.as_tensor(sigma, device=r.device).reshape(-1).expand(r.shape[0])
        bins = self.bin_index(sigma).to(self.bin_mean.device)
        if update:
            self.update(r.detach().reshape(-1), bins)
        return r / (self.bin_mean[bins].to(r.dtype) + self.eps)

    def h_scale(self, h: torch.Tensor) -> torch.Tensor:
        """``1 / (global-batch mean of h + eps)`` as a 0-d tensor (detached)."""
        stats = torch.stack([h.detach().float().sum(), torch.full((), float(h.numel()), device=h.device)])
        all_reduce_sum(stats)
        return (1.0 / (stats[0] / stats[1] + self.eps)).to(h.dtype)

    def normalize_h(self, h: torch.Tensor) -> torch.Tensor:
        """Stage 2 (MATH F3): ``h / (mean over the global batch of h + eps)``."""
        if not self.enabled:
            return h
        return h * self.h_scale(h)


# ---------------------------------------------------------------------------------------------- for the objectives
def estimate_ratio(logit_fn, x_sigma, sigma, cond=None, *, with_grad: bool = False, logit_clamp=10.0,
                   ratio_clamp=(0.1, 20.0), normalizer: RatioNormalizer | None = None):
    """``(r, logit)`` at ``x_sigma``: ``r`` detached ``(B,)``, clamped and stage-1 normalised (MATH F3);
    ``logit`` keeps its graph (for the generator's GAN term) when ``with_grad``, else it is detached.

    ``logit_fn`` is a Discriminator or any callable ``(x_sigma, sigma, cond) -> log r`` (e.g. ``exact_ratio``).
    """
    if logit_fn is None:
        raise ValueError("this objective needs a density ratio: pass discriminator= (a Discriminator or any "
                         "logit_fn(x_sigma, sigma, cond) -> log r)")
    if with_grad:
        logit = logit_fn(x_sigma, sigma, cond)
    else:
        with torch.no_grad():
            logit = logit_fn(x_sigma, sigma, cond)
    r = ratio_from_logit(logit.detach().reshape(-1), logit_clamp, ratio_clamp)
    if normalizer is not None:
        r = normalizer.normalize_ratio(r, sigma)
    return r, logit
