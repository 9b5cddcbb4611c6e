"""Improved precision and recall (Kynkäänniemi et al., 2019) on features, k-NN manifolds with k = 3 (MATH §7).

Each point of a set carries a ball reaching its k-th nearest neighbour within that set; the union of the balls
estimates the set's manifold. precision = share of generated points inside the real manifold, recall = share of
real points inside the generated manifold (the direct measure of mode coverage).
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm


def _as_tensor(x, device, dtype):
    return torch.as_tensor(np.asarray(x), device=device).to(dtype).reshape(len(x), -1)


def knn_radii(feats: torch.Tensor, k: int = 3, batch_size: int = 1024, progress: bool = False) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    if len(feats) <= k:
        raise ValueError(f"need more than k={k} points for k-NN radii, got {len(feats)}")
    out = []
    for i in tqdm(range(0, len(feats), batch_size), desc="k-NN radii", disable=not progress):
        d = torch.cdist(feats[i:i + batch_size], feats)
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])  # index 0 is the point itself
    return torch.cat(out)


def inside_manifold(query: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, batch_size: int = 1024,
                    progress: bool = False) -> torch.Tensor:
    """For each query, whether it lies in some ball ``||q - points_j|| <= radii_j``."""
    out = []
    for i in tqdm(range(0, len(query), batch_size), desc="manifold", disable=not progress):
        d = torch.cdist(query[i:i + batch_size], points)
        out.append((d <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(out)


def precision_recall(real, fake, k: int = 3, device="cpu", dtype=torch.float32, batch_size: int = 1024,
                     progress: bool = False) -> dict:
    """``{"precision", "recall"}`` of ``fake`` against ``real`` features (arrays or tensors ``(N, D)``)."""
    real = _as_tensor(real, device, dtype)
    fake = _as_tensor(fake, device, dtype)
    real_r = knn_radii(real, k, batch_size, progress)
    fake_r = knn_radii(fake, k, batch_size, progress)
    precision = inside_manifold(fake, real, real_r, batch_size, progress).double().mean().item()
    recall = inside_manifold(real, fake, fake_r, batch_size, progress).double().mean().item()
    return {"precision": precision, "recall": recall}


def subsample(feats: np.ndarray, num: int | None, seed: int = 0) -> np.ndarray:
    """At most ``num`` rows of ``feats``, drawn without replacement with a fixed seed."""
    if num is None or len(feats) <= num:
        return feats
    idx = np.random.default_rng(seed).choice(len(feats), size=num, replace=False)
    return feats[np.sort(idx)]
