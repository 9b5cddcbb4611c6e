"""Exact metrics against a Gaussian-mixture teacher (MATH §7): mode recall, per-mode mass TV, exact NLL.

Each sample is assigned to a mode (``responsibility``: max posterior at sigma = 0, the default; ``nearest``:
nearest mean; ``soft``: the posteriors themselves, unbiased for exact samples even when modes overlap).

- mode recall: share of modes holding at least ``threshold`` (1/4) of their share of samples,
  ``count_k / n >= threshold * w_k``;
- TV: ``½ sum_k |count_k / n - w_k|``;
- NLL: ``-mean log p_0(x)`` under the exact teacher density (nats per sample);
- off-mode fraction: share of samples outside every mode's 99 % ellipsoid. A sample is *on-mode* when its
  Mahalanobis distance to its nearest mode (in that distance) is at most ``sqrt(chi2_d 0.99)``, the radius that holds
  99 % of that mode's own Gaussian; exact teacher samples score about 1 % (less where modes overlap);
- on-mode mass TV: ``½ sum_k |m_k - w_k|`` with ``m_k`` the share of the on-mode samples that lie on mode ``k``.
- mode scale: the on-mode samples' RMS Mahalanobis distance to their mode over that of exact samples (the truncated
  chi2_d mean): 1 = the teacher's width, < 1 narrower (which *lowers* the NLL), > 1 wider.
- mode profile error: the mean over levels ``q = 0.05, 0.10, ..., 0.90`` of ``|Q(q) / Q_exact(q) - 1|``, ``Q`` the
  on-mode samples' Mahalanobis-distance quantiles and ``Q_exact(q) = sqrt(chi2_d^-1(0.99 q))`` an exact sample's:
  the shape of the modes, where the mode scale is one RMS that a too-wide core and thin shoulders can cancel in.
- NLL at the teacher's width: the NLL less its width term ``½ (on-mode fraction) (mean m2 - E[M2 | M2 <= r2])``, the
  part that on-mode samples narrower or wider than the teacher's modes add to it (exact for separated modes, where an
  on-mode sample's NLL is ``-log w_k + ½ log|2 pi Sigma_k| + ½ m2``); differences left are mass and off-mode samples.

For ``n`` exact samples, ``E[TV] <= ½ sum_k sqrt(w_k (1 - w_k) / n)`` (Jensen) and TV moves by at most ``1/n`` per
sample, so by McDiarmid ``TV <= that + sqrt(log(1/delta) / (2n))`` with probability ``1 - delta``:
:func:`tv_tolerance`, the Monte-Carlo tolerance for "TV ~ 0".

    python -m eval.gmm --gen runs/ring8_fkl --teacher ring8 --num-samples 20000 --out runs/ring8_fkl/results.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np
import torch

ASSIGN = ("responsibility", "nearest", "soft")


def _chunked(fn, x: torch.Tensor, size: int = 4096) -> torch.Tensor:
    return torch.cat([fn(x[i:i + size]) for i in range(0, len(x), size)])


def _as_events(samples, gmm) -> torch.Tensor:
    x = torch.as_tensor(samples).to(gmm.means.device, torch.float64)
    return x.reshape(len(x), *gmm.event_shape)


def mode_mass(samples: torch.Tensor, gmm, assign: str = "responsibility") -> torch.Tensor:
    """Per-mode share of the samples, ``(K,)`` float64 summing to 1."""
    x = _as_events(samples, gmm)
    k = gmm.num_components
    if assign == "soft":
        return _chunked(lambda b: gmm.responsibilities(b, 0.0), x).mean(0)
    if assign == "responsibility":
        labels = _chunked(lambda b: gmm.responsibilities(b, 0.0).argmax(1), x)
    elif assign == "nearest":
        means = gmm.means.reshape(k, -1)
        labels = _chunked(lambda b: torch.cdist(b.reshape(len(b), -1), means).argmin(1), x)
    else:
        raise ValueError(f"assign must be one of {ASSIGN}, got {assign!r}")
    return torch.bincount(labels, minlength=k).double() / len(x)


def tv_tolerance(weights, n: int, delta: float = 1e-3) -> float:
    """Bound on the TV of ``n`` exact samples that holds with probability ``1 - delta`` (see module doc)."""
    w = np.asarray(torch.as_tensor(weights, dtype=torch.float64).cpu())
    return float(0.5 * np.sqrt(w * (1 - w) / n).sum() + math.sqrt(math.log(1 / delta) / (2 * n)))


ON_MODE_QUANTILE = 0.99


def on_mode(samples: torch.Tensor, gmm, quantile: float = ON_MODE_QUANTILE) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
    """``(on, nearest, m2)``: whether each sample lies within the ``quantile`` ellipsoid of its nearest mode
    (Mahalanobis distance under that mode's own diagonal covariance), that mode's index and the squared distance.
    See the module docstring."""
    from scipy.stats import chi2

    x = _as_events(samples, gmm)
    k = gmm.num_components
    mu, sd = gmm.means.reshape(k, -1), gmm.stds.reshape(k, -1)

    def nearest(b):
        m2 = (((b.reshape(len(b), 1, -1) - mu) / sd) ** 2).sum(-1)
        best = m2.min(1)
        return torch.stack([best.values, best.indices.double()], 1)

    out = _chunked(nearest, x, 1024)
    radius2 = float(chi2.ppf(quantile, mu.shape[1]))
    return out[:, 0] <= radius2, out[:, 1].long(), out[:, 0]


def mode_scale(m2_on: torch.Tensor, dim: int, quantile: float = ON_MODE_QUANTILE) -> float:
    """MATH §7's mode scale from the on-mode samples' squared Mahalanobis distances ``m2_on``: ``sqrt(mean m2 / E[M2 |
    M2 <= r2])``, ``M2 ~ chi2_dim`` and ``r2`` its ``quantile``; the truncated mean is ``dim F_{dim+2}(r2) / F_dim(r2)``.
    """
    if len(m2_on) == 0:
        return float("nan")
    return math.sqrt(float(m2_on.double().mean()) / truncated_chi2_mean(dim, quantile))


PROFILE_LEVELS = tuple(k / 20 for k in range(1, 19))  # 0.05, 0.10, ..., 0.90 of the on-mode samples


def mode_profile_ratios(m2_on: torch.Tensor, dim: int, quantile: float = ON_MODE_QUANTILE,
                        levels=PROFILE_LEVELS) -> list[float]:
    """``Q(q) / Q_exact(q)`` at each level ``q``: the on-mode samples' Mahalanobis-distance ``q``-quantile over an
    exact sample's, ``sqrt(chi2_dim^-1(quantile q))`` (MATH §7's mode profile; 1 everywhere = the teacher's shape)."""
    from scipy.stats import chi2

    if len(m2_on) == 0:
        return [float("nan")] * len(levels)
    q = torch.tensor(levels, dtype=torch.float64)
    own = torch.quantile(m2_on.double().sqrt(), q)
    exact = torch.from_numpy(chi2.ppf(quantile * q.numpy(), dim)).sqrt()
    return (own / exact).tolist()


def mode_profile(m2_on: torch.Tensor, dim: int, quantile: float = ON_MODE_QUANTILE, levels=PROFILE_LEVELS) -> float:
    """MATH §7's mode profile error: the mean of ``|Q(q) / Q_exact(q) - 1|`` over ``levels`` (mode_profile_ratios);
    0 = the teacher's shape, ``|c - 1|`` for modes scaled by ``c`` about their means (up to the on-mode cut)."""
    return float(sum(abs(r - 1.0) for r in mode_profile_ratios(m2_on, dim, quantile, levels)) / len(levels))


def truncated_chi2_mean(dim: int, quantile: float = ON_MODE_QUANTILE) -> float:
    """``E[M2 | M2 <= r2]`` for ``M2 ~ chi2_dim``, ``r2`` its ``quantile``: ``dim F_{dim+2}(r2) / F_dim(r2)``."""
    from scipy.stats import chi2

    r2 = float(chi2.ppf(quantile, dim))
    return dim * float(chi2.cdf(r2, dim + 2)) / float(chi2.cdf(r2, dim))


def nll_width_term(m2: torch.Tensor, on: torch.Tensor, dim: int, quantile: float = ON_MODE_QUANTILE) -> float:
    """MATH §7's width term of the NLL (nats per sample): ``½ (on-mode fraction) (mean m2_on - E[M2 | M2 <= r2])``,
    what the on-mode samples' spread adds to the NLL beyond an exact sample's; 0 without on-mode samples."""
    if not bool(on.any()):
        return 0.0
    return 0.5 * float(on.double().mean()) * (float(m2[on].double().mean()) - truncated_chi2_mean(dim, quantile))


@torch.no_grad()
def gmm_metrics(samples: torch.Tensor, gmm, assign: str = "responsibility", threshold: float = 0.25) -> dict:
    """``mode_recall``, ``modes_covered``, ``tv``, ``tv_tolerance``, ``nll``, ``nll_teacher_width``, ``mode_mass``,
    ``off_mode``, ``tv_on_mode``, ``mode_scale`` and ``mode_profile`` of ``samples`` (module docstring)."""
    samples = torch.as_tensor(samples)
    n = len(samples)
    mass = mode_mass(samples, gmm, assign)
    w = gmm.weights.to(torch.float64)
    covered = (mass >= threshold * w) & (w > 0)
    nll = -_chunked(lambda b: gmm.log_prob(b, 0.0), _as_events(samples, gmm)).mean().item()
    on, nearest, m2 = on_mode(samples, gmm)
    on_mass = torch.bincount(nearest[on], minlength=len(w)).double() / max(int(on.sum()), 1)
    dim = math.prod(gmm.event_shape)
    return dict(mode_recall=covered.sum().item() / int((w > 0).sum()), modes_covered=int(covered.sum()),
                num_modes=int((w > 0).sum()), tv=0.5 * (mass - w).abs().sum().item(), tv_tolerance=tv_tolerance(w, n),
                nll=nll, nll_per_dim=nll / dim, nll_teacher_width=nll - nll_width_term(m2, on, dim),
                off_mode=1.0 - on.double().mean().item(), tv_on_mode=0.5 * (on_mass - w).abs().sum().item(),
                mode_scale=mode_scale(m2[on], dim), mode_profile=mode_profile(m2[on], dim), mode_mass=mass.tolist(), n=n, assign=assign)


def load_teacher(path: str):
    """A ``GaussianMixture``: a preset name of ``fdistill.data.gmm_preset`` (``ring8``, ``grid25``, ``gmm16d``) or a
    ``.json`` / ``.safetensors`` / ``.pt`` file holding ``means`` (+ ``stds``, ``weights``)."""
    from fdistill.networks.gmm import GaussianMixture

    if not os.path.exists(path) and os.sep not in path and "." not in path:
        from fdistill.data import gmm_preset

        return gmm_preset(path)
    if path.endswith(".json"):
        with open(path) as fh:
            d = json.load(fh)
    elif path.endswith(".safetensors"):
        from safetensors.torch import load_file

        d = load_file(path)
    else:
        d = torch.load(path, map_location="cpu", weights_only=True)
    d = {k.split(".")[-1]: v for k, v in d.items()}  # accept a GaussianMixture state_dict with prefixes
    if "means" not in d:
        raise KeyError(f"{path!r} has no 'means' (keys: {sorted(d)})")
    return GaussianMixture(d["means"], d.get("stds", 1.0), d.get("weights"))


def _load_samples(path: str) -> torch.Tensor:
    if path.endswith(".npy"):
        return torch.from_numpy(np.load(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m eval.gmm", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--gen", help="generator dir (fdistill.load_generator) producing (n, d) vectors")
    src.add_argument("--samples", help=".npy / .pt tensor of samples (n, d)")
    p.add_argument("--teacher", required=True, help="preset (ring8, grid25, gmm16d) or mixture file: .json / "
                                                    ".safetensors / .pt with means, stds, weights")
    p.add_argument("--num-samples", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--assign", choices=ASSIGN, default="responsibility")
    p.add_argument("--threshold", type=float, default=0.25)
    p.add_argument("--images-seen", type=int)
    p.add_argument("--out", help="append JSON result lines here")
    args = p.parse_args(argv)
    from .results import append_results, result_record

    gmm = load_teacher(args.teacher)
    if args.gen:
        import fdistill

        with torch.no_grad():
            samples = fdistill.load_generator(args.gen).sample(args.num_samples, seed=args.seed).cpu()
    else:
        samples = _load_samples(args.samples)
    m = gmm_metrics(samples, gmm, args.assign, args.threshold)
    ckpt = os.path.abspath(args.gen or args.samples)
    rows = [result_record(key, m[key], n=m["n"], features="gmm", seed=args.seed if args.gen else None,
                          checkpoint=ckpt, assign=args.assign, images_seen=args.images_seen,
                          **({"mode_mass": m["mode_mass"]} if key == "tv" else {}),
                          **({"tolerance": m["tv_tolerance"]} if key == "tv" else {}))
            for key in ("mode_recall", "tv", "nll", "off_mode", "tv_on_mode")]
    print(f"mode recall {m['mode_recall']:.3f} ({m['modes_covered']}/{m['num_modes']} modes), "
          f"TV {m['tv']:.4f} (MC tolerance {m['tv_tolerance']:.4f}), NLL {m['nll']:.4f} nats, "
          f"off-mode {m['off_mode']:.3f}, on-mode TV {m['tv_on_mode']:.4f}, n = {m['n']}")
    append_results(args.out, rows)
    return rows


if __name__ == "__main__":
    main()
