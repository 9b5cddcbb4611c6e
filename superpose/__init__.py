"""SuperDiff: superposition of diffusion models through the Itô density estimator (MATH §6).

``superpose.sample(denoisers, x, sigmas, mode="or" | "and" | "average" | "single")`` composes pretrained models
along one reverse-SDE path; ``SuperDiffPipeline`` does it for diffusers models (prompts as models, or several
unconditional UNets); ``ode_log_density`` is the probability-flow ODE + Hutchinson baseline.
"""
import importlib

from .ito import ito_increment_ve, ito_increment_vp
from .kappa import AndSolver, or_weights
from .models import DenoiserList, PromptModels
from .sampler import MODES, SuperDiffOutput, sample

_LAZY = {"SuperDiffPipeline": "superpose.pipeline", "ode_log_density": "superpose.hutchinson"}

__all__ = ["MODES", "AndSolver", "DenoiserList", "PromptModels", "SuperDiffOutput", "SuperDiffPipeline",
           "ito_increment_ve", "ito_increment_vp", "ode_log_density", "or_weights", "sample"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'superpose' has no attribute {name!r}")
