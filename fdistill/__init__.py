"""fdistill: one-step diffusion distillation with f-divergences (see MATH.md).

Top-level names are imported lazily, so ``import fdistill`` is cheap and diffusers can resolve
``["fdistill", "MLPDenoiser"]`` entries of a saved pipeline's ``model_index.json``.
"""
import importlib

__version__ = "0.1.0"

_LAZY = {
    "GaussianMixture": "fdistill.networks.gmm",
    "MLPDenoiser": "fdistill.networks.mlp",
    "EDMDenoiser": "fdistill.networks.edm",
    "OneStepPipeline": "fdistill.pipeline",
    "load_generator": "fdistill.saved_models",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fdistill' has no attribute {name!r}")
