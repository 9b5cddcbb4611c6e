"""Generator objectives from the ``objective`` config section (MATH F2, U2/U3): the objective in force and the
schedule of objectives over steps (MATH U1), with noise levels in the teacher's units where the config leaves them
unset (MATH §0). Cheap (no networks), so config validation builds them to refuse a bad combination early."""
from __future__ import annotations

import inspect


def build_objective(ocfg, name: str | None = None, divergence: str | None = None, scale=None):
    """An objective from config; keys the chosen objective does not take are left out. ``scale`` (a
    ``fdistill.scale.DataScale``): the teacher's, for the noise levels the config leaves unset (MATH §0)."""
    sigma_min = ocfg.sigma_min if ocfg.sigma_min is not None or scale is None else scale.sigma_min
    sigma_max = ocfg.sigma_max if ocfg.sigma_max is not None or scale is None else scale.sigma_max
    levels = None
    if ocfg.sigma_dist:
        from .. import noise_levels

        levels = noise_levels.make(ocfg.sigma_dist, sigma_min if sigma_min is not None else 0.002,
                                   sigma_max if sigma_max is not None else 80.0,
                                   sigma_data=scale.sigma_data if scale is not None else 0.5)
    kwargs = dict(divergence=divergence or ocfg.divergence, gan_weight=ocfg.gan_weight, alpha=ocfg.alpha,
                  zero_mean_term=ocfg.zero_mean_term, normalize=ocfg.normalize, logit_clamp=ocfg.logit_clamp,
                  ratio_clamp=(ocfg.ratio_min, ocfg.ratio_max), sigma_min=sigma_min, sigma_max=sigma_max,
                  noise_levels=levels)
    from . import get_objective

    name = name or ocfg.name
    cls = get_objective(name).__class__
    accepted = inspect.signature(cls.__init__).parameters
    # None = "not set": the objective's or the preset's own value stands
    kwargs = {k: v for k, v in kwargs.items() if k in accepted and v is not None}
    return get_objective(name, **kwargs)


def objective_schedule(ocfg, scale=None) -> list[tuple[int, object]]:
    """``[(from_step, objective), ...]`` sorted by step; the first starts at 0 (MATH U1: e.g. rkl warm start, then
    fkl)."""
    entries = [(0, build_objective(ocfg, scale=scale))]
    name, div = ocfg.name, ocfg.divergence
    for e in sorted(ocfg.schedule, key=lambda e: e.step):
        name, div = e.name or name, e.divergence or div
        entries.append((int(e.step), build_objective(ocfg, name, div, scale)))
    return entries
