"""Denoisers: the analytic mixture teacher, preconditioning, adapters for diffusers and flow models, guidance, and
EDM's networks (``fdistill.networks.edm``)."""
from .diffusers_adapter import DiffusersDenoiser
from .edm import DhariwalUNet, EDMDenoiser, SongUNet
from .flow import FlowMatchingDenoiser
from .gmm import GaussianMixture
from .guidance import ClassifierFreeGuidance
from .mlp import MLPDenoiser
from .precond import Preconditioned, edm_precond
from .residual import TeacherResidual

__all__ = [
    "ClassifierFreeGuidance",
    "DhariwalUNet",
    "DiffusersDenoiser",
    "EDMDenoiser",
    "FlowMatchingDenoiser",
    "GaussianMixture",
    "MLPDenoiser",
    "Preconditioned",
    "SongUNet",
    "TeacherResidual",
    "edm_precond",
]
