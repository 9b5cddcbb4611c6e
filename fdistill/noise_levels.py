"""Noise-level distributions: one object per distribution, used alike by the generator step, the discriminator,
the fake-score update and the warm-start fit (MATH §2, §4).

Every distribution has ``sample(n, generator=None, device=None) -> (n,)`` float32 and the range it covers,
``sigma_min`` / ``sigma_max``. ``make(kind, sigma_min, sigma_max, sigma_data)`` builds one by name from a config:

==============  =============================================================================================
``karras``      uniform indices ``index_range`` of a ``num_levels`` Karras grid (rho = 7): f-distill, DMD2
``karras_ramp`` the continuous Karras ramp at ``t ~ U[0, t_max]`` (t = 1 at ``sigma_max``): SiD, Uni-Instruct
``loguniform``  ``ln sigma ~ U[ln sigma_min, ln sigma_max]``: equal weight per octave
``lognormal``   EDM's training levels ``ln(sigma / sigma_data) ~ N(p_mean + ln 2, p_std^2)`` (MATH §4); at
                ``sigma_data = 0.5`` exactly EDM's ``ln sigma ~ N(-1.2, 1.2^2)``
``flow_time``   flow matching's logit-normal time with SD3 / Flux's shift, in sigma (MATH N1):
                ``ln sigma ~ N(mean + ln shift, std^2)``, clamped to ``[sigma_min, sigma_max]``
==============  =============================================================================================
"""
from __future__ import annotations

import math

import torch


def _where(generator, device):
    return generator.device if generator is not None else device


class KarrasGrid:
    """Uniform indices ``index_range[0] .. index_range[1]`` (inclusive) of the ``num_levels``-step Karras grid,
    index 0 = ``sigma_max`` (MATH F2)."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, num_levels: int = 1000,
                 index_range=(2, 998)):
        lo, hi = int(index_range[0]), int(index_range[1])
        if not 0 <= lo <= hi < num_levels:
            raise ValueError(f"index_range must satisfy 0 <= lo <= hi < num_levels={num_levels}; got {index_range}")
        _check_range(sigma_min, sigma_max)
        self.sigma_min, self.sigma_max, self.rho, self.num_levels = float(sigma_min), float(sigma_max), rho, num_levels
        self.index_range = (lo, hi)
        self._grids: dict[str, torch.Tensor] = {}

    def grid(self, device=None) -> torch.Tensor:
        """The Karras grid (float32, index 0 = sigma_max), cached per device so sampling never copies."""
        from samplers.schedules import karras_sigmas

        key = str(torch.device(device or "cpu"))
        if key not in self._grids:
            grid = karras_sigmas(self.num_levels, self.sigma_min, self.sigma_max, self.rho, append_zero=False)
            self._grids[key] = grid.float().to(device)
        return self._grids[key]

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        lo, hi = self.index_range
        idx = torch.randint(lo, hi + 1, (n,), generator=generator, device=_where(generator, device))
        return self.grid(idx.device)[idx].to(device)

    def __repr__(self) -> str:
        return (f"KarrasGrid({self.sigma_min:g}..{self.sigma_max:g}, levels={self.num_levels}, "
                f"index_range={self.index_range})")


class KarrasRamp:
    """``sigma = (s_min^(1/rho) + t (s_max^(1/rho) - s_min^(1/rho)))^rho``, ``t ~ U[0, t_max]`` (MATH U3)."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, t_max: float = 0.8):
        if not 0 < t_max <= 1:
            raise ValueError(f"t_max must be in (0, 1]; got {t_max}")
        _check_range(sigma_min, sigma_max)
        self.sigma_min, self.sigma_max, self.rho, self.t_max = float(sigma_min), float(sigma_max), rho, float(t_max)

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        from samplers.schedules import karras_sigma_at

        t = torch.rand(n, generator=generator, device=_where(generator, device), dtype=torch.float64) * self.t_max
        return karras_sigma_at(1 - t, self.sigma_min, self.sigma_max, self.rho).float().to(device)

    def __repr__(self) -> str:
        return f"KarrasRamp({self.sigma_min:g}..{self.sigma_max:g}, t_max={self.t_max})"


class LogUniform:
    """``ln sigma ~ U[ln sigma_min, ln sigma_max]``."""

    def __init__(self, sigma_min: float, sigma_max: float):
        _check_range(sigma_min, sigma_max)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        u = torch.rand(n, generator=generator, device=_where(generator, device), dtype=torch.float64)
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return (lo + u * (hi - lo)).exp().float().to(device)

    def __repr__(self) -> str:
        return f"LogUniform({self.sigma_min:g}..{self.sigma_max:g})"


