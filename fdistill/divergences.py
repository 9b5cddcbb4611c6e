"""f-divergences and their distillation weights ``h(r) = f''(r) r^2`` (MATH F1).

``D_f(p || q) = E_q[f(p / q)]`` with ``r = p / q`` (teacher over student). Each divergence gives ``f`` and ``h`` in
closed form (the table of MATH F1); ``h'`` and ``h''`` are taken by autograd from ``h`` so that every entry, the
``alpha:<a>`` family included, works in the Uni-Instruct gradient (MATH U2) without hand-written cases.

Constant factors of ``h`` (they cancel in the batch normalisation of MATH F3, but not when it is off):

- ``rkl`` h = 1, ``srkl`` 1/(r+1), ``js`` r/(r+1), ``sh`` sqrt(r)/4, ``fkl`` r, ``jeffreys`` r+1,
  ``pearson`` 2 r^2, ``neyman`` 2/r: exactly ``f'' r^2`` for the ``f`` of the table.
- ``alpha:<a>``: ``f = (r^a - a r - (1-a)) / (a (a-1))`` and ``h = r^a``. Versus the named entries,
  ``alpha:0 = rkl + (r-1)``, ``alpha:1 = fkl - (r-1)``, ``alpha:0.5 = 4 sh + 2 (r-1)``, ``alpha:2 = pearson / 2``,
  ``alpha:-1 = neyman / 2``; a term linear in ``r - 1`` changes neither ``D_f`` (``E_q[r - 1] = 0``) nor ``h``.
  ``a = 0`` and ``a = 1`` use these limits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

Fn = Callable[[torch.Tensor], torch.Tensor]


def _derivative(fn: Fn, r: torch.Tensor, order: int) -> torch.Tensor:
    """``d^order fn / dr^order`` elementwise, by autograd.

    When ``r`` is part of a graph the result stays differentiable w.r.t. ``r`` (``create_graph``), which the
    Uni-Instruct gradient needs (it differentiates ``r h'(r)`` through ``r(x)``).
    """
    live = r.requires_grad
    with torch.enable_grad():
        x = r if live else r.detach().requires_grad_(True)
        out = fn(x)
        for _ in range(order):
            if not out.requires_grad:
                return torch.zeros_like(r)
            (g,) = torch.autograd.grad(out.sum(), x, create_graph=True, allow_unused=True)
            out = torch.zeros_like(r) if g is None else g
    return out if live else out.detach()


@dataclass(frozen=True)
class Divergence:
    """An f-divergence: ``f`` (MATH F1) and its weight ``h(r) = f''(r) r^2`` as elementwise torch functions."""

    name: str
    _f: Fn
    _h: Fn

    def f(self, r: torch.Tensor) -> torch.Tensor:
        return self._f(r)

    def h(self, r: torch.Tensor) -> torch.Tensor:
        """``h(r) = f''(r) r^2`` (MATH F1); always returns a tensor shaped like ``r`` (broadcast if constant)."""
        return self._h(r) + torch.zeros_like(r)

    def h_prime(self, r: torch.Tensor) -> torch.Tensor:
        """``h'(r)`` by autograd (differentiable w.r.t. ``r`` when ``r`` requires grad)."""
        return _derivative(self._h, r, 1)

    def h_second(self, r: torch.Tensor) -> torch.Tensor:
        """``h''(r)`` by autograd."""
        return _derivative(self._h, r, 2)

    @property
    def constant_h(self) -> bool:
        """True when ``h`` does not depend on ``r`` (then no density ratio is needed: rkl, ``alpha:0``)."""
        r = torch.tensor([0.25, 1.0, 4.0], dtype=torch.float64)
        v = self.h(r)
        return bool((v == v[0]).all())

    def __repr__(self) -> str:
        return f"Divergence({self.name!r})"

    def __reduce__(self):  # pickle by name (the functions are lambdas)
        return get, (self.name,)


def _xlogx(r):
    return torch.special.xlogy(r, r)


_TABLE: dict[str, tuple[Fn, Fn]] = {
    # name: (f, h = f'' r^2)                                                   MATH F1
    "rkl": (lambda r: -torch.log(r), lambda r: torch.ones_like(r)),
    "srkl": (lambda r: (r + 1) * torch.log(0.5 + 0.5 / r), lambda r: 1 / (r + 1)),
    "js": (lambda r: _xlogx(r) - (r + 1) * torch.log((r + 1) / 2), lambda r: r / (r + 1)),
    "sh": (lambda r: 1 - torch.sqrt(r), lambda r: 0.25 * torch.sqrt(r)),
    "fkl": (_xlogx, lambda r: r),
    "jeffreys": (lambda r: (r - 1) * torch.log(r), lambda r: r + 1),
    "pearson": (lambda r: (r - 1) ** 2, lambda r: 2 * r**2),
    "neyman": (lambda r: (1 - r) ** 2 / r, lambda r: 2 / r),
}


def alpha_divergence(a: float) -> Divergence:
    """The alpha family ``f = (r^a - a r - (1-a)) / (a (a-1))``, ``h = r^a`` (MATH F1); limits at ``a = 0, 1``."""
    a = float(a)
    if not math.isfinite(a):
        raise ValueError(f"alpha must be finite; got {a}")
    name = f"alpha:{a:g}"
    if a == 0.0:
        return Divergence(name, lambda r: -torch.log(r) + r - 1, lambda r: torch.ones_like(r))
    if a == 1.0:
        return Divergence(name, lambda r: _xlogx(r) - r + 1, lambda r: r)
    return Divergence(name, lambda r: (r**a - a * r - (1 - a)) / (a * (a - 1)), lambda r: r**a)


def names() -> list[str]:
    """The named divergences of MATH F1. The alpha family is selected as ``"alpha:<a>"``, e.g. ``"alpha:0.5"``."""
    return list(_TABLE)


def get(name: str | Divergence) -> Divergence:
    """Look a divergence up by name (``rkl``, ..., or ``alpha:<a>``); a ``Divergence`` passes through."""
    if isinstance(name, Divergence):
        return name
    key = str(name).strip().lower()
    if key in _TABLE:
        return Divergence(key, *_TABLE[key])
    if key.startswith("alpha:"):
        try:
            a = float(key.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"cannot read the alpha value in {name!r}; write e.g. 'alpha:0.5'") from None
        return alpha_divergence(a)
    raise ValueError(f"unknown divergence {name!r}; valid: {names()} or 'alpha:<a>' (e.g. 'alpha:0.5')")
