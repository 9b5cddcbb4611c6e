"""What the generator is conditioned on during training: nothing, class labels, or (``fdistill.sd``) prompts.

A conditioner draws the step's conditions (``draw``), gives an example batch for probing networks (``example``),
conditions for pictures (``for_samples``), turns generator outputs into pictures (``decode``: identity here, a VAE
for latent models) and the extra pipeline components (``pipeline_components``: VAE, text encoder, tokenizer).
``null_cond`` is what classifier-free guidance takes as "no condition" (``None``: the teacher cannot be guided).
A finite set of conditions is indexed: ``num_conditions`` of them (0: unconditional), ``condition(index)`` gives the
conditions of indices (labels: themselves; prompts: their embeddings) and ``condition_key`` what a cache of indexed
conditions is keyed by (the probability-flow pairs of ``fdistill.pf_regression``).
A conditioner may also offer ``make_source(kind, teacher, shape, rand, pool_size, progress)``: its own "real" samples
(``pool_size``: the data-free pool's, ``fdistill.config.data_pool_size``).
"""
from __future__ import annotations

import torch


class Unconditional:
    num_classes = 0
    num_conditions = 0
    null_cond = None

    def condition(self, index):
        return None

    @property
    def condition_key(self) -> dict:
        return {}

    def draw(self, rand, step: int, stream: str, local: int):
        return None

    def example(self, n: int, device):
        return None

    def for_samples(self, n: int, generator: torch.Generator, device):
        return None

    def real_condition(self, data_cond, fake_cond):
        """Condition of a batch of "real" samples: the data's own (labels of a labelled set), else none."""
        return None

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def pipeline_components(self) -> dict:
        return {}


class ClassLabels(Unconditional):
    """Uniform class labels ``0..num_classes-1`` (the null label ``num_classes`` is the guidance wrapper's)."""

    def __init__(self, num_classes: int):
        self.num_classes = self.num_conditions = int(num_classes)
        self.null_cond = self.num_classes

    def condition(self, index):
        return index

    @property
    def condition_key(self) -> dict:
        return {"num_classes": self.num_classes}

    def draw(self, rand, step, stream, local):
        return rand.randint(step, stream, local, self.num_classes)

    def example(self, n, device):
        return torch.zeros(n, dtype=torch.long, device=device)

    def for_samples(self, n, generator, device):
        return torch.randint(self.num_classes, (n,), generator=generator, device=device)

    def real_condition(self, data_cond, fake_cond):
        return data_cond if data_cond is not None else fake_cond

