"""Renamed: ``fdistill.saved_models`` (it saves and loads teachers as well as generators). This name keeps working
for code written against it, with a deprecation warning."""
import warnings

from .saved_models import *  # noqa: F401,F403
from .saved_models import load_denoiser, load_generator, one_step_pipeline, save_denoiser  # noqa: F401

warnings.warn("fdistill.generator_io is now fdistill.saved_models", DeprecationWarning, stacklevel=2)
