"""fdistill: one-step diffusion distillation with f-divergences (see MATH.md)."""
__version__ = "0.1.0"
