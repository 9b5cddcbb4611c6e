"""Baseline: log-density along the probability-flow ODE with a divergence estimate (the cost S1 avoids).

The ODE ``dx/dsigma = v = (x - D(x, sigma)) / sigma`` carries ``q_sigma`` (MATH §0), and the continuity equation gives
along its path

    d log q_sigma(x_sigma) / d sigma = -div v = -(dim - div_x D) / sigma.

``div_x D`` is computed exactly (``dim`` Jacobian-vector products; small ``dim`` only) or estimated by Hutchinson,
``E[v^T J v]`` with Rademacher probes ``v`` (fresh at every evaluation, so the errors of the steps average out).
Integrated with Heun's method (EDM's 2nd-order solver) or Euler.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .ito import inner


@dataclass
class ODEDensityOutput:
    """``samples`` at the last sigma; ``delta_log_q (B,)`` float64 with ``log q_end(samples) = log q_start(x) +
    delta_log_q``; ``nfe``: denoiser evaluations, each with its Jacobian-vector products (``jvps``)."""

    samples: torch.Tensor
    delta_log_q: torch.Tensor
    nfe: int
    jvps: int


def _jvp(fn, x, v, ad: str):
    """``(fn(x), J v)`` by forward mode (``torch.func.jvp``) or ``(fn(x), J^T v)`` by reverse mode (autograd, the
    default); both give the same ``v^T J v``. Forward mode needs every op to support it: diffusers' SDPA attention
    does not (use ``unet.set_attn_processor(AttnProcessor())``)."""
    if ad == "jvp":
        return torch.func.jvp(fn, (x,), (v,))
    if ad == "vjp":
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = fn(xg)
            (g,) = torch.autograd.grad(out, xg, v)
        return out.detach(), g
    raise ValueError(f"unknown ad {ad!r}; valid: ['jvp', 'vjp']")


def denoised_and_divergence(denoiser, x, sigma, cond=None, divergence: str = "hutchinson", num_probes: int = 1,
                            generator=None, ad: str = "vjp"):
    """``D(x, sigma)`` and ``div_x D`` per sample (float64): exact or a Hutchinson estimate. Returns ``(D, div, k)``
    with ``k`` the number of Jacobian-vector products."""
    fn = lambda z: denoiser(z, sigma, cond)  # noqa: E731
    flat = x.reshape(x.shape[0], -1)
    if divergence == "exact":
        div = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        d = None
        for j in range(flat.shape[1]):
            e = torch.zeros_like(flat)
            e[:, j] = 1
            d, jv = _jvp(fn, x, e.reshape(x.shape), ad)
            div += jv.reshape(x.shape[0], -1)[:, j].to(torch.float64)
        return d, div, flat.shape[1]
    if divergence == "hutchinson":
        div = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for _ in range(num_probes):
            v = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
            d, jv = _jvp(fn, x, v, ad)
            div += inner(v, jv)
        return d, div / num_probes, num_probes
    raise ValueError(f"unknown divergence {divergence!r}; valid: ['exact', 'hutchinson']")


def ode_log_density(denoiser, x, sigmas, cond=None, divergence: str = "hutchinson", num_probes: int = 1,
                    solver: str = "heun", generator=None, ad: str = "vjp", progress: bool = False) -> ODEDensityOutput:
    """Integrate the probability-flow ODE from ``x`` (at ``sigmas[0]``) to ``sigmas[-1] > 0`` with the log-density
    change. The Hutchinson estimate is unbiased, so ``delta_log_q`` is unbiased up to the solver's error."""
    if solver not in ("heun", "euler"):
        raise ValueError(f"unknown solver {solver!r}; valid: ['heun', 'euler']")
    sig = torch.as_tensor(sigmas, dtype=torch.float64).tolist()
    if sig[-1] <= 0:
        raise ValueError("the log-density ODE needs a positive last sigma")
    dim = x[0].numel()
    b = x.shape[0]
    delta = torch.zeros(b, dtype=torch.float64, device=x.device)
    nfe = jvps = 0

    def rates(z, s):
        nonlocal nfe, jvps
        sigma = torch.full((b,), s, device=z.device, dtype=z.dtype)
        d, div, k = denoised_and_divergence(denoiser, z, sigma, cond, divergence, num_probes, generator, ad)
        nfe, jvps = nfe + 1, jvps + k
        return (z - d.detach()) / s, -(dim - div) / s

    pairs = list(zip(sig[:-1], sig[1:]))
    for s, s_next in tqdm(pairs, desc="ode-log-density", disable=not progress, leave=False):
        h = s_next - s
        v1, l1 = rates(x, s)
        x_e = x + h * v1
        if solver == "heun":
            v2, l2 = rates(x_e, s_next)
            x, delta = x + 0.5 * h * (v1 + v2), delta + 0.5 * h * (l1 + l2)
        else:
            x, delta = x_e, delta + h * l1
    return ODEDensityOutput(samples=x.detach(), delta_log_q=delta, nfe=nfe, jvps=jvps)
