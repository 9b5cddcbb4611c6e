"""Training data: Gaussian-mixture presets (exact teachers, MATH §0/§7), small image sets, and resumable loaders.

Every source yields ``(x, labels)`` batches through ``next()``, with ``labels`` ``None`` when there are none, and has
``state_dict()`` / ``load_state_dict()`` so a resumed run sees exactly the batches an uninterrupted run would.

- ``gmm_preset(name)``: ``ring8`` (8 modes of unequal weight on a circle), ``grid25`` (5x5 grid), ``gmm16d``,
  ``blobs6`` (2-D, larger scale, unequal widths and weights), ``aniso8d`` (8-D, off-centre, anisotropic),
  ``islands3`` (2-D, three far-apart modes of weights 0.80 / 0.15 / 0.05: mode coverage from a collapsed start).
- ``DigitsDataset``: scikit-learn's bundled 8x8 digits resized to 16x16 or 32x32, in ``[-1, 1]``.
- ``ImageFolderDataset``: any folder of images, centre-cropped and resized, in ``[-1, 1]``.
- ``InfiniteLoader``: deterministic per-epoch shuffles (``seed + epoch``), one slice per rank, no worker processes.
- ``GMMSource``: exact mixture samples from a seeded ``torch.Generator``.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from .networks.gmm import GaussianMixture

# ---------------------------------------------------------------------------------------------- mixture presets


def _ring8() -> GaussianMixture:
    """8 modes on a circle of radius 2, std 0.12; heavy and light modes alternate (weights 4:1, light = 5% each).

    Reverse-KL students tend to drop the light modes: mode recall (MATH §7) tells the divergences apart.
    """
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    weights = torch.tensor([4.0, 1.0] * 4)
    return GaussianMixture(means, 0.12, weights)


def _grid25() -> GaussianMixture:
    """25 equal-weight modes on the grid ``{-2, -1, 0, 1, 2}^2``, std 0.08."""
    g = torch.arange(-2, 3, dtype=torch.float64)
    means = torch.cartesian_prod(g, g)
    return GaussianMixture(means, 0.08)


def _gmm16d() -> GaussianMixture:
    """8 components in 16-D: means are 0.5 x rows 1..8 of the 16x16 Sylvester-Hadamard matrix (norm 2, pairwise
    distance 2.83), per-component stds 0.2..0.35, weights 4:4:2:2:1:1:1:1. Built without a random generator, so
    it is the same on every platform."""
    means = 0.5 * _hadamard(16)[1:9]
    stds = torch.tensor([0.2, 0.25, 0.3, 0.35, 0.2, 0.25, 0.3, 0.35])
    weights = torch.tensor([4.0, 4.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0])
    return GaussianMixture(means, stds, weights)


def _hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _blobs6() -> GaussianMixture:
    """6 modes in 2-D at a larger scale, placed irregularly (radius 7.1-8.2, nearest pair 7.1 apart), with unequal
    widths (std 0.4-1.2) and weights (0.30 .. 0.08): a mixture unlike ring8 in scale, width and balance."""
    means = torch.tensor([[-8.0, 2.0], [-3.0, 7.0], [4.0, 6.0], [8.0, -1.0], [2.0, -7.0], [-5.0, -5.0]],
                         dtype=torch.float64)
    stds = torch.tensor([0.6, 0.9, 0.4, 1.2, 0.7, 0.5])
    weights = torch.tensor([0.30, 0.20, 0.15, 0.15, 0.12, 0.08])
    return GaussianMixture(means, stds, weights)


def _aniso8d() -> GaussianMixture:
    """5 modes in 8-D away from the origin: means ``10 + 1.5 x`` rows 1..5 of the 8x8 Hadamard matrix (pairwise 6.0
    apart), diagonal stds 0.3..0.6 that differ per dimension and per mode, weights 0.40 .. 0.05."""
    means = 10.0 + 1.5 * _hadamard(8)[1:6]
    i, k = torch.meshgrid(torch.arange(8), torch.arange(5), indexing="xy")
    stds = 0.3 * (1 + 0.5 * ((i + k) % 3)).double()
    weights = torch.tensor([0.40, 0.25, 0.20, 0.10, 0.05])
    return GaussianMixture(means, stds, weights)


def _islands3() -> GaussianMixture:
    """3 far-apart, unequal modes in 2-D: a heavy one at the origin (weight 0.80, std 0.5) and two light islands (0.15
    and 0.05, std 0.3) at the other corners of a triangle of side 9 (18 stds of the heavy mode). Built for the
    mode-coverage question (issue 23): a student that starts collapsed near the mean must find the light islands."""
    means = torch.tensor([[0.0, 0.0], [9.0, 0.0], [4.5, 4.5 * math.sqrt(3)]], dtype=torch.float64)
    stds = torch.tensor([0.5, 0.3, 0.3])
    weights = torch.tensor([0.80, 0.15, 0.05])
    return GaussianMixture(means, stds, weights)


GMM_PRESETS = {"ring8": _ring8, "grid25": _grid25, "gmm16d": _gmm16d, "blobs6": _blobs6, "aniso8d": _aniso8d,
               "islands3": _islands3}


def gmm_preset(name: str) -> GaussianMixture:
    """The exact mixture teacher called ``name`` (one of ``GMM_PRESETS``)."""
    try:
        return GMM_PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown mixture preset {name!r}; valid: {sorted(GMM_PRESETS)}") from None


def mixture_from_spec(spec) -> GaussianMixture:
    """A mixture teacher from its description, the one place one is read: a preset name, ``PRESET*C`` (the preset
    with means and stds scaled by ``C > 0``), or a mapping ``{"means": (K, d), "stds": scalar | (K,) | like means,
    "weights": (K,) | None}`` (stds default 1, weights uniform)."""
    if isinstance(spec, str):
        name, star, factor = spec.partition("*")
        gmm = gmm_preset(name)
        if not star:
            return gmm
        try:
            c = float(factor)
        except ValueError:
            c = float("nan")
        if not c > 0:
            raise ValueError(f"mixture {spec!r}: the scale after '*' must be a positive number; got {factor!r}")
        return GaussianMixture(gmm.means * c, gmm.stds * c, gmm.weights)
    if hasattr(spec, "keys"):
        spec = OmegaConf.to_container(spec) if OmegaConf.is_config(spec) else dict(spec)
        if not spec.get("means"):
            raise ValueError(f"a mixture spec needs 'means'; got keys {sorted(spec)}")
        stds = spec.get("stds")
        return GaussianMixture(torch.tensor(spec["means"], dtype=torch.float64), 1.0 if stds is None else stds,
                               spec.get("weights"))
    raise TypeError(f"a mixture spec is a preset name, PRESET*C or a mapping with 'means'; got {type(spec).__name__}")


# ---------------------------------------------------------------------------------------------- image data sets


class TensorImageDataset:
    """Images held in memory, ``(N, C, R, R)`` in ``[-1, 1]``, with optional integer labels ``(N,)``.

    Stored as uint8 when built from pixels (4x less memory); ``get_batch`` converts to float.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None, num_classes: int = 0):
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.num_classes = images, labels, num_classes

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple:
        """Shape of one item, ``(C, R, R)``."""
        return tuple(self.images.shape[1:])

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x

    def get_batch(self, index) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x, labels)`` for a 1-D index tensor."""
        index = torch.as_tensor(index, dtype=torch.long)
        return self._to_float(self.images[index]), None if self.labels is None else self.labels[index]

    def __getitem__(self, i: int):
        x, y = self.get_batch(torch.tensor([i]))
        return x[0], None if y is None else y[0]


class DigitsDataset(TensorImageDataset):
    """scikit-learn's bundled digits (1797 images, 8x8, values 0..16, 10 classes) as ``(1, R, R)`` in ``[-1, 1]``.

    Resized bilinearly (antialiased) to ``resolution`` 16 or 32. ``split`` is ``train``, ``test`` or ``all``; the
    split is stratified by class and fixed by ``seed`` and ``test_fraction``.
    """

    def __init__(self, resolution: int = 16, split: str = "train", test_fraction: float = 0.2, seed: int = 0):
        if resolution not in (16, 32):
            raise ValueError(f"resolution must be 16 or 32; got {resolution}")
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all'; got {split!r}")
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction}")
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 8 - 1  # 0..16 -> [-1, 1]
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp(-1, 1)
        y = torch.as_tensor(digits.target, dtype=torch.long)
        idx = torch.arange(len(y))
        if split != "all":
            train, test = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed,
                                           stratify=digits.target)
            idx = torch.as_tensor(np.sort(train if split == "train" else test))
        super().__init__(x[idx].contiguous(), y[idx], num_classes=10)
        self.resolution, self.split = resolution, split
        self.indices = idx  # positions in scikit-learn's order


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _load_image(path: str, resolution: int, channels: int) -> np.ndarray:
    """Centre-crop to a square, resize (Lanczos, as EDM's dataset tool), ``(C, R, R)`` uint8."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB" if channels == 3 else "L")
        w, h = img.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
        if s != resolution:
            img = img.resize((resolution, resolution), Image.LANCZOS)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


class ImageFolderDataset(TensorImageDataset):
    """Every image under ``root`` (recursively; png, jpg, jpeg, webp, bmp), centre-cropped and resized to
    ``resolution``, ``(channels, R, R)`` in ``[-1, 1]``.

    Labels are the first-level subfolder names (sorted, ``class_names``) when every image lies in one of at least
    two subfolders; otherwise there are none. Images are decoded once (in threads) and kept as uint8.
    """

    def __init__(self, root: str, resolution: int, channels: int = 3, num_threads: int = 8):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3; got {channels}")
        root = os.path.abspath(os.path.expanduser(root))
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder {root!r} does not exist")
        paths = sorted(
            os.path.join(d, f) for d, _, files in os.walk(root) for f in files
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not paths:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root!r}")
        rel = [os.path.relpath(p, root).split(os.sep) for p in paths]
        top = sorted({r[0] for r in rel if len(r) > 1})
        labels, self.class_names = None, []
        if len(top) >= 2 and all(len(r) > 1 for r in rel):
            self.class_names = top
            index = {name: i for i, name in enumerate(top)}
            labels = torch.tensor([index[r[0]] for r in rel], dtype=torch.long)
        with ThreadPoolExecutor(max(1, num_threads)) as pool:
            arrays = list(pool.map(lambda p: _load_image(p, resolution, channels), paths))
        super().__init__(torch.from_numpy(np.stack(arrays)), labels, num_classes=len(self.class_names))
        self.root, self.paths, self.resolution = root, paths, resolution


# ---------------------------------------------------------------------------------------------- loaders


def _fetch(dataset, index: torch.Tensor):
    """``(x, labels)`` for an index tensor: ``dataset.get_batch`` if it has one, else stack ``dataset[i]``."""
    if hasattr(dataset, "get_batch"):
        return dataset.get_batch(index)
    items = [dataset[int(i)] for i in index]
    if isinstance(items[0], (tuple, list)):
        xs, ys = zip(*items)
        labels = None if ys[0] is None else torch.as_tensor(
            torch.stack(ys) if torch.is_tensor(ys[0]) else ys, dtype=torch.long)
        return torch.stack(xs), labels
    return torch.stack(items), None


class InfiniteLoader:
    """Batches ``(x, labels)`` forever, over epochs shuffled by ``torch.Generator().manual_seed(seed + epoch)``.

    Every rank sees the same permutation and takes its own strided slice (``perm[rank::world_size]``, cut to equal
    length across ranks), so ranks never share an item within an epoch. ``batch_size`` is per rank. With
    ``drop_last`` an epoch ends before a partial batch. ``state_dict()`` holds ``(epoch, position)``: loading it
    resumes at exactly the next batch. No worker processes: the data sets are tensors in memory.
    """

    def __init__(self, dataset, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = True,
                 rank: int = 0, world_size: int = 1, device=None):
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size; got rank={rank}, world_size={world_size}")
        self.dataset, self.batch_size, self.seed = dataset, int(batch_size), int(seed)
        self.shuffle, self.drop_last, self.rank, self.world_size = shuffle, drop_last, rank, world_size
        self.device = device
        self.per_rank = len(dataset) // world_size
        if self.per_rank == 0 or (drop_last and self.per_rank < self.batch_size):
            raise ValueError(f"data set of {len(dataset)} items is too small for batch_size={batch_size} on "
                             f"{world_size} rank(s)")
        self.epoch, self.position = 0, 0
        self._order = None

    def _epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's indices for ``epoch`` (the same on every call)."""
        n = len(self.dataset)
        if self.shuffle:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            perm = torch.arange(n)
        return perm[self.rank::self.world_size][: self.per_rank]

    def batches_per_epoch(self) -> int:
        return self.per_rank // self.batch_size if self.drop_last else math.ceil(self.per_rank / self.batch_size)

    def __iter__(self):
        return self

    def __next__(self):
        return self.next()

    def next(self):
        """The next ``(x, labels)`` batch."""
        remaining = self.per_rank - self.position
        if remaining <= 0 or (self.drop_last and remaining < self.batch_size):
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        if self._order is None:
            self._order = self._epoch_indices(self.epoch)
        index = self._order[self.position: self.position + self.batch_size]
        self.position += len(index)
        x, labels = _fetch(self.dataset, index)
        if self.device is not None:
            x = x.to(self.device)
            labels = None if labels is None else labels.to(self.device)
        return x, labels

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "batch_size": self.batch_size,
                "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "world_size"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"loader state has {key}={state[key]} but this loader has {getattr(self, key)}")
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None


class GMMSource:
    """Exact samples of a Gaussian mixture with the loader interface: ``next() -> (x, labels)``.

    ``labels`` are the components when ``with_labels``, else ``None``. Each rank draws from its own stream
    (``seed + 1_000_003 * rank``); the generator state is in ``state_dict()``.
    """

    def __init__(self, mixture: GaussianMixture, batch_size: int = 256, seed: int = 0, with_labels: bool = False,
                 rank: int = 0, world_size: int = 1, device=None, dtype=torch.float32):
        self.mixture, self.batch_size, self.with_labels = mixture, int(batch_size), with_labels
        self.seed, self.rank, self.world_size, self.device, self.dtype = int(seed), rank, world_size, device, dtype
        self.generator = torch.Generator(device=mixture.means.device).manual_seed(self.seed + 1_000_003 * rank)
        self.draws = 0

    def __iter__(self):
        return self

    def __next__(self):
        return self.next()

    def next(self):
        x, labels = self.mixture.sample(self.batch_size, generator=self.generator, return_labels=True,
                                        dtype=self.dtype)
        self.draws += 1
        if self.device is not None:
            x, labels = x.to(self.device), labels.to(self.device)
        return x, labels if self.with_labels else None

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "draws": self.draws, "seed": self.seed, "rank": self.rank}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.draws = int(state.get("draws", 0))