class LogNormal:
    """EDM's training noise levels scaled to the data: ``ln(sigma / sigma_data) ~ N(p_mean - ln 0.5, p_std^2)``
    (MATH §4). ``sigma_min`` / ``sigma_max`` report the central 99.7 % (three standard deviations)."""

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float = 0.5):
        if p_std <= 0 or sigma_data <= 0:
            raise ValueError(f"need p_std > 0 and sigma_data > 0; got {p_std}, {sigma_data}")
        self.p_mean, self.p_std, self.sigma_data = float(p_mean), float(p_std), float(sigma_data)
        self.log_mean = self.p_mean + math.log(self.sigma_data / 0.5)

    @property
    def sigma_min(self) -> float:
        return math.exp(self.log_mean - 3 * self.p_std)

    @property
    def sigma_max(self) -> float:
        return math.exp(self.log_mean + 3 * self.p_std)

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        z = torch.randn(n, generator=generator, device=_where(generator, device))
        return (z * self.p_std + self.log_mean).exp().to(device)

    def __repr__(self) -> str:
        return f"LogNormal(p_mean={self.p_mean}, p_std={self.p_std}, sigma_data={self.sigma_data:g})"


class FlowTime:
    """Flow matching's time ``t = sigmoid(mean + std n)``, shifted ``t' = shift t / (1 + (shift - 1) t)``, as a
    noise level ``sigma = t' / (1 - t')`` clamped to ``[sigma_min, sigma_max]`` (MATH N1: ``ln sigma ~ N(mean +
    ln shift, std^2)``). ``sample_time`` gives ``t'`` itself."""

    def __init__(self, sigma_min: float, sigma_max: float, mean: float = 0.0, std: float = 1.0, shift: float = 1.0):
        _check_range(sigma_min, sigma_max)
        if std <= 0 or shift <= 0:
            raise ValueError(f"need std > 0 and shift > 0; got {std}, {shift}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.mean, self.std, self.shift = float(mean), float(std), float(shift)

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        z = torch.randn(n, generator=generator, device=_where(generator, device), dtype=torch.float64)
        log_sigma = self.mean + math.log(self.shift) + self.std * z  # = logit(t'), MATH N1
        return log_sigma.exp().clamp(self.sigma_min, self.sigma_max).float().to(device)

    def sample_time(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """The flow time ``t' = sigma / (1 + sigma)`` of ``sample``'s levels."""
        sigma = self.sample(n, generator, device).double()
        return (sigma / (1 + sigma)).float()

    def __repr__(self) -> str:
        return (f"FlowTime({self.sigma_min:g}..{self.sigma_max:g}, mean={self.mean}, std={self.std}, "
                f"shift={self.shift})")


KINDS = ("karras", "karras_ramp", "loguniform", "lognormal", "flow_time")


class Truncated:
    """``levels`` conditioned on ``sigma <= sigma_cap``: draws of ``levels`` with the ones above the cap left out
    until ``n`` remain (for a Karras grid, uniform over its indices at or below the cap). The GAN term's own noise
    levels (``objective.gan_sigma_max``, MATH F2). Each round reads how many were kept (one host sync per round on
    a GPU, about 1 / keep-rate rounds per step): small beside the step's network passes, and one law for every
    distribution with one random stream."""

    MAX_ROUNDS = 200

    def __init__(self, levels, sigma_cap: float):
        if not sigma_cap > levels.sigma_min:
            raise ValueError(f"the cap sigma_cap={sigma_cap:g} must be above the distribution's sigma_min="
                             f"{levels.sigma_min:g} ({levels!r})")
        self.levels, self.sigma_cap = levels, float(sigma_cap)
        self.sigma_min, self.sigma_max = levels.sigma_min, min(levels.sigma_max, self.sigma_cap)

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        kept, count = [], 0
        for _ in range(self.MAX_ROUNDS):
            s = self.levels.sample(max(n, 1), generator, device)
            s = s[s <= self.sigma_cap]
            kept.append(s)
            count += s.numel()
            if count >= n:
                return torch.cat(kept)[:n]
        raise RuntimeError(f"{self!r}: fewer than {n} of {self.MAX_ROUNDS} x {max(n, 1)} draws fell at or below the "
                           f"cap; raise the cap")

    def __repr__(self) -> str:
        return f"Truncated({self.levels!r}, sigma <= {self.sigma_cap:g})"


def make(kind: str, sigma_min: float, sigma_max: float, sigma_data: float = 0.5, **kwargs):
    """A distribution by name (``KINDS``) over ``[sigma_min, sigma_max]``; ``lognormal`` takes ``sigma_data``."""
    if kind == "karras":
        return KarrasGrid(sigma_min, sigma_max, **kwargs)
    if kind == "karras_ramp":
        return KarrasRamp(sigma_min, sigma_max, **kwargs)
    if kind == "loguniform":
        return LogUniform(sigma_min, sigma_max)
    if kind == "lognormal":
        return LogNormal(sigma_data=sigma_data, **kwargs)
    if kind == "flow_time":
        return FlowTime(sigma_min, sigma_max, **kwargs)
    raise ValueError(f"unknown noise-level distribution {kind!r}; valid: {list(KINDS)}")


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max; got {sigma_min}, {sigma_max}")
