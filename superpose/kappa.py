"""Mixing weights kappa of the superposed drift ``u = sum_i kappa_i s_i``: OR (MATH S2) and AND (MATH S3).

All inputs and outputs are float64 with the model axis first: log-densities ``(M, B)``, weights ``(M, B)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def _bias(bias, m: int, like: torch.Tensor) -> torch.Tensor:
    if bias is None:
        return like.new_zeros(m)
    b = torch.as_tensor(bias, dtype=torch.float64, device=like.device).reshape(-1)
    if b.shape[0] != m:
        raise ValueError(f"bias has {b.shape[0]} entries but there are {m} models")
    return b


def or_weights(log_q: torch.Tensor, T: float = 1.0, bias=None) -> torch.Tensor:
    """MATH S2: ``kappa_i = softmax_i(T (log q_i + l_i))``.

    With ``T = 1`` and exact log-densities the drift is the score of the mixture ``sum_i softmax(l)_i q_i``.
    """
    b = _bias(bias, log_q.shape[0], log_q)
    return torch.softmax(T * (log_q + b[:, None]), dim=0)


@dataclass
class AndSolver:
    """MATH S3: per sample, the kappa with ``sum_j kappa_j = 1`` that keeps the models' log-densities equal (up to the
    bias ``l``) after the step, from the affine increments ``dlog q_i = a_i + sum_j A_ij kappa_j``.

    The ``M - 1`` equations ``dlog q_i - dlog q_1 = t_i`` (``i = 2..M``) are solved in float64 in the coordinates
    ``kappa = 1/M + P z`` of the sum-one plane, as a ridge-regularised least-squares problem.

    Args:
        target: ``"level"`` (default): ``t_i = (l_i - l_1) - (L_i - L_1)`` with ``L`` the accumulated log-densities,
            so the *levels* ``L_i + l_i`` end equal and any earlier mismatch (a clipped step) is corrected;
            with equal starting levels this is MATH S3 exactly. ``"increment"``: ``t_i = l_i - l_1`` per step, the
            literal MATH S3 (a bias then adds up over the steps).
        kappa_range: ``(lo, hi)`` with ``lo < 1/M < hi``. A solution outside is pulled back toward equal weights
            along its own direction (so ``sum kappa = 1`` holds) and counted as clipped. ``(0, 1)`` would turn AND
            into averaging whenever the scores nearly coincide; the default is wide.
        min_gap: below this smallest singular value of the reduced system (scores that coincide, in units of
            log-density per unit kappa) the solve falls back to equal weights (counted).
        ridge: if positive, solve the Tikhonov-regularised normal equations with ``ridge * mean(diag(G^T G))``
            added (shrinks near-singular solves toward equal weights); 0 (default) solves the square system.
    """

    kappa_range: tuple = (-10.0, 11.0)
    min_gap: float = 1e-10
    ridge: float = 0.0
    target: str = "level"

    def __post_init__(self):
        if self.target not in ("level", "increment"):
            raise ValueError(f"unknown AND target {self.target!r}; valid: ['level', 'increment']")
        lo, hi = self.kappa_range
        if not lo < hi:
            raise ValueError(f"kappa_range must be (lo, hi) with lo < hi; got {self.kappa_range}")

    def __call__(self, a: torch.Tensor, A: torch.Tensor, levels: torch.Tensor, bias=None):
        """Return ``(kappa (M, B), clipped (B,) bool, fell_back (B,) bool)``.

        ``a (M, B)``, ``A (M, M, B)``: the step's affine increments; ``levels (M, B)``: accumulated log-densities.
        """
        m, batch = a.shape
        lo, hi = self.kappa_range
        if not lo < 1.0 / m < hi:
            raise ValueError(f"kappa_range {self.kappa_range} must contain 1/M = {1.0 / m}")
        dev = a.device
        if m == 1:
            ones = a.new_ones(1, batch)
            return ones, torch.zeros(batch, dtype=torch.bool, device=dev), torch.zeros(batch, dtype=torch.bool,
                                                                                     device=dev)
        b = _bias(bias, m, a)
        diff = torch.zeros(m - 1, m, dtype=torch.float64, device=dev)  # rows e_{i} - e_1, i = 2..M
        diff[:, 0] = -1
        diff[torch.arange(m - 1), torch.arange(1, m)] = 1
        P = diff.T  # (M, M-1): columns span the sum-zero plane
        t = (b[1:] - b[0])[:, None].expand(m - 1, batch)
        if self.target == "level":
            t = t - (diff @ levels)
        Ab = A.permute(2, 0, 1)  # (B, M, M)
        base = a.T + (Ab.sum(2) / m)  # increments at equal weights, (B, M)
        r0 = base @ diff.T - t.T  # (B, M-1)
        G = diff @ Ab @ P  # (B, M-1, M-1)
        eye = torch.eye(m - 1, dtype=torch.float64, device=dev).expand_as(G)
        finite = torch.isfinite(r0).all(1) & torch.isfinite(G).flatten(1).all(1)
        G = torch.where(finite[:, None, None], G, eye)
        z, fell_back = (_solve_scalar if m == 2 else _solve_batched)(G, r0, finite, self.min_gap, self.ridge)
        d = (P @ z.T)  # (M, B): kappa - 1/M
        # pull back toward equal weights so that every kappa lies in [lo, hi]
        room = torch.where(d > 0, (hi - 1.0 / m) / d.clamp(min=1e-300), (lo - 1.0 / m) / d.clamp(max=-1e-300))
        room = torch.where(d == 0, torch.full_like(room, float("inf")), room)
        scale = room.min(0).values.clamp(max=1.0)
        clipped = scale < 1.0
        return 1.0 / m + d * scale, clipped, fell_back


def _solve_batched(G: torch.Tensor, r0: torch.Tensor, finite: torch.Tensor, min_gap: float, ridge: float):
    """``z (B, M-1)`` solving ``G z = -r0`` per sample (or its ridge version), and which samples fell back to
    ``z = 0`` (equal weights): non-finite inputs or smallest singular value below ``min_gap``."""
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device).expand_as(G)
    gap = torch.linalg.svdvals(G)[:, -1]
    fell_back = ~(gap >= min_gap) | ~finite
    if ridge > 0:  # Tikhonov: (G^T G + lam I) z = -G^T r0
        gtg = G.transpose(1, 2) @ G
        lam = ridge * torch.diagonal(gtg, dim1=1, dim2=2).mean(1)
        lhs, rhs = gtg + lam[:, None, None] * eye, -(G.transpose(1, 2) @ r0.unsqueeze(2))
    else:  # the square system G z = -r0 itself (better conditioned than the normal equations)
        lhs, rhs = G, -r0.unsqueeze(2)
    lhs = torch.where(fell_back[:, None, None], eye, lhs)
    rhs = torch.where(fell_back[:, None, None], torch.zeros_like(rhs), rhs)
    z = torch.linalg.solve_ex(lhs, rhs)[0].squeeze(2)  # solve_ex: no error check, so no host sync on CUDA
    return z, fell_back


def _solve_scalar(G: torch.Tensor, r0: torch.Tensor, finite: torch.Tensor, min_gap: float, ridge: float):
    """``_solve_batched`` for two models (MATH S3), where the system is one equation in one unknown: the same answer in
    closed form, with elementwise operations only (no batched SVD / solve launches)."""
    g, r = G[:, 0, 0], r0[:, 0]
    fell_back = ~(g.abs() >= min_gap) | ~finite
    safe = torch.where(fell_back, torch.ones_like(g), g)
    z = -r / (safe * (1.0 + ridge))  # ridge: -g r / (g^2 + ridge g^2)
    return torch.where(fell_back, torch.zeros_like(z), z)[:, None], fell_back
