"""Generator objectives from the ``objective`` config section (MATH F2, U2/U3): the objective in force and the
schedule of objectives over steps (MATH U1), with noise levels in the teacher's units where the config leaves them
unset (MATH §0). Cheap (no networks), so config validation builds them to refuse a bad combination early."""
from __future__ import annotations

import inspect


# keys of the objective section that are constructor arguments of the same name (the others configure the trainer:
# schedule, regression_*; sigma_dist becomes noise_levels, ratio_min / ratio_max ratio_clamp, taken by every objective)
_ARGS = ("divergence", "gan_weight", "alpha", "zero_mean_term", "normalize", "logit_clamp", "sigma_min", "sigma_max",
         "weighting", "estimator", "t_max", "index_range")

# shape keys of the noise-level distributions (objective.sigma_dist): config key -> (the distribution's argument,
# the kinds of fdistill.noise_levels that take it)
_LEVEL_KEYS = {"index_range": ("index_range", ("karras",)), "t_max": ("t_max", ("karras_ramp",)),
               "flow_mean": ("mean", ("flow_time",)), "flow_std": ("std", ("flow_time",)),
               "flow_shift": ("shift", ("flow_time",))}


def build_objective(ocfg, name: str | None = None, divergence: str | None = None, scale=None):
    """An objective from config. A key the chosen objective does not take is refused when it is set (not None):
    ``ValueError`` naming it and the keys the objective takes (the keys with a non-None default, ``normalize`` and
    ``logit_clamp``, are taken by every objective).
    ``scale`` (a ``fdistill.scale.DataScale``): the teacher's, for the noise levels the config leaves unset (MATH §0)."""
    from . import get_objective, objective_class

    name = name or ocfg.name
    cls = objective_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    sigma_min = ocfg.sigma_min if ocfg.sigma_min is not None or scale is None else scale.sigma_min
    sigma_max = ocfg.sigma_max if ocfg.sigma_max is not None or scale is None else scale.sigma_max
    levels, level_keys, extra = None, set(), {}
    for key, (arg, kinds) in _LEVEL_KEYS.items():  # the distribution named by sigma_dist takes its shape keys; with
        value = getattr(ocfg, key, None)          # sigma_dist unset, index_range / t_max go to the objective
        if value is None or (not ocfg.sigma_dist and key in _ARGS):
            continue
        if ocfg.sigma_dist not in kinds:
            raise ValueError(f"objective.{key}={value} does not apply to objective.sigma_dist={ocfg.sigma_dist!r} "
                             f"(it shapes {' / '.join(kinds)})")
        extra[arg] = tuple(value) if key == "index_range" else float(value)
        level_keys.add(key)
    if ocfg.sigma_dist:
        from .. import noise_levels

        levels = noise_levels.make(ocfg.sigma_dist, sigma_min if sigma_min is not None else 0.002,
                                   sigma_max if sigma_max is not None else 80.0,
                                   sigma_data=scale.sigma_data if scale is not None else 0.5, **extra)
    taken = [k for k in _ARGS if k in accepted]
    for key in _ARGS:
        value = divergence if key == "divergence" and divergence else getattr(ocfg, key, None)
        if key in level_keys or key in accepted or value is None:
            continue
        raise ValueError(f"objective.{key}={value} is not an option of objective {name!r} ({cls.__name__}); "
                         f"its options: {', '.join('objective.' + k for k in taken)}")
    kwargs = {k: getattr(ocfg, k, None) for k in _ARGS if k not in level_keys}  # level keys: in noise_levels
    if kwargs.get("index_range") is not None:
        kwargs["index_range"] = tuple(kwargs["index_range"])
    kwargs.update(divergence=divergence or ocfg.divergence, sigma_min=sigma_min, sigma_max=sigma_max,
                  ratio_clamp=(ocfg.ratio_min, ocfg.ratio_max), noise_levels=levels)
    # None = "not set": the objective's or the preset's own value stands
    kwargs = {k: v for k, v in kwargs.items() if k in accepted and v is not None}
    objective = get_objective(name, **kwargs)
    cap = getattr(ocfg, "gan_sigma_max", None)
    if cap is not None:  # MATH F2: the GAN term on the low noise levels of the step's own distribution
        from ..noise_levels import Truncated

        if objective.gan_weight <= 0:
            raise ValueError(f"objective.gan_sigma_max={cap} places the GAN term, but objective {name!r} has none "
                             f"(gan_weight {objective.gan_weight}); set objective.gan_weight > 0 or leave it null")
        cap = gan_sigma_cap(cap, scale)
        if cap is not None:  # None: "auto" while the config is checked without a teacher (its scale comes later)
            objective.gan_noise_levels = Truncated(objective.noise_levels, cap)
    return objective


GAN_SIGMA_AUTO = 2.0  # objective.gan_sigma_max=auto: this many sigma_data of the teacher (MATH F2)


def gan_sigma_cap(value, scale=None) -> float | None:
    """``objective.gan_sigma_max`` as a noise level: a positive number, or ``"auto"`` = ``GAN_SIGMA_AUTO`` x the
    teacher's ``sigma_data`` (``None`` while no teacher scale is known); anything else is refused."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None if scale is None else GAN_SIGMA_AUTO * float(scale.sigma_data)
    try:
        cap = float(value)
    except (TypeError, ValueError):
        cap = float("nan")
    if not cap > 0:
        raise ValueError(f"objective.gan_sigma_max={value!r}: expected a positive noise level, \"auto\" "
                         f"({GAN_SIGMA_AUTO:g} sigma_data of the teacher) or null (the GAN term on every level)")
    return cap


def objective_schedule(ocfg, scale=None) -> list[tuple[int, object]]:
    """``[(from_step, objective), ...]`` sorted by step; the first starts at 0 (MATH U1: e.g. rkl warm start, then
    fkl)."""
    entries = [(0, build_objective(ocfg, scale=scale))]
    name, div = ocfg.name, ocfg.divergence
    for e in sorted(ocfg.schedule, key=lambda e: e.step):
        name, div = e.name or name, e.divergence or div
        entries.append((int(e.step), build_objective(ocfg, name, div, scale)))
    return entries
