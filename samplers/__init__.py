"""Samplers for teachers (EDM Heun, Euler, Euler–Maruyama, DDIM) and one-step generation, over any Denoiser;
``MultiStepGenerator`` wraps a teacher and a sampler as a generator with ``.sample(n, seed, cond)``."""
from .generator import CountingDenoiser, MultiStepGenerator
from .sampling import ddim, euler, euler_maruyama, euler_maruyama_step, heun, one_step
from .schedules import karras_sigma_at, karras_sigmas, vp_sigmas

SAMPLERS = {"heun": heun, "euler": euler, "euler_maruyama": euler_maruyama, "ddim": ddim}


def get(name: str):
    """A sampler by name; an unknown name lists the valid ones."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; valid: {sorted(SAMPLERS)}") from None


__all__ = ["SAMPLERS", "CountingDenoiser", "MultiStepGenerator", "ddim", "euler", "euler_maruyama",
           "euler_maruyama_step", "get", "heun", "karras_sigma_at", "karras_sigmas", "one_step", "vp_sigmas"]
