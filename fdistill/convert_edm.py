"""Convert an EDM network snapshot (NVlabs/edm ``.pkl``) into an ``EDMDenoiser`` directory, and load one.

    python -m fdistill.convert_edm SNAPSHOT.pkl OUT_DIR [--edm-path PATH/TO/edm] [--key ema]

Unpickling an EDM snapshot needs EDM's own code (its ``dnnlib`` and ``torch_utils`` packages, which rebuild the
network classes stored inside the pickle): run from a checkout of NVlabs/edm, put it on ``PYTHONPATH``, or pass
``--edm-path``. Unpickling runs code from the file: convert only snapshots you trust.

The result (``config.json`` + ``diffusion_pytorch_model.safetensors``) needs nothing of EDM:
``load_edm(OUT_DIR)`` (= ``EDMDenoiser.from_pretrained``).
"""
from __future__ import annotations

import argparse
import math
import os
import pickle
import sys
from contextlib import contextmanager

import torch

from .networks.edm import ARCHITECTURES, EDMDenoiser

# EDM preconditioning class -> our name, its default network, and its own arguments with their EDM defaults
# (kept in precond_kwargs; EDMPrecond's sigma_min=0 / sigma_max=inf mean "no limit" and are dropped).
PRECOND_CLASSES = {
    "EDMPrecond": ("edm", "DhariwalUNet", {"sigma_min": 0.0, "sigma_max": math.inf}),
    "VPPrecond": ("vp", "SongUNet", {"beta_d": 19.9, "beta_min": 0.1, "M": 1000, "epsilon_t": 1e-5}),
    "VEPrecond": ("ve", "SongUNet", {"sigma_min": 0.02, "sigma_max": 100.0}),
}
_RUNTIME_ONLY = ("use_fp16",)  # EDM execution options, not part of the model
EDM_MODULES = ("dnnlib", "torch_utils", "training")


def _plain(value):
    """JSON-friendly copy of an EDM init argument (EasyDicts, tuples, numpy scalars)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def config_from_edm(precond_class: str, init_kwargs: dict) -> dict:
    """``EDMDenoiser`` config from the class name and init kwargs of an EDM ``*Precond`` network."""
    if precond_class not in PRECOND_CLASSES:
        raise ValueError(f"unsupported EDM network class {precond_class!r}; supported: {sorted(PRECOND_CLASSES)} "
                         "(iDDPMPrecond is not supported)")
    precond, default_arch, precond_args = PRECOND_CLASSES[precond_class]
    kwargs = _plain(dict(init_kwargs))
    arch = kwargs.pop("model_type", default_arch)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unsupported EDM model_type {arch!r}; supported: {sorted(ARCHITECTURES)}")
    try:
        config = dict(arch=arch, precond=precond, img_resolution=int(kwargs.pop("img_resolution")),
                      img_channels=int(kwargs.pop("img_channels")), label_dim=int(kwargs.pop("label_dim", 0)),
                      sigma_data=float(kwargs.pop("sigma_data", 0.5)))
    except KeyError as err:
        raise ValueError(f"EDM init kwargs lack {err.args[0]!r}: {sorted(init_kwargs)}") from None
    extra = {k: kwargs.pop(k, default) for k, default in precond_args.items()}
    if precond == "edm":
        extra = {k: v for k, v in extra.items() if v and not math.isinf(v)}
    config["precond_kwargs"] = extra or None
    for k in _RUNTIME_ONLY:
        kwargs.pop(k, None)
    config["arch_kwargs"] = kwargs  # everything else goes to the network's constructor
    return config


def denoiser_from_edm(net: torch.nn.Module) -> EDMDenoiser:
    """Build an ``EDMDenoiser`` from an unpickled EDM ``*Precond`` module (uses ``init_kwargs`` and the state dict)."""
    if not hasattr(net, "init_kwargs"):
        raise ValueError(f"{type(net).__name__} has no init_kwargs: expected an EDM network from a snapshot pickle "
                         "(EDMPrecond / VPPrecond / VEPrecond)")
    denoiser = EDMDenoiser(**config_from_edm(type(net).__name__, net.init_kwargs))
    state = {k: v.detach().to(torch.float32) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    denoiser.load_state_dict(state, strict=True)
    return denoiser.eval()


@contextmanager
def _on_path(path: str | None):
    if path is None:
        yield
        return
    sys.path.insert(0, os.path.abspath(path))
    try:
        yield
    finally:
        sys.path.remove(os.path.abspath(path))


def load_snapshot(path: str, edm_path: str | None = None, key: str = "ema") -> torch.nn.Module:
    """Unpickle an EDM snapshot and return its network ``data[key]`` (EDM's sampling network is ``'ema'``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no EDM snapshot at {path!r}")
    with _on_path(edm_path), open(path, "rb") as fh:
        try:
            data = pickle.load(fh)
        except ModuleNotFoundError as err:
            if (err.name or "").split(".")[0] in EDM_MODULES:
                raise ImportError(
                    f"unpickling the EDM snapshot {path!r} needs EDM's own code (module {err.name!r} is missing): "
                    "clone https://github.com/NVlabs/edm and put it on PYTHONPATH, or pass --edm-path / edm_path="
                ) from err
            raise
    if isinstance(data, dict):
        if key not in data:
            raise KeyError(f"snapshot {path!r} has no {key!r} entry; it has {sorted(data)}")
        data = data[key]
    return data


def convert_snapshot(path: str, out_dir: str, edm_path: str | None = None, key: str = "ema") -> EDMDenoiser:
    """EDM snapshot ``.pkl`` -> ``EDMDenoiser`` saved in ``out_dir`` (safetensors + config.json). Returns it."""
    denoiser = denoiser_from_edm(load_snapshot(path, edm_path, key))
    denoiser.save_pretrained(out_dir, safe_serialization=True)
    return denoiser


def load_edm(path: str, **kwargs) -> EDMDenoiser:
    """Load a converted EDM teacher (a directory written by ``convert_snapshot``); EDM's code is not needed."""
    if str(path).endswith(".pkl"):
        raise ValueError(f"{path!r} is an EDM pickle: convert it first with "
                         f"`python -m fdistill.convert_edm {path} OUT_DIR`, then load OUT_DIR")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"no converted EDM network at {path!r} (expected config.json and "
                                "diffusion_pytorch_model.safetensors; create it with `python -m fdistill.convert_edm`)")
    return EDMDenoiser.from_pretrained(path, local_files_only=True, **kwargs).eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fdistill.convert_edm", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("snapshot", help="EDM network snapshot (.pkl)")
    parser.add_argument("out_dir", help="directory to write the EDMDenoiser to")
    parser.add_argument("--edm-path", default=None, help="checkout of NVlabs/edm (for dnnlib and torch_utils)")
    parser.add_argument("--key", default="ema", help="entry of the snapshot dict holding the network (default: ema)")
    args = parser.parse_args(argv)
    try:
        denoiser = convert_snapshot(args.snapshot, args.out_dir, args.edm_path, args.key)
    except (ImportError, FileNotFoundError, KeyError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")
    n = sum(p.numel() for p in denoiser.parameters())
    c = denoiser.config
    print(f"wrote {args.out_dir}: {c.arch} ({n / 1e6:.2f}M parameters), precond={c.precond}, "
          f"{c.img_channels}x{c.img_resolution}x{c.img_resolution}, label_dim={c.label_dim}")


if __name__ == "__main__":
    main()
