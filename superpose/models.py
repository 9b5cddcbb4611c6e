"""Sets of models to superpose: each call returns, for every model, the prediction the drift uses and the one whose
density is tracked (MATH S3: with classifier-free guidance the drift is guided, the tracked density is the
*unguided* conditional model).

A model set is any callable ``models(x, sigma) -> (D_drift, D_track)`` with ``len(models) == M`` returning two
``(M, B, ...)`` tensors of denoised predictions (they may be the same tensor).
"""
from __future__ import annotations

import torch

from fdistill.denoiser import sigma_per_sample
from fdistill.networks.guidance import guide


def _is_guided(denoiser, cond) -> bool:
    return cond is not None and hasattr(denoiser, "unguided") and getattr(denoiser, "guidance_scale", 1.0) != 1.0


class DenoiserList:
    """``M`` Denoisers, each with its own condition (``cond`` is one value for all, or a list of ``M``).

    A ``ClassifierFreeGuidance`` wrapper with a scale other than 1 drives with its guided prediction and is tracked
    with its conditional one; every other denoiser is used as is for both.
    """

    def __init__(self, denoisers, cond=None):
        self.denoisers = list(denoisers)
        if not self.denoisers:
            raise ValueError("need at least one denoiser")
        m = len(self.denoisers)
        if isinstance(cond, (list, tuple)):
            if len(cond) != m:
                raise ValueError(f"cond is a list of {len(cond)} entries but there are {m} denoisers")
            self.conds = list(cond)
        else:
            self.conds = [cond] * m

    def __len__(self) -> int:
        return len(self.denoisers)

    def __call__(self, x, sigma):
        drift, track, guided = [], [], False
        for den, c in zip(self.denoisers, self.conds):
            if _is_guided(den, c):
                guided = True
                d_c, d_u = den.unguided(x, sigma, c)
                drift.append(guide(d_u, d_c, den.guidance_scale))
                track.append(d_c)
            else:
                d = den(x, sigma, c)
                drift.append(d)
                track.append(d)
        drift = torch.stack(drift)
        return drift, (torch.stack(track) if guided else drift)


def _batched_cond(c, batch: int):
    """One model's condition as a batch: an int label -> ``(B,)``; a tensor with a leading axis of 1 or B
    (``(1, L, C)`` / ``(B, L, C)`` embeddings, ``(1,)`` / ``(B,)`` labels) -> that axis expanded to B."""
    if isinstance(c, int):
        return torch.full((batch,), c, dtype=torch.long)
    c = torch.as_tensor(c)
    if c.ndim == 0 or c.shape[0] not in (1, batch):
        raise ValueError(f"a condition needs a leading batch axis of 1 or {batch}; got shape {tuple(c.shape)} "
                         "(write an (L, C) embedding as (1, L, C))")
    return c.expand(batch, *c.shape[1:])


class PromptModels:
    """One conditional denoiser under ``M`` conditions (prompts as models), with classifier-free guidance evaluated in
    a single batched call of ``(M + 1) B`` inputs (``M`` conditions and one null condition) — MATH S3.

    Args:
        denoiser: a Denoiser taking ``cond`` (text embeddings ``(B, L, C)`` or class labels ``(B,)``).
        conds: ``M`` conditions, each an embedding ``(1, L, C)``, a label tensor ``(1,)``, or an int class label.
        null_cond: the "no condition" input (empty-prompt embedding, null label); needed when guidance_scale != 1.
        guidance_scale: ``w`` of ``D_u + w (D_c - D_u)``; the tracked density is always the conditional ``D_c``.
    """

    def __init__(self, denoiser, conds, null_cond=None, guidance_scale: float = 1.0):
        self.denoiser, self.conds = denoiser, list(conds)
        self.null_cond, self.guidance_scale = null_cond, float(guidance_scale)
        if not self.conds:
            raise ValueError("need at least one condition")
        if self.guidance_scale != 1.0 and null_cond is None:
            raise ValueError("guidance_scale != 1 needs a null_cond (the empty prompt / null label)")

    def __len__(self) -> int:
        return len(self.conds)

    def __call__(self, x, sigma):
        b, m = x.shape[0], len(self.conds)
        guided = self.guidance_scale != 1.0
        conds = self.conds + ([self.null_cond] if guided else [])
        c = torch.cat([_batched_cond(ci, b) for ci in conds]).to(x.device)
        n = len(conds)
        s = sigma_per_sample(sigma, x).repeat(n)
        d = self.denoiser(x.repeat(n, *([1] * (x.ndim - 1))), s, c).reshape(n, *x.shape)
        if not guided:
            return d, d
        d_c, d_u = d[:m], d[m:]
        return guide(d_u, d_c, self.guidance_scale), d_c
