"""``teacher.kind=gmm``: an analytic Gaussian-mixture teacher (exact scores, samples and densities, MATH §7), from
``teacher.means`` / ``stds`` / ``weights`` or ``teacher.preset`` (``fdistill.data.mixture_from_spec``)."""
from __future__ import annotations

from . import TeacherBundle, labels_conditioner

KINDS = ("gmm",)
KEYS = ("preset", "means", "stds", "weights", "num_classes")  # the teacher.* keys this kind reads (besides kind and guidance_scale)
ANALYTIC = True  # an exact formula, no weights: students are networks built from network.arch and fitted to it

# the mixture recipe (README "Results", "Longer training"): 70 sampler levels and the regression term through the
# denoiser (MATH R1b), cheap with an exact teacher; and the generator's rate budget of the recipe's 500 steps
# (fdistill.optim.generator_lr, since 2026-12-06): a longer run moves its weights no further than a 500-step run, so
# longer is not worse (at the full rate a 4x run on gmm16d drifts off-mode 3.3 -> 3.65 %, at the budget 3.4 %)
RECIPE = {"data.num_steps": 70, "objective.regression_weight": 0.7, "objective.regression_sigma": 1.0,
          "train.lr_budget_steps": 500}
# the flow-map warm start grows with the number of modes, whose boundaries in z the map must resolve (grid25: 12.6 %
# off-mode after 3000 steps, 5.5 % after 8000); 750 steps per mode (8 modes at least) since 2026-12-05, when the
# warm start alone at 375 was found far from converged on every preset (README "Longer training")
FLOW_FIT_STEPS_PER_MODE, FLOW_FIT_MIN_MODES = 750, 8


def flow_fit_steps_for(num_components: int, per_mode: int = FLOW_FIT_STEPS_PER_MODE) -> int:
    """The warm start's length for a mixture of ``num_components`` modes: ``per_mode x max(8, K)`` (MATH R1)."""
    return int(per_mode) * max(FLOW_FIT_MIN_MODES, int(num_components))


def build_mixture(tcfg):
    """The ``GaussianMixture`` of a ``teacher`` config section: explicit ``means`` / ``stds`` / ``weights``, else
    ``preset``."""
    from ..data import mixture_from_spec

    if tcfg.means:
        return mixture_from_spec({"means": tcfg.means, "stds": tcfg.stds, "weights": tcfg.weights})
    return mixture_from_spec(tcfg.preset)


def bundle(mixture, num_classes: int = 0) -> TeacherBundle:
    """The bundle of a ``GaussianMixture`` (also for mixtures made in code)."""
    return TeacherBundle(kind="gmm", denoiser=mixture, conditioner=labels_conditioner(num_classes), mixture=mixture,
                         recipe=dict(RECIPE),
                         flow_fit_steps=flow_fit_steps_for(mixture.num_components))


def load(cfg, device=None) -> TeacherBundle:
    return bundle(build_mixture(cfg.teacher), cfg.teacher.num_classes)
