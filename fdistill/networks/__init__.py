"""Denoisers: the analytic mixture teacher, preconditioning, adapters for diffusers and flow models, guidance."""
from .diffusers_adapter import DiffusersDenoiser
from .flow import FlowMatchingDenoiser
from .gmm import GaussianMixture
from .guidance import ClassifierFreeGuidance
from .mlp import MLPDenoiser
from .precond import Preconditioned, edm_precond

__all__ = [
    "ClassifierFreeGuidance",
    "DiffusersDenoiser",
    "FlowMatchingDenoiser",
    "GaussianMixture",
    "MLPDenoiser",
    "Preconditioned",
    "edm_precond",
]
