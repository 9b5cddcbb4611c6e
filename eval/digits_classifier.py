"""A small CNN on scikit-learn's bundled digits, and its penultimate layer as a feature space (MATH §7).

Offline stand-in for Inception on the digits demo: the Fréchet distance in this space is reported as
"FD-digits" (never "FID"), with precision/recall on the same features.

    python -m eval.digits_classifier --out ~/.cache/fdistill/digits_classifier       # train (CPU, seconds)
    python -m eval.digits_classifier --out DIR --export-images data/digits_png         # + the real digits as PNGs
    python -m eval.digits_classifier --from bench/results/digits_scorer/classifier     # the README tables' network

A classifier trained from a seed still differs between CPUs (other kernels), so FD-digits made with two machines'
own classifiers differ by about 1 %; ``--from`` installs a kept one (the repository's, the scale of its tables).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

CLASSIFIER_ENV = "FDISTILL_DIGITS_CLASSIFIER"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def default_path() -> str:
    """``$FDISTILL_DIGITS_CLASSIFIER``, else ``~/.cache/fdistill/digits_classifier``."""
    return os.environ.get(CLASSIFIER_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "fdistill",
                                                          "digits_classifier")


def load_digits_tensor(resolution: int = 16):
    """scikit-learn's 1797 digits in scikit-learn's order as ``(N, 1, R, R)`` float32 in [-1, 1] and labels ``(N,)``
    (the same pixels as ``fdistill.data.DigitsDataset``, which this reads)."""
    from fdistill.data import DigitsDataset

    ds = DigitsDataset(resolution=resolution, split="all")
    return ds.get_batch(torch.arange(len(ds)))


class DigitsCNN(nn.Module):
    """conv-pool-conv-pool-MLP; ``features`` is the penultimate (post-ReLU) layer, ``forward`` gives logits."""

    def __init__(self, resolution: int = 16, width: int = 16, feature_dim: int = 64, num_classes: int = 10):
        super().__init__()
        self.config = dict(resolution=resolution, width=width, feature_dim=feature_dim, num_classes=num_classes)
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(2 * width * 16, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, R, R)`` in [-1, 1] -> ``(B, feature_dim)``."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random per-image translation by up to ``max_shift`` pixels (background -1)."""
    if max_shift <= 0:
        return x
    r = x.shape[-1]
    padded = F.pad(x, [max_shift] * 4, value=-1.0)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, x.shape[0]), generator=gen).tolist()
    return torch.stack([padded[i, :, a:a + r, b:b + r] for i, (a, b) in enumerate(zip(dy, dx))])


def train_classifier(resolution: int = 16, steps: int = 1500, batch_size: int = 64, lr: float = 2e-3,
                     seed: int = 0, test_fraction: float = 0.2, progress: bool = True, width: int = 16,
                     feature_dim: int = 64):
    """Train :class:`DigitsCNN` (Adam, cosine lr, +-1 px shifts per 16 px) on a seeded stratified split.

    Returns ``(model, info)`` with ``info["test_accuracy"]`` measured on the held-out split. Trained on one CPU
    thread whatever the caller's setting: a CPU convolution's sums depend on the thread count, and the FD-digits
    numbers depend on the weights, so the same seed gives the same feature network on every machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_classifier(resolution, steps, batch_size, lr, seed, test_fraction, progress, width, feature_dim)
    finally:
        torch.set_num_threads(threads)


def _train_classifier(resolution, steps, batch_size, lr, seed, test_fraction, progress, width, feature_dim):
    from sklearn.model_selection import train_test_split

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = load_digits_tensor(resolution)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed,
                                           stratify=y.numpy())
    xtr, ytr, xte, yte = x[idx_train], y[idx_train], x[idx_test], y[idx_test]
    model = DigitsCNN(resolution=resolution, width=width, feature_dim=feature_dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    max_shift = max(1, resolution // 16)
    model.train()
    bar = tqdm(range(steps), desc="digits classifier", disable=not progress)
    for _ in bar:
        batch = torch.randint(0, len(ytr), (batch_size,), generator=gen)
        loss = F.cross_entropy(model(_shift(xtr[batch], max_shift, gen)), ytr[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    info = dict(test_accuracy=acc, num_test=len(yte), num_train=len(ytr), steps=steps, batch_size=batch_size,
                lr=lr, seed=seed)
    return model, info


def save_classifier(model: DigitsCNN, path: str, info: dict | None = None) -> None:
    """``path/model.safetensors`` + ``path/config.json`` (architecture and training info)."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(path, WEIGHTS_NAME))
    with open(os.path.join(path, CONFIG_NAME), "w") as fh:
        json.dump({"architecture": model.config, **(info or {})}, fh, indent=2)


