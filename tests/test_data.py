"""Data: mixture presets, digits, image folders, and the resumable loaders."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fdistill.data import (GMM_PRESETS, DigitsDataset, GMMSource, ImageFolderDataset, InfiniteLoader,
                           TensorImageDataset, gmm_preset)

# ---------------------------------------------------------------------------------------------- mixture presets


@pytest.mark.parametrize("name", sorted(GMM_PRESETS))
def test_presets_are_valid_mixtures(name):
    gm = gmm_preset(name)
    assert abs(gm.weights.sum().item() - 1) < 1e-12 and (gm.weights > 0).all()
    assert (gm.stds > 0).all()
    x = gm.sample(100, generator=torch.Generator().manual_seed(0))
    assert x.shape == (100, *gm.event_shape) and torch.isfinite(gm.log_prob(x)).all()
    # modes are well separated: every pair of means more than 3.5 x (sum of the two modes' largest stds) apart, so
    # their 99 % ellipses (3.03 stds in 2-D) are disjoint and the on-mode measure (MATH §7) is unambiguous
    d = torch.cdist(gm.means.flatten(1), gm.means.flatten(1)) + 1e9 * torch.eye(gm.num_components, dtype=gm.means.dtype)
    s = gm.stds.reshape(gm.num_components, -1).max(1).values
    assert (d > 3.5 * (s[:, None] + s[None, :])).all()


def test_preset_shapes_and_unequal_ring():
    ring = gmm_preset("ring8")
    assert ring.num_components == 8 and ring.event_shape == (2,)
    torch.testing.assert_close(ring.means.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))
    assert ring.weights.max() / ring.weights.min() >= 3  # light modes that reverse-KL students drop
    assert gmm_preset("grid25").num_components == 25
    gm16 = gmm_preset("gmm16d")
    assert gm16.event_shape == (16,) and gm16.num_components == 8
    assert torch.equal(gmm_preset("gmm16d").means, gm16.means)  # deterministic


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown mixture preset") as err:
        gmm_preset("ring9")
    assert all(name in str(err.value) for name in GMM_PRESETS)


# ---------------------------------------------------------------------------------------------- digits


@pytest.mark.parametrize("resolution", [16, 32])
def test_digits_shapes_range_and_labels(resolution):
    ds = DigitsDataset(resolution, split="all")
    assert len(ds) == 1797 and ds.shape == (1, resolution, resolution) and ds.num_classes == 10
    x, y = ds.get_batch(torch.arange(len(ds)))
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert x.min() < -0.99 and x.max() > 0.9  # uses the range: background -1, strokes near 1
    assert torch.equal(torch.unique(y), torch.arange(10))
    img, label = ds[5]
    assert img.shape == (1, resolution, resolution) and 0 <= int(label) < 10


def test_digits_resize_preserves_the_image():
    from sklearn.datasets import load_digits

    ds = DigitsDataset(16, split="all")
    raw = torch.as_tensor(load_digits().images, dtype=torch.float32) / 8 - 1
    # 2x2 average pooling of the 16x16 image returns to (a smoothed) 8x8 original
    pooled = torch.nn.functional.avg_pool2d(ds.images, 2)[:, 0]
    assert (pooled - raw).abs().mean() < 0.15


def test_digits_split_is_deterministic_stratified_and_disjoint():
    train, test = DigitsDataset(16, "train"), DigitsDataset(16, "test")
    assert len(test) == math.ceil(0.2 * 1797) and len(train) + len(test) == 1797
    assert not set(train.indices.tolist()) & set(test.indices.tolist())
    again = DigitsDataset(16, "test")
    assert torch.equal(again.indices, test.indices) and torch.equal(again.images, test.images)
    other = DigitsDataset(16, "test", seed=1)
    assert not torch.equal(other.indices, test.indices)
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # stratified: ~36 of each class
    all_ = DigitsDataset(16, "all")
    assert torch.equal(all_.images[test.indices], test.images)
    with pytest.raises(ValueError):
        DigitsDataset(24)


# ---------------------------------------------------------------------------------------------- image folders


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _striped(h=20, w=30):
    """Red left margin, green centre square, blue right margin: the centre crop is all green."""
    a = np.zeros((h, w, 3), np.uint8)
    m = (w - h) // 2
    a[:, :m, 0] = 255
    a[:, m:m + h, 1] = 255
    a[:, m + h:, 2] = 255
    return a


def test_image_folder_without_classes(tmp_path):
    _save(tmp_path / "a.png", _striped())
    _save(tmp_path / "nested" / "b.png", _striped(40, 60))  # one subfolder only: still unlabelled
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(tmp_path / "c.bmp")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(str(tmp_path), resolution=8)
    assert len(ds) == 3 and ds.shape == (3, 8, 8) and ds.labels is None and ds.class_names == []
    x, labels = ds.get_batch(torch.arange(3))
    assert labels is None and x.min() >= -1 and x.max() <= 1
    striped = [i for i, p in enumerate(ds.paths) if p.endswith(".png")]
    for i in striped:  # centre-cropped: green 1, red and blue -1
        torch.testing.assert_close(x[i, 1], torch.ones(8, 8))
        torch.testing.assert_close(x[i, [0, 2]], -torch.ones(2, 8, 8))
    gray = ImageFolderDataset(str(tmp_path), resolution=4, channels=1)
    assert gray.shape == (1, 4, 4)


def test_image_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    for cls, n in (("dog", 2), ("cat", 3)):
        for i in range(n):
            _save(tmp_path / cls / f"{i}.jpg", rng.integers(0, 255, (12, 12, 3), dtype=np.uint8))
    _save(tmp_path / "dog" / "puppies" / "p.webp", rng.integers(0, 255, (12, 12, 3), dtype=np.uint8))
    ds = ImageFolderDataset(str(tmp_path), resolution=12)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert sorted(ds.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    for path, label in zip(ds.paths, ds.labels.tolist()):
        assert ("/cat/" in path) == (label == 0)
    loader = InfiniteLoader(ds, batch_size=3, seed=0)
    x, y = next(loader)
    assert x.shape == (3, 3, 12, 12) and y.shape == (3,)


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no images") as err:
        ImageFolderDataset(str(tmp_path / "empty"), 8)
    assert str(tmp_path / "empty") in str(err.value)
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolderDataset(str(tmp_path / "missing"), 8)


# ---------------------------------------------------------------------------------------------- loaders


def _index_dataset(n):
    """Item i is the vector [i] with label i."""
    return TensorImageDataset(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n))


def _take(loader, k):
    return [next(loader)[1].tolist() for _ in range(k)]


def test_loader_epochs_are_seeded_permutations():
    ds = _index_dataset(50)
    a = _take(InfiniteLoader(ds, 10, seed=3), 12)  # 5 batches per epoch: epochs 0, 1 and part of 2
    assert a == _take(InfiniteLoader(ds, 10, seed=3), 12)
    assert a != _take(InfiniteLoader(ds, 10, seed=4), 12)
    assert sorted(sum(a[:5], [])) == list(range(50)) and sorted(sum(a[5:10], [])) == list(range(50))
    assert a[:5] != a[5:10]  # a fresh permutation every epoch (seed + epoch)
    assert sum(a[:5], []) == torch.randperm(50, generator=torch.Generator().manual_seed(3)).tolist()
    assert sum(a[5:10], []) == torch.randperm(50, generator=torch.Generator().manual_seed(4)).tolist()
    assert _take(InfiniteLoader(ds, 10, shuffle=False), 2) == [list(range(10)), list(range(10, 20))]


def test_loader_drop_last():
    ds = _index_dataset(23)
    dropped = InfiniteLoader(ds, 10, seed=0)
    assert dropped.batches_per_epoch() == 2 and [len(b) for b in _take(dropped, 4)] == [10] * 4
    kept = InfiniteLoader(ds, 10, seed=0, drop_last=False)
    batches = _take(kept, 6)
    assert kept.batches_per_epoch() == 3 and [len(b) for b in batches] == [10, 10, 3] * 2
    assert sorted(sum(batches[:3], [])) == list(range(23))
    with pytest.raises(ValueError, match="too small"):
        InfiniteLoader(ds, 30)


@pytest.mark.parametrize("stop", [3, 5, 7])  # mid-epoch, at an epoch boundary, in the second epoch
def test_loader_resumes_exactly(stop):
    ds = _index_dataset(50)
    reference = _take(InfiniteLoader(ds, 10, seed=7), 14)
    first = InfiniteLoader(ds, 10, seed=7)
    _take(first, stop)
    state = first.state_dict()
    resumed = InfiniteLoader(ds, 10, seed=7)
    resumed.load_state_dict(state)
    assert _take(resumed, 14 - stop) == reference[stop:]
    with pytest.raises(ValueError, match="seed"):
        InfiniteLoader(ds, 10, seed=8).load_state_dict(state)


def test_loader_ranks_take_disjoint_slices():
    ds = _index_dataset(100)
    world = 3
    loaders = [InfiniteLoader(ds, 11, seed=1, rank=r, world_size=world) for r in range(world)]
    per_rank = [sum(_take(loader, 3), []) for loader in loaders]  # 3 batches of 11 = the 33 items of epoch 0
    assert all(len(p) == 33 for p in per_rank)
    seen = [set(p) for p in per_rank]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(1))
    assert set().union(*seen) == set(perm[:99].tolist())
    with pytest.raises(ValueError):
        InfiniteLoader(ds, 11, rank=3, world_size=3)


def test_loader_accepts_plain_indexable_datasets():
    class Pairs:
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.full((2,), float(i)), i

    x, y = next(InfiniteLoader(Pairs(), 4, shuffle=False))
    assert torch.equal(y, torch.arange(4)) and torch.equal(x[:, 0], torch.arange(4.0))


def test_gmm_source_is_seeded_and_resumable():
    gm = gmm_preset("ring8")
    a = GMMSource(gm, batch_size=64, seed=5, with_labels=True)
    x, labels = next(a)
    assert x.shape == (64, 2) and x.dtype == torch.float32 and labels.shape == (64,)
    assert (labels < 8).all()
    state = a.state_dict()
    expected = [next(a)[0] for _ in range(3)]
    b = GMMSource(gm, batch_size=64, seed=5, with_labels=True)
    b.load_state_dict(state)
    for e in expected:
        assert torch.equal(next(b)[0], e)
    assert next(GMMSource(gm, 64, seed=5))[1] is None
    assert not torch.equal(next(GMMSource(gm, 64, seed=5, rank=1, world_size=2))[0], x)
    # the draws are exact: the labels' components are where the points are
    assert (gm.responsibilities(x.double(), 0.0).argmax(1) == labels).all()


def test_a_mixture_is_read_from_its_spec_in_one_place(tmp_path):
    """fdistill.data.mixture_from_spec: a preset, PRESET*C (means and stds scaled by C: every measure but the NLL
    the same), or a mapping — the config's teacher.means/stds/weights and SuperDiff's JSON models give the same
    mixture; bad specs are refused with what is accepted."""
    import pytest
    import torch

    from fdistill.build import build_gmm_teacher
    from fdistill.config import load_config
    from fdistill.data import gmm_preset, mixture_from_spec
    from superpose.presets import mixture_from_spec as superpose_spec

    ring = gmm_preset("ring8")
    assert torch.equal(mixture_from_spec("ring8").means, ring.means)
    big = mixture_from_spec("ring8*4")
    assert torch.equal(big.means, 4 * ring.means) and torch.equal(big.stds, 4 * ring.stds)
    assert torch.equal(big.weights, ring.weights)
    spec = {"means": [[0.0, 1.0], [2.0, 3.0]], "stds": [0.5, 1.0], "weights": [1.0, 3.0]}
    cfg = load_config(None, [f"out_dir={tmp_path}", f"teacher.means={spec['means']}", f"teacher.stds={spec['stds']}",
                             f"teacher.weights={spec['weights']}"])
    for gmm in (mixture_from_spec(spec), build_gmm_teacher(cfg.teacher), superpose_spec(spec)):
        assert torch.equal(gmm.means, torch.tensor(spec["means"], dtype=torch.float64))
        assert torch.allclose(gmm.stds[:, 0], torch.tensor([0.5, 1.0], dtype=torch.float64))
        assert torch.allclose(gmm.weights, torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert torch.equal(mixture_from_spec({"means": spec["means"]}).stds, torch.ones(2, 2, dtype=torch.float64))
    for bad, err in (("ring9", "unknown mixture preset 'ring9'"), ("ring8*x", "must be a positive number"),
                     ("ring8*0", "must be a positive number"), ({"stds": 1.0}, "needs 'means'"),
                     (3, "preset name, PRESET\\*C or a mapping")):
        with pytest.raises((ValueError, TypeError), match=err):
            mixture_from_spec(bad)
