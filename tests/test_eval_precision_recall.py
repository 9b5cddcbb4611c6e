"""Improved precision/recall, k = 3 (MATH §7), on point clouds with closed-form answers."""
import numpy as np
import pytest
import torch

from eval.precision_recall import knn_radii, precision_recall, subsample


def test_knn_radii_on_a_grid():
    real = torch.arange(10, dtype=torch.float64).reshape(-1, 1)
    # 3rd neighbour: ends at distance 3, every other point at distance 2
    assert knn_radii(real, k=3).tolist() == [3, 2, 2, 2, 2, 2, 2, 2, 2, 3]


def test_precision_recall_closed_form_1d():
    real = np.arange(10.0).reshape(-1, 1)  # real balls cover [-3, 12]
    fake = np.concatenate([np.arange(5) + 0.5, np.arange(5) + 100.5]).reshape(-1, 1)
    # fake balls: 0.5 -> 3, 1.5..3.5 -> 2, 4.5 -> 3 cover [-2.5, 7.5] (and the far cluster); no ties
    out = precision_recall(real, fake, k=3, dtype=torch.float64)
    assert out["precision"] == pytest.approx(0.5)  # the cluster near 0 is inside, the one at 100 is not
    assert out["recall"] == pytest.approx(0.8)  # real points 0..7 are covered, 8 and 9 are not
    swapped = precision_recall(fake, real, k=3, dtype=torch.float64)
    assert swapped == pytest.approx({"precision": 0.8, "recall": 0.5})


def test_identical_and_disjoint_clouds():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16))
    assert precision_recall(a, a.copy(), batch_size=64) == pytest.approx({"precision": 1.0, "recall": 1.0})
    assert precision_recall(a, a + 100.0) == {"precision": 0.0, "recall": 0.0}
    # a generator covering half the modes: recall drops to about 1/2, precision stays 1
    angle = np.arange(8) * np.pi / 4
    centres = 20 * np.stack([np.cos(angle), np.sin(angle)], 1)
    modes = np.repeat(centres, 80, axis=0) + rng.normal(size=(640, 2))
    half = np.repeat(centres[:4], 160, axis=0) + rng.normal(size=(640, 2))
    out = precision_recall(modes, half)
    assert out["precision"] > 0.95 and 0.45 < out["recall"] <= 0.5


def test_subsample_is_seeded():
    x = np.arange(100).reshape(50, 2)
    assert subsample(x, None) is x and subsample(x, 80) is x
    assert np.array_equal(subsample(x, 10, seed=3), subsample(x, 10, seed=3))
    assert len(np.unique(subsample(x, 10)[:, 0])) == 10