def load_classifier(path: str | None = None, device="cpu"):
    """Load what :func:`save_classifier` wrote; returns ``(model, config)``."""
    from safetensors.torch import load_file

    path = path or default_path()
    weights = os.path.join(path, WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"no digits classifier at '{path}' (expected '{weights}' and '{CONFIG_NAME}'). Train one (CPU, under a "
            f"minute) with:  python -m eval.digits_classifier --out {path}   (or set {CLASSIFIER_ENV})")
    with open(os.path.join(path, CONFIG_NAME)) as fh:
        config = json.load(fh)
    model = DigitsCNN(**config["architecture"])
    model.load_state_dict(load_file(weights))
    with open(weights, "rb") as fh:
        config["sha256"] = hashlib.sha256(fh.read()).hexdigest()[:16]
    return model.to(device).eval(), config


def install_classifier(source: str, path: str) -> dict:
    """Copy the classifier at ``source`` (what :func:`save_classifier` wrote) to ``path``, after loading it (a folder
    that is not one is refused before anything is written); returns its config, with ``sha256``."""
    import shutil

    _, config = load_classifier(source)
    if os.path.abspath(source) != os.path.abspath(path):
        os.makedirs(path, exist_ok=True)
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            shutil.copyfile(os.path.join(source, name), os.path.join(path, name))
    return config


class DigitsFeatures:
    """clean-fid ``custom_feat_extractor``: images in [0, 255], ``(B, 3, H, W)`` -> penultimate features.

    Channels are averaged (grayscale), resized to the classifier's resolution if needed and mapped to [-1, 1]."""

    def __init__(self, model: DigitsCNN):
        self.model = model
        self.resolution = model.config["resolution"]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().mean(1, keepdim=True) / 127.5 - 1
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True,
                              align_corners=False)
        return self.model.features(x)


def class_histogram(features, model: DigitsCNN) -> np.ndarray:
    """The fraction of images the classifier puts in each class, from their FD-digits features (the penultimate
    layer, as ``DigitsFeatures`` gives them): ``argmax head(features)``. The image-side counterpart of the mixtures'
    mode weights (MATH §7)."""
    with torch.no_grad():
        f = torch.as_tensor(np.asarray(features), dtype=torch.float32)
        head = model.head.to("cpu")
        labels = head(f).argmax(1)
    counts = torch.bincount(labels, minlength=head.out_features).double()
    return (counts / counts.sum()).numpy()


def class_tv(p, q) -> float:
    """Total variation ``0.5 * sum |p - q|`` between two class histograms of the same length."""
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if p.shape != q.shape:
        raise ValueError(f"class histograms of different lengths: {p.shape} vs {q.shape}")
    return float(0.5 * np.abs(p - q).sum())


def export_images(folder: str, resolution: int = 16) -> int:
    """Write the 1797 real digits as grayscale PNGs (the reference folder for FD-digits)."""
    from PIL import Image

    x, y = load_digits_tensor(resolution)
    os.makedirs(folder, exist_ok=True)
    pixels = ((x[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    for i, (img, label) in enumerate(zip(pixels, y.tolist())):
        Image.fromarray(img, mode="L").save(os.path.join(folder, f"{i:05d}_{label}.png"))
    return len(pixels)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval.digits_classifier", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=default_path(), help="output directory (model.safetensors + config.json)")
    p.add_argument("--resolution", type=int, default=16, choices=(16, 32))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default 1: fastest for this tiny net on a shared machine, same weights "
                        "on every machine of the same CPU type)")
    p.add_argument("--export-images", metavar="DIR", help="also write the real digits as PNGs to DIR")
    p.add_argument("--from", dest="source", metavar="DIR",
                   help="install this kept classifier at --out instead of training one (e.g. the repository's "
                        "bench/results/digits_scorer/classifier, the network of the README's FD-digits)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.source:
        info = install_classifier(args.source, args.out)
        print(f"digits classifier {info['sha256']} (test accuracy {info.get('test_accuracy', float('nan')):.4f}, "
              f"{info['architecture']['resolution']} px) copied from {args.source} to {args.out}")
    else:
        model, info = train_classifier(args.resolution, args.steps, args.batch_size, args.lr, args.seed)
        save_classifier(model, args.out, info)
        print(f"digits classifier: test accuracy {info['test_accuracy']:.4f} on {info['num_test']} held-out images "
              f"({args.resolution} px, {args.steps} steps, seed {args.seed}); saved to {args.out}")
    if args.export_images:
        n = export_images(args.export_images, info["architecture"]["resolution"] if args.source else args.resolution)
        print(f"wrote {n} real digits to {args.export_images}")
    return info


if __name__ == "__main__":
    main()
