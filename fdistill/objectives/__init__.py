"""Generator objectives (MATH F2, U2/U3), the fake-score loss (MATH §4) and a registry with named presets.

Every objective is called as ``objective(x0, cond, teacher, fake, *, sigma, noise, discriminator=None,
normalizer=None) -> (loss, stats)`` and exposes ``needs_ratio`` and ``sample_sigma(n, generator, device)``.
``discriminator`` may be any ``logit_fn(x_sigma, sigma, cond) -> log r``, e.g. ``exact_ratio(p, q)``.

Presets (keyword arguments given to ``get_objective`` override a preset's):

==============  ==========================================================================
``dmd``         ``FDistill(divergence="rkl")``                         DMD / VSD
``dmd2``        ``FDistill(divergence="rkl", gan_weight=1e-3)``        DMD2
``fdistill_js`` ``FDistill(divergence="js", gan_weight=1e-3)``         f-distill, best reported
``sid``         ``UniInstruct(divergence="rkl", alpha=1.2)``           SiD
``sida``        ``UniInstruct(divergence="rkl", alpha=1.0, gan_weight=0.01)``  SiDA
``sim``         ``UniInstruct(divergence="rkl", estimator="sim")``     SIM (L2 distance)
==============  ==========================================================================
"""
from __future__ import annotations

from ..ratio import exact_ratio
from .dsm import fake_score_loss
from .fdistill import FDistill
from .uni_instruct import UniInstruct

OBJECTIVES = {"fdistill": FDistill, "uni_instruct": UniInstruct}

PRESETS = {
    "dmd": (FDistill, {"divergence": "rkl"}),
    "dmd2": (FDistill, {"divergence": "rkl", "gan_weight": 1e-3}),
    "fdistill_js": (FDistill, {"divergence": "js", "gan_weight": 1e-3}),
    "sid": (UniInstruct, {"divergence": "rkl", "alpha": 1.2}),
    "sida": (UniInstruct, {"divergence": "rkl", "alpha": 1.0, "gan_weight": 0.01}),
    "sim": (UniInstruct, {"divergence": "rkl", "estimator": "sim"}),
}


def names() -> list[str]:
    """Every name ``get_objective`` accepts."""
    return list(OBJECTIVES) + list(PRESETS)


def objective_class(name: str) -> type:
    """The class an objective name (``fdistill``, ``uni_instruct`` or a preset) builds."""
    if name in OBJECTIVES:
        return OBJECTIVES[name]
    if name in PRESETS:
        return PRESETS[name][0]
    raise ValueError(f"unknown objective {name!r}; valid: {names()}")


def get_objective(name: str, **kwargs):
    """An objective by name (``fdistill``, ``uni_instruct`` or a preset); ``kwargs`` go to the constructor."""
    if name in OBJECTIVES:
        return OBJECTIVES[name](**kwargs)
    if name in PRESETS:
        cls, preset = PRESETS[name]
        return cls(**{**preset, **kwargs})
    raise ValueError(f"unknown objective {name!r}; valid: {names()}")


__all__ = ["FDistill", "OBJECTIVES", "PRESETS", "UniInstruct", "exact_ratio", "fake_score_loss", "get_objective",
           "names", "objective_class"]
