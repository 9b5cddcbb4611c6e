"""SuperDiff sampling: superpose M pretrained diffusion models along one reverse-SDE path (MATH S1–S3).

Each step evaluates every model, chooses the mixing weights kappa (``or``: S2, ``and``: S3, ``average``: equal,
``single``: one model), takes the Euler–Maruyama step with drift ``sum_i kappa_i s_i`` and adds every model's Itô
log-density increment (S1) in float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .kappa import AndSolver, or_weights
from .models import DenoiserList
from .process import PROCESSES, step

MODES = ("or", "and", "average", "single")


@dataclass
class SuperDiffOutput:
    """What :func:`sample` returns.

    Attributes:
        samples: the final states (sigma form; denoised when the schedule ends with 0 and ``denoise_last``).
        log_q: ``(M, B)`` float64, each model's accumulated log-density increments from the start:
            ``log q_i(end) = log q_i(start) + log_q[i]`` (the end is the last positive sigma).
        kappa: ``(N, M, B)`` float64, the weights used at each of the ``N`` SDE steps.
        fallbacks: AND solves that were clipped or fell back to equal weights (0 for other modes).
        clipped, degenerate: the two parts of ``fallbacks``; ``solves``: number of AND solves (``N * B``).
    """

    samples: torch.Tensor
    log_q: torch.Tensor
    kappa: torch.Tensor
    fallbacks: int = 0
    clipped: int = 0
    degenerate: int = 0
    solves: int = 0


def _as_models(denoisers, cond):
    if isinstance(denoisers, (list, tuple, torch.nn.ModuleList)):
        return DenoiserList(denoisers, cond)
    if callable(denoisers) and hasattr(denoisers, "__len__"):  # a model set (DenoiserList, PromptModels, ...)
        if cond is not None:
            raise ValueError("cond is given by the model set itself; pass cond=None")
        return denoisers
    raise TypeError(f"denoisers must be a list of Denoisers or a model set; got {type(denoisers).__name__} "
                    "(wrap a single model in a list: [denoiser])")


@torch.no_grad()
def sample(denoisers, x, sigmas, mode: str = "or", T: float = 1.0, bias=None, cond=None, generator=None,
           progress: bool = False, process: str = "ve", and_solver: AndSolver | None = None, log_q_init=None,
           denoise_last: bool = True, callback=None) -> SuperDiffOutput:
    """Sample from the superposition of ``M`` models (MATH S1–S3).

    Args:
        denoisers: a list of ``M`` Denoisers, or a model set (``superpose.models``: ``DenoiserList``,
            ``PromptModels``) returning drift and tracked predictions.
        x: starting noise already scaled by ``sigmas[0]``.
        sigmas: decreasing noise levels; a final 0 ends with the kappa-weighted denoised prediction
            (``denoise_last``), which the log-densities do not cover.
        mode: ``or`` (S2), ``and`` (S3), ``average`` (kappa = 1/M) or ``single`` (M = 1).
        T, bias: OR temperature and bias ``l`` (S2); for AND, ``l`` sets the target log-density differences.
        cond: a condition for all denoisers, or a list with one per denoiser (prompts as models).
        process: ``ve`` (sigma form, default) or ``vp`` (DDPM form) Euler–Maruyama steps; see ``superpose.process``.
        and_solver: options of the AND solve (``AndSolver``).
        log_q_init: ``(M, B)`` known starting log-densities used for the weights (default: all equal, which holds
            up to ``O(|x0|^2 / sigma_max^2)`` at a large ``sigma_max``); not added to the returned ``log_q``.
        callback: called as ``callback(i, sigma, x, log_q)`` after every step.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {list(MODES)}")
    if process not in PROCESSES:
        raise ValueError(f"unknown process {process!r}; valid: {list(PROCESSES)}")
    models = _as_models(denoisers, cond)
    m, batch = len(models), x.shape[0]
    if mode == "single" and m != 1:
        raise ValueError(f"mode 'single' takes exactly one model; got {m}")
    and_solver = and_solver or AndSolver()
    sig = torch.as_tensor(sigmas, dtype=torch.float64).tolist()
    log_q = torch.zeros(m, batch, dtype=torch.float64, device=x.device)
    start = log_q.clone() if log_q_init is None else torch.as_tensor(log_q_init, dtype=torch.float64,
                                                                     device=x.device).expand(m, batch)
    kappas, solves = [], 0
    clipped = degenerate = torch.zeros((), dtype=torch.long, device=x.device)  # summed on the device: no syncs
    equal = torch.full((m, batch), 1.0 / m, dtype=torch.float64, device=x.device)
    pairs = list(zip(sig[:-1], sig[1:]))
    for i, (s, s_next) in enumerate(tqdm(pairs, desc=f"superdiff-{mode}", disable=not progress, leave=False)):
        sigma = torch.full((batch,), s, device=x.device, dtype=x.dtype)
        d_drift, d_track = models(x, sigma)
        if s_next == 0 and denoise_last:
            k = or_weights(start + log_q, T, bias) if mode == "or" else equal
            x = (k.to(x.dtype).reshape(m, batch, *([1] * (x.ndim - 1))) * d_drift).sum(0)
            if callback is not None:
                callback(i, s, x, log_q)
            break
        s_drift = (d_drift - x) / s**2
        s_track = s_drift if d_track is d_drift else (d_track - x) / s**2
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        st = step(process, x, s, s_next, s_drift, s_track, noise)
        if mode == "or":
            k = or_weights(start + log_q, T, bias)
        elif mode == "and":
            a, A = st.affine()
            k, clip, degen = and_solver(a, A, start + log_q, bias)
            clipped = clipped + clip.sum()
            degenerate = degenerate + degen.sum()
            solves += batch
        else:  # average, single
            k = equal
        dy = st.dy(k)
        log_q += st.increments(dy)
        x = st.next_x(dy)
        kappas.append(k)
        if callback is not None:
            callback(i, s, x, log_q)
    kappa = torch.stack(kappas) if kappas else torch.empty(0, m, batch, dtype=torch.float64)
    clipped, degenerate = int(clipped), int(degenerate)
    return SuperDiffOutput(samples=x, log_q=log_q, kappa=kappa, fallbacks=clipped + degenerate, clipped=clipped,
                           degenerate=degenerate, solves=solves)
