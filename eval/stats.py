"""Reference statistics for FID / FD (MATH §7): clean-fid's named sets and custom sets made from a folder.

Files follow clean-fid's naming in clean-fid's ``stats`` folder (or ``--stats-dir`` / ``FDISTILL_STATS_DIR``):
``{name}_{mode}{tag}_{split}_{res}.npz`` with ``mu``, ``sigma`` (``split = custom``, ``res = na`` for custom sets),
plus ``..._kid.npz`` with the features themselves (what precision/recall needs). Custom Inception statistics made
here are therefore usable by ``cleanfid.fid.compute_fid(dataset_name=name, dataset_split="custom")`` as well.
Nothing is downloaded unless asked: a missing named file raises with its URL and the place to put it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

STATS_ENV = "FDISTILL_STATS_DIR"
STATS_URL = "https://www.cs.cmu.edu/~clean-fid/stats/"


@dataclass
class Reference:
    """Gaussian fit of reference features; ``feats`` when available (folders, custom stats) for precision/recall."""

    mu: np.ndarray
    sigma: np.ndarray
    feats: np.ndarray | None
    description: str


def stats_dir(path: str | None = None) -> str:
    """``path``, else ``$FDISTILL_STATS_DIR``, else clean-fid's own ``stats`` folder."""
    if path or os.environ.get(STATS_ENV):
        return os.path.expanduser(path or os.environ[STATS_ENV])
    import cleanfid

    return os.path.join(os.path.dirname(cleanfid.__file__), "stats")


def stats_filename(name: str, mode: str, split: str = "custom", res="na", tag: str = "", kid: bool = False) -> str:
    """clean-fid's file name for a statistics file."""
    res = "na" if split == "custom" else res
    return f"{name}_{mode}{tag}_{split}_{res}{'_kid' if kid else ''}.npz".lower()


def feature_stats(feats: np.ndarray):
    """Mean and (unbiased) covariance of ``(N, D)`` features, in float64."""
    feats = np.asarray(feats, dtype=np.float64)
    return feats.mean(0), np.cov(feats, rowvar=False)


def save_custom_stats(name: str, feats: np.ndarray, mode: str, tag: str = "", meta: dict | None = None,
                      directory: str | None = None, overwrite: bool = False) -> str:
    """Write ``mu``/``sigma`` and the features of a custom reference set; returns the statistics path."""
    directory = stats_dir(directory)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, stats_filename(name, mode, tag=tag))
    kid_path = os.path.join(directory, stats_filename(name, mode, tag=tag, kid=True))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"statistics {path!r} already exist; pass --overwrite to replace them")
    mu, sigma = feature_stats(feats)
    meta_s = json.dumps(meta or {})
    np.savez_compressed(path, mu=mu, sigma=sigma, meta=meta_s)
    np.savez_compressed(kid_path, feats=np.asarray(feats, dtype=np.float32), meta=meta_s)
    return path


def load_stats(name: str, mode: str = "clean", split: str = "custom", res="na", tag: str = "",
               directory: str | None = None, download: bool = False, meta_check: dict | None = None) -> Reference:
    """Load named (``split`` train/test, e.g. ``cifar10`` at 32) or custom statistics; features if stored.

    ``meta_check``: keys the stored meta must match (e.g. the digits classifier's hash) when the file records them."""
    directory = stats_dir(directory)
    fname = stats_filename(name, mode, split, res, tag)
    path = os.path.join(directory, fname)
    if not os.path.isfile(path):
        if split == "custom":
            raise FileNotFoundError(
                f"no custom statistics '{name}' for mode {mode!r}{' / ' + tag[1:] if tag else ''}: expected "
                f"'{path}'. Make them with:  python -m eval.fid make-stats --name {name} --folder REF_FOLDER "
                f"--mode {mode}{' --features ' + tag[1:] if tag else ''}")
        if not download:
            raise FileNotFoundError(
                f"reference statistics '{fname}' not found at '{path}'. Nothing was downloaded.\n"
                f"  Fetch them on a machine with internet:  wget {STATS_URL}{fname}\n"
                f"  and copy the file to '{path}' (or into the folder given by --stats-dir / {STATS_ENV}); "
                f"or rerun with --download where there is internet.")
        from cleanfid.downloads_helper import check_download_url

        check_download_url(local_folder=directory, url=STATS_URL + fname)
    with np.load(path) as f:
        mu, sigma = f["mu"], f["sigma"]
        meta = json.loads(str(f["meta"])) if "meta" in f.files else {}
    for key, value in (meta_check or {}).items():
        if key in meta and meta[key] != value:
            raise ValueError(f"statistics {path!r} were made with {key}={meta[key]!r}, but this evaluation uses "
                             f"{key}={value!r}; remake them (make-stats --overwrite)")
    feats = None
    kid_path = os.path.join(directory, stats_filename(name, mode, split, res, tag, kid=True))
    if os.path.isfile(kid_path):
        with np.load(kid_path) as f:
            feats = f["feats"]
    return Reference(np.asarray(mu, np.float64), np.asarray(sigma, np.float64), feats, f"{name}:{split}:{res}")
