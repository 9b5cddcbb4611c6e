"""What every generator objective shares (MATH F2, U2/U3): whether it needs the density ratio, and its generator
noise levels, drawn from a ``fdistill.noise_levels`` distribution (each objective picks its default)."""
from __future__ import annotations

import torch


def flat_sum(t: torch.Tensor) -> torch.Tensor:
    """Per-sample sum over all but the batch dimension."""
    return t.flatten(1).sum(1)


class GeneratorObjective:
    """Base of the generator objectives; a subclass sets ``divergence``, ``gan_weight`` and ``noise_levels``."""

    divergence: object
    gan_weight: float
    noise_levels: object
    gan_noise_levels = None  # the GAN term's own noise levels (objective.gan_sigma_max); None: the step's own x_sigma

    @property
    def needs_ratio(self) -> bool:
        """True when ``h`` depends on ``r`` or there is a GAN term: the trainer must train a discriminator."""
        return not self.divergence.constant_h or self.gan_weight > 0

    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """``(n,)`` float32 generator noise levels from ``noise_levels`` (the objective's default distribution:
        the Karras grid of MATH F2, the Karras ramp of MATH U3)."""
        return self.noise_levels.sample(n, generator, device)

    def gan_term(self, x0, cond, discriminator, logit, gan_sigma=None, gan_noise=None,
                 gan_transform=None) -> torch.Tensor:
        """The GAN term ``softplus(-l)`` of MATH F2, without its weight: on the step's own ``x_sigma`` (``logit``,
        the one the ratio came from) or, when the trainer drew the term its own levels (``gan_noise_levels``), on
        ``T(x0) + gan_sigma * gan_noise``, ``T = gan_transform`` (the discriminator's augmentation, MATH F3; none:
        the identity). Zero without a GAN weight."""
        from ..denoiser import expand_sigma
        from ..ratio import generator_gan_loss

        if self.gan_weight <= 0:
            return x0.new_zeros(())
        if gan_sigma is not None:
            x = x0 if gan_transform is None else gan_transform(x0)
            logit = discriminator(x + expand_sigma(gan_sigma, x) * gan_noise, gan_sigma, cond)
        elif gan_transform is not None:
            raise ValueError("gan_transform needs the GAN term's own noise levels (gan_sigma, gan_noise)")
        return generator_gan_loss(logit)
