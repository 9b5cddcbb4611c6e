"""Offline Inception-v3 for FID (MATH §7): find the weights on disk, never download them silently.

clean-fid fetches its weights at first use. Here they are looked up, in order, at ``--inception PATH``, the
environment variable (``FDISTILL_INCEPTION`` for the TorchScript file of the ``clean`` / ``legacy_tensorflow`` modes,
``FDISTILL_INCEPTION_PYTORCH`` for the ``legacy_pytorch`` state dict) and clean-fid's own cache. When the file is
missing, :class:`MissingWeightsError` says which file to put where and the URL to fetch it from.
The file found is handed to clean-fid's own wrappers (``InceptionV3W`` / ``InceptionV3``), so the features are
exactly clean-fid's.
"""
from __future__ import annotations

import contextlib
import os
import platform
import tempfile

import torch

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_ENV = "FDISTILL_INCEPTION"
PYTORCH_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + PYTORCH_FILE
PYTORCH_ENV = "FDISTILL_INCEPTION_PYTORCH"
MODES = ("clean", "legacy_tensorflow", "legacy_pytorch")


class MissingWeightsError(FileNotFoundError):
    """The Inception weights FID needs are not on disk (and no download was allowed)."""


def _spec(mode: str):
    """(file name, URL, env var, clean-fid's default location) for ``mode``."""
    if mode not in MODES:
        raise ValueError(f"unknown FID mode {mode!r}; choose one of {MODES}")
    if mode == "legacy_pytorch":
        return PYTORCH_FILE, PYTORCH_URL, PYTORCH_ENV, os.path.join(torch.hub.get_dir(), "checkpoints", PYTORCH_FILE)
    cache = "./" if platform.system() == "Windows" else "/tmp"  # where clean-fid's feature_extractor looks
    return INCEPTION_FILE, INCEPTION_URL, INCEPTION_ENV, os.path.join(cache, INCEPTION_FILE)


def _as_file(path: str, fname: str) -> str:
    """A directory (existing, or a path without a file extension) stands for ``directory/fname``."""
    path = os.path.expanduser(path)
    suffixless = not os.path.exists(path) and not os.path.splitext(path)[1]
    is_dir = os.path.isdir(path) or path.endswith(os.sep) or suffixless
    return os.path.join(path, fname) if is_dir else path


def missing_message(mode: str, expected: str, source: str) -> str:
    fname, url, env, default = _spec(mode)
    return (
        f"FID needs the Inception weights file '{fname}' ({mode} mode), expected at '{expected}' ({source}), "
        f"and it is not there. Nothing was downloaded.\n"
        f"  Fetch it on a machine with internet:  wget {url} -O {fname}\n"
        f"  then copy it to '{expected}', or pass --inception /path/to/{fname}, or set {env}=/path/to/{fname} "
        f"(clean-fid's own cache location is '{default}').\n"
        f"  (Or rerun with --download where there is internet.)"
    )


def find_inception(mode: str = "clean", path: str | None = None, download: bool = False) -> str:
    """Path of the Inception weights for ``mode``: ``path``, else the env var, else clean-fid's cache.

    Raises :class:`MissingWeightsError` (naming the file, the location and the URL) when it is not there, unless
    ``download`` is set, in which case it is fetched to the expected location."""
    fname, url, env, default = _spec(mode)
    if path:
        expected, source = _as_file(path, fname), "from --inception"
    elif os.environ.get(env):
        expected, source = _as_file(os.environ[env], fname), f"from the environment variable {env}"
    else:
        expected, source = default, "clean-fid's default location"
    if os.path.isfile(expected):
        return expected
    if not download:
        raise MissingWeightsError(missing_message(mode, expected, source))
    import shutil
    import urllib.request

    os.makedirs(os.path.dirname(os.path.abspath(expected)), exist_ok=True)
    print(f"downloading {url} -> {expected}")
    with urllib.request.urlopen(url) as response, open(expected + ".part", "wb") as fh:
        shutil.copyfileobj(response, fh)
    os.replace(expected + ".part", expected)
    return expected


@contextlib.contextmanager
def _named_dir(file: str, fname: str):
    """A directory holding ``file`` under the name ``fname`` (a symlink when the names differ)."""
    file = os.path.abspath(file)
    if os.path.basename(file) == fname:
        yield os.path.dirname(file)
        return
    with tempfile.TemporaryDirectory(prefix="fdistill_inception_") as tmp:
        os.symlink(file, os.path.join(tmp, fname))
        yield tmp


def inception_extractor(mode: str = "clean", device="cpu", path: str | None = None, download: bool = False):
    """clean-fid's Inception feature function for ``mode`` built from a local file: images in [0, 255],
    ``(B, 3, H, W)`` (299 x 299 unless ``legacy_tensorflow``) -> ``(B, 2048)``."""
    file = find_inception(mode, path, download)
    device = torch.device(device)
    if mode == "legacy_pytorch":
        from cleanfid.inception_pytorch import InceptionV3

        # clean-fid loads this state dict through torch.hub (<hub dir>/checkpoints/<file>): stage ours there.
        old = torch.hub.get_dir()
        with tempfile.TemporaryDirectory(prefix="fdistill_hub_") as hub:
            os.makedirs(os.path.join(hub, "checkpoints"))
            os.symlink(os.path.abspath(file), os.path.join(hub, "checkpoints", PYTORCH_FILE))
            torch.hub.set_dir(hub)
            try:
                net = InceptionV3(output_blocks=[3], resize_input=False)
            finally:
                torch.hub.set_dir(old)
        net = net.to(device).eval()

        def features(x):
            return net(x / 255)[0].squeeze(-1).squeeze(-1)

        return features
    from cleanfid.inception_torchscript import InceptionV3W

    with _named_dir(file, INCEPTION_FILE) as folder:
        net = InceptionV3W(folder, download=False, resize_inside=(mode == "legacy_tensorflow"))
    net = net.to(device).eval()

    def features(x):
        return net(x)

    return features
