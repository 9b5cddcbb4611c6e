"""Scale from the teacher (MATH §0): the data scale that every network built for a teacher and every noise-level
distribution derives from, so that a mixture, the same mixture scaled by ``c`` and shifted by ``m`` train alike.

A teacher's bundle (``fdistill.teachers.TeacherBundle.scale``) gives its ``DataScale``:

- Gaussian mixtures, exactly (``DataScale.from_mixture``): ``sigma_data`` = RMS standard deviation per element about
  the mean, ``mean`` = the mixture's mean, training noise levels ``[LOW * finest std, HIGH * sigma_data]``;
- network denoisers (``teacher_scale``, which also gives a mixture's exact scale) that carry their own range (EDM networks: 0.002 / 80; diffusers VP tables: the table's ends) and
  ``sigma_data`` (EDM: 0.5): those; images are taken as centred (``mean = None``);
- anything else: estimated from samples (``DataScale.from_samples``) with EDM's range in units of ``sigma_data``
  (``0.002 / 0.5`` to ``80 / 0.5`` times ``sigma_data``).

Config keys override each part: ``network.sigma_data``, ``network.sigma_init``, ``objective.sigma_min`` /
``sigma_max``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

# training noise levels of a mixture teacher, relative to its finest component std and to sigma_data
MIXTURE_LOW, MIXTURE_HIGH = 0.1, 10.0
# EDM's range in units of sigma_data (0.002 and 80 at sigma_data = 0.5)
EDM_LOW, EDM_HIGH = 0.002 / 0.5, 80.0 / 0.5


@dataclass(frozen=True)
class DataScale:
    """``sigma_data``: RMS standard deviation per element; ``mean``: per-element mean (vectors) or ``None`` (0);
    ``sigma_min`` / ``sigma_max``: the range of the training noise levels (and ``sigma_max`` is the default
    ``sigma_init`` of the one-step generator)."""

    sigma_data: float
    mean: tuple | None
    sigma_min: float
    sigma_max: float

    @classmethod
    def from_mixture(cls, gmm) -> "DataScale":
        sd = gmm.sigma_data
        mean = tuple(float(v) for v in gmm.data_mean.reshape(-1)) if len(gmm.event_shape) == 1 else None
        return cls(sd, mean, MIXTURE_LOW * gmm.finest_scale, MIXTURE_HIGH * sd)

    @classmethod
    def from_samples(cls, x: torch.Tensor, centred: bool | None = None) -> "DataScale":
        """From samples ``(n, ...)``: ``sigma_data`` is the RMS per-element standard deviation; vectors keep their
        mean, images (``centred``; default: more than 64 elements) are taken as centred."""
        x = x.double().reshape(len(x), -1)
        centred = x.shape[1] > 64 if centred is None else centred
        sd = float(x.var(0).mean().sqrt())
        mean = None if centred else tuple(x.mean(0).tolist())
        return cls(sd, mean, EDM_LOW * sd, EDM_HIGH * sd)

    @property
    def mean_tensor(self) -> torch.Tensor | None:
        return None if self.mean is None else torch.tensor(self.mean, dtype=torch.float32)

    def with_overrides(self, sigma_data=None, sigma_min=None, sigma_max=None) -> "DataScale":
        """This scale with the config's explicit values (``None`` keeps the derived one)."""
        changes = {k: float(v) for k, v in dict(sigma_data=sigma_data, sigma_min=sigma_min,
                                                  sigma_max=sigma_max).items() if v is not None}
        return replace(self, **changes)


def teacher_scale(teacher, samples=None) -> DataScale:
    """The ``DataScale`` of a teacher Denoiser (module docstring). ``samples``: a callable ``n -> samples`` for
    teachers that carry no scale of their own. An exact distribution that states its finest structure
    (``finest_scale``, as ``GaussianMixture`` does) gets its exact scale (``DataScale.from_mixture``)."""
    inner = getattr(teacher, "denoiser", teacher)  # classifier-free guidance wraps the teacher
    if getattr(inner, "finest_scale", None) is not None:
        return DataScale.from_mixture(inner)
    cfg = getattr(inner, "config", None)
    sd = cfg["sigma_data"] if cfg is not None and "sigma_data" in cfg else getattr(inner, "sigma_data", None)
    mean = cfg.get("data_mean") if cfg is not None and hasattr(cfg, "get") else None
    mean = None if mean is None else tuple(float(v) for v in mean)
    lo, hi = getattr(inner, "sigma_min", None), getattr(inner, "sigma_max", None)
    if lo is not None and hi is not None:  # EDM networks, diffusers VP tables
        return DataScale(float(sd) if sd is not None else 0.5, mean, float(lo), float(hi))
    if sd is not None:  # our MLPDenoiser: the scale and mean it was built with, EDM's range in its units
        sd = float(sd)
        return DataScale(sd, mean, EDM_LOW * sd, EDM_HIGH * sd)
    if samples is None:
        raise ValueError(f"cannot tell the data scale of {type(inner).__name__}: it has neither sigma_min/sigma_max "
                         "nor sigma_data; set network.sigma_data, objective.sigma_min and objective.sigma_max")
    return DataScale.from_samples(samples(2048))
