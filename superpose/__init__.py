"""SuperDiff: superposition of diffusion models through the Itô density estimator (MATH §6)."""
