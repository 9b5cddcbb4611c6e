"""FID / FD-digits, precision and recall of folders and one-step generators (MATH §7), on clean-fid's pipeline.

    python -m eval.fid score --folder A --ref-folder B                      # folder vs folder
    python -m eval.fid score --gen runs/x --ref-stats cifar10:train:32 --seeds 0 1 2 --out results.jsonl
    python -m eval.fid score --teacher runs/t/teacher --ref-folder B --features digits  # teacher, Heun 35 NFE
    python -m eval.fid make-stats --name digits16 --folder data/digits_png --features digits
    accelerate launch -m eval.fid score --gen runs/x --ref-stats cifar10:train:32   # every rank generates

Images are read and resized by clean-fid (``get_folder_features``: PIL bicubic to 299 in ``clean`` mode), features
come from a local Inception file (``eval.inception``; never downloaded silently, never replaced by another network
for a number called FID) or from the digits classifier ("FD-digits"). Generated images are written as PNGs first
(EDM's protocol), each process its share, and the main process scores them once.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

from samplers import SAMPLERS

from .features import FEATURES, FeatureExtractor, build_features, check_features
from .inception import MODES
from .precision_recall import precision_recall, subsample
from .results import append_results, result_record
from .stats import Reference, feature_stats, load_stats, save_custom_stats


def _psd_eigenvalues(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with round-off (below ``d * eps * max``) set to 0: a zero eigenvalue computed as
    1e-16 would otherwise add its square root, 1e-8, to the trace."""
    return np.where(w > len(w) * np.finfo(np.float64).eps * max(w.max(initial=0.0), 0.0), w, 0.0)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """MATH §7: ``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^½ S2 S1^½)^½)`` in float64.

    ``tr((S1 S2)^½)`` is computed as ``tr((S1^½ S2 S1^½)^½)`` with symmetric eigen-solvers (same value, no complex
    round-off, no regularisation needed for singular covariances; eigenvalues at round-off level count as 0)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(_psd_eigenvalues(w))) @ v.T
    m = root1 @ s2 @ root1
    tr_sqrt = np.sqrt(_psd_eigenvalues(np.linalg.eigvalsh((m + m.T) / 2))).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def folder_features(folder: str, extractor: FeatureExtractor, batch_size: int = 64, num_workers: int = 0,
                    device="cpu", num: int | None = None, verbose: bool = True) -> np.ndarray:
    """Features of the images in ``folder`` through clean-fid's own reader and resizer."""
    from cleanfid.fid import get_folder_features

    if not os.path.isdir(folder) and not folder.endswith(".zip"):
        raise FileNotFoundError(f"image folder {folder!r} does not exist")
    feats = get_folder_features(str(folder), extractor.fn, num_workers=num_workers, num=num, batch_size=batch_size,
                                device=torch.device(device), mode=extractor.mode,
                                custom_fn_resize=extractor.fn_resize,
                                description=f"{extractor.metric} {os.path.basename(str(folder).rstrip('/'))}: ",
                                verbose=verbose)
    if len(feats) < 2:
        raise ValueError(f"{folder!r} holds {len(feats)} images; need at least 2")
    return feats


def reference_from_folder(folder: str, extractor: FeatureExtractor, **kw) -> Reference:
    feats = folder_features(folder, extractor, **kw)
    mu, sigma = feature_stats(feats)
    return Reference(mu, sigma, feats, folder)


def reference_from_stats(spec: str, extractor: FeatureExtractor, stats_dir: str | None = None,
                         download: bool = False) -> Reference:
    """``NAME`` (custom statistics) or ``NAME:SPLIT:RES`` (clean-fid's, e.g. ``cifar10:train:32``)."""
    parts = spec.split(":")
    if len(parts) not in (1, 3):
        raise ValueError(f"--ref-stats takes NAME or NAME:SPLIT:RES (e.g. cifar10:train:32), got {spec!r}")
    name, split, res = parts if len(parts) == 3 else (spec, "custom", "na")
    check = {"classifier": extractor.meta["classifier"]} if "classifier" in extractor.meta else None
    return load_stats(name, extractor.mode, split, res, extractor.stats_tag, stats_dir, download, check)


def score_features(feats: np.ndarray, ref: Reference, extractor: FeatureExtractor, with_pr: bool = False,
                   pr_num: int | None = 10_000, k: int = 3, device="cpu", seed: int = 0) -> dict:
    """``{metric: FD}`` and, when asked and the reference has features, ``precision`` / ``recall``."""
    mu, sigma = feature_stats(feats)
    out = {extractor.metric: frechet_distance(mu, sigma, ref.mu, ref.sigma)}
    if with_pr:
        if ref.feats is None:
            print(f"precision/recall skipped: reference {ref.description} stores no features", file=sys.stderr)
        else:
            out.update(precision_recall(subsample(ref.feats, pr_num, seed), subsample(feats, pr_num, seed + 1),
                                        k=k, device=device))
    return out


def fid_folders(folder1: str, folder2: str, features: str = "inception", mode: str = "clean", device="cpu",
                batch_size: int = 64, num_workers: int = 0, inception: str | None = None,
                digits_classifier: str | None = None, verbose: bool = False) -> float:
    """FID (Inception) or FD-digits between two image folders."""
    fx = build_features(features, mode, device, inception, digits_classifier)
    kw = dict(batch_size=batch_size, num_workers=num_workers, device=device, verbose=verbose)
    a, b = reference_from_folder(folder1, fx, **kw), reference_from_folder(folder2, fx, **kw)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


class _LocalState:
    """What we use of accelerate's ``PartialState`` for a single process."""

    process_index, num_processes, is_main_process = 0, 1, True

    def __init__(self, device=None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def wait_for_everyone(self):
        pass


def process_state(device=None):
    """accelerate's ``PartialState`` under ``accelerate launch`` / torchrun, else a single local process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        # CPU-only processes need accelerate's gloo backend, which it only picks when asked for the CPU
        cpu = str(device) == "cpu" or not torch.cuda.is_available()
        state = PartialState(cpu=cpu)
        if device is not None and not cpu:
            print("--device is ignored under a multi-process launch (each rank uses its own device)",
                  file=sys.stderr)
        return state
    return _LocalState(device)


def _shared_tmpdir(state) -> str:
    """A temporary folder created by the main process, its path broadcast to all (same machine)."""
    path = [tempfile.mkdtemp(prefix="fdistill_eval_") if state.is_main_process else None]
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(path, from_process=0)
    return path[0]


def _count_images(folder: str) -> int:
    return len(glob.glob(os.path.join(folder, "*.png")))


def evaluate_generator(gen, extractor: FeatureExtractor | None, reference: Reference | None,
                       num_samples: int = 50_000, seeds=(0,), batch_size: int = 100, num_classes: int | None = None,
                       prompts: list[str] | None = None, save_dir: str | None = None, overwrite: bool = False,
                       with_pr: bool = False, pr_num: int | None = 10_000, k: int = 3,
                       feature_batch_size: int = 64, num_workers: int = 0, state=None, checkpoint: str | None = None,
                       progress: bool = True, **extra) -> list[dict]:
    """Generate ``num_samples`` images per seed (this process's share), then score them on the main process.

    Returns the result rows (main process; ``[]`` elsewhere): per seed the FD and optional precision/recall, and
    with several seeds ``{metric}_min`` / ``{metric}_mean`` (EDM reports the min of 3 x 50k, SiD the mean of 10).
    ``extractor`` and ``reference`` are only needed on the main process."""
    state = state or _LocalState()
    base = save_dir or _shared_tmpdir(state)
    folders = {s: os.path.join(base, f"seed{s}") for s in seeds}
    stale = [f for f in folders.values() if _count_images(f)]
    if save_dir and stale and not overwrite:  # every process sees the same files: all stop together
        raise FileExistsError(f"{stale} already hold PNGs; pass --overwrite or another --save-dir")
    rows, values = [], []
    device = state.device
    try:
        for seed in seeds:
            folder = folders[seed]
            if state.is_main_process:
                if os.path.isdir(folder):
                    for f in glob.glob(os.path.join(folder, "*.png")):
                        os.remove(f)
                os.makedirs(folder, exist_ok=True)
            state.wait_for_everyone()
            generate_kw = dict(num_classes=num_classes, prompts=prompts, rank=state.process_index,
                               world_size=state.num_processes, progress=progress)
            from .generate import generate_to_folder

            generate_to_folder(gen, folder, num_samples, seed, batch_size, **generate_kw)
            state.wait_for_everyone()
            if not state.is_main_process:
                continue
            found = _count_images(folder)
            if found != num_samples:
                raise RuntimeError(f"{folder} holds {found} images, expected {num_samples}")
            feats = folder_features(folder, extractor, feature_batch_size, num_workers, device, verbose=progress)
            scores = score_features(feats, reference, extractor, with_pr, pr_num, k, device, seed)
            values.append(scores[extractor.metric])
            for metric, value in scores.items():
                rows.append(result_record(metric, value, n=num_samples, mode=extractor.mode, features=extractor.name,
                                          seed=seed, checkpoint=checkpoint, reference=reference.description,
                                          k=k if metric in ("precision", "recall") else None, **extra))
                print(f"{metric} = {value:.4f}  (seed {seed}, n = {num_samples}, {extractor.name}, {extractor.mode})")
            if not save_dir:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        if not save_dir and state.is_main_process:
            shutil.rmtree(base, ignore_errors=True)
    if state.is_main_process and len(seeds) > 1:
        for name, value in (("min", min(values)), ("mean", float(np.mean(values)))):
            rows.append(result_record(f"{extractor.metric}_{name}", value, n=num_samples, mode=extractor.mode,
                                      features=extractor.name, seed=list(seeds), checkpoint=checkpoint,
                                      reference=reference.description, values=values,
                                      std=float(np.std(values)), **extra))
        print(f"{extractor.metric} over {len(seeds)} repeats: min {min(values):.4f}, mean {np.mean(values):.4f} "
              f"(+- {np.std(values):.4f})")
    return rows


def make_stats(name: str, folder: str, extractor: FeatureExtractor, num: int | None = None,
               stats_dir: str | None = None, overwrite: bool = False, batch_size: int = 64, num_workers: int = 0,
               device="cpu", verbose: bool = True) -> str:
    """Custom reference statistics of ``folder`` (clean-fid file layout); returns the path written."""
    feats = folder_features(folder, extractor, batch_size, num_workers, device, num=num, verbose=verbose)
    meta = dict(features=extractor.name, folder=os.path.abspath(folder), n=len(feats), **extractor.meta)
    return save_custom_stats(name, feats, extractor.mode, extractor.stats_tag, meta, stats_dir, overwrite)


# ---------------------------------------------------------------------------------------------------- CLI
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", choices=FEATURES, default="inception",
                   help="inception (reported as FID) or digits (reported as FD-digits)")
    p.add_argument("--mode", choices=MODES, default="clean", help="clean-fid mode (Inception only)")
    p.add_argument("--inception", help="local Inception weights file or folder (else $FDISTILL_INCEPTION, "
                                       "$FDISTILL_INCEPTION_PYTORCH for legacy_pytorch, clean-fid's cache)")
    p.add_argument("--digits-classifier", help="digits classifier folder (python -m eval.digits_classifier)")
    p.add_argument("--download", action="store_true", help="allow downloading missing weights / statistics")
    p.add_argument("--stats-dir", help="statistics folder (default: $FDISTILL_STATS_DIR or clean-fid's)")
    p.add_argument("--device", help="default: cuda if available, else cpu (each rank's own under accelerate)")
    p.add_argument("--feature-batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=4, help="image-loading workers")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.fid", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("score", help="FID/FD (+ precision/recall) of a folder or a generator")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--folder", help="folder (or .zip) of images to score")
    src.add_argument("--gen", help="generator: fdistill.load_generator dir / pipeline dir / run out_dir")
    src.add_argument("--teacher", help="a saved teacher Denoiser dir (e.g. runs/x/teacher), sampled with --sampler "
                                       "and --num-steps")
    ref = s.add_mutually_exclusive_group(required=True)
    ref.add_argument("--ref-folder", help="reference image folder")
    ref.add_argument("--ref-stats", help="NAME (custom statistics, make-stats) or NAME:SPLIT:RES "
                                         "(clean-fid's, e.g. cifar10:train:32 or cifar10:test:32)")
    s.add_argument("--num-samples", type=int, default=50_000, help="images per repeat (generators)")
    s.add_argument("--seeds", type=int, nargs="+", help="one repeat per seed (default: 0 .. repeats-1)")
    s.add_argument("--repeats", type=int, default=1)
    s.add_argument("--num-classes", type=int, help="class-conditional: balanced labels i mod num_classes")
    s.add_argument("--prompts", help="text file, one prompt per line (cycled over the images)")
    s.add_argument("--batch-size", type=int, default=100, help="generation batch per process")
    s.add_argument("--sampler", choices=sorted(SAMPLERS), default="heun", help="--teacher: multi-step sampler")
    s.add_argument("--num-steps", type=int, default=18,
                   help="--teacher: Karras noise levels (heun: 18 -> 35 network evaluations)")
    s.add_argument("--save-dir", help="keep generated PNGs here (SAVE_DIR/seed{S}); default: a temporary folder")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--precision-recall", action="store_true", help="also improved precision/recall (k-NN)")
    s.add_argument("--k", type=int, default=3)
    s.add_argument("--pr-num", type=int, default=10_000, help="samples per side for precision/recall (0: all)")
    s.add_argument("--out", help="append one JSON line per result to this file (e.g. results.jsonl)")
    s.add_argument("--images-seen", type=int, help="training images seen by this checkpoint (for plots)")
    s.add_argument("--label", help="free-form label stored with the results")
    _common(s)
    m = sub.add_parser("make-stats", help="custom reference statistics from a folder")
    m.add_argument("--name", required=True)
    m.add_argument("--folder", required=True)
    m.add_argument("--num", type=int, help="use at most this many images")
    m.add_argument("--overwrite", action="store_true")
    _common(m)
    return p


def _read_prompts(path: str) -> list[str]:
    with open(path) as fh:
        prompts = [line.strip() for line in fh if line.strip()]
    if not prompts:
        raise ValueError(f"no prompts in {path!r}")
    return prompts


def _load_generator(path: str, device):
    import fdistill

    gen = fdistill.load_generator(path, device=device)
    if not hasattr(gen, "sample"):
        raise TypeError(f"{path!r} loaded as {type(gen).__name__}, which has no .sample(n, seed, cond)")
    return gen


def _load_teacher(path: str, sampler: str, num_steps: int, num_classes: int | None, device):
    """A saved teacher Denoiser sampled with ``sampler`` as a generator (``samplers.MultiStepGenerator``)."""
    from fdistill.saved_models import load_denoiser
    from samplers import MultiStepGenerator

    return MultiStepGenerator(load_denoiser(path), sampler, num_steps, num_classes=num_classes or None).to(device)


def main(argv=None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("score", "make-stats", "-h", "--help"):
        argv = ["score"] + argv
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return []
    if args.features == "digits" and args.mode != "clean":
        print("--mode applies to Inception only; digits features use clean (PIL bicubic) resizing",
              file=sys.stderr)
        args.mode = "clean"
    state = process_state(args.device)
    weights = dict(inception=args.inception, digits_classifier=args.digits_classifier, download=args.download)
    check_features(args.features, args.mode, **weights)  # every rank: fail together, before any generation
    load_kw = dict(batch_size=args.feature_batch_size, num_workers=args.num_workers, device=state.device)

    if args.command == "make-stats":
        if not state.is_main_process:
            return []
        fx = build_features(args.features, args.mode, state.device, **weights)
        path = make_stats(args.name, args.folder, fx, args.num, args.stats_dir, args.overwrite, **load_kw)
        print(f"saved {fx.metric} statistics '{args.name}' to {path}")
        return []

    fx = build_features(args.features, args.mode, state.device, **weights) if state.is_main_process else None
    pr_num = args.pr_num or None
    extra = dict(images_seen=args.images_seen, label=args.label)
    ref = None
    if args.ref_stats:  # cheap existence check on every rank, features on the main process only
        ref = reference_from_stats(args.ref_stats, fx or _stats_probe(args), args.stats_dir, args.download)
    elif state.is_main_process:
        ref = reference_from_folder(args.ref_folder, fx, **load_kw)
    if args.folder:
        rows = []
        if state.is_main_process:
            feats = folder_features(args.folder, fx, **load_kw)
            scores = score_features(feats, ref, fx, args.precision_recall, pr_num, args.k, state.device)
            for metric, value in scores.items():
                print(f"{metric} = {value:.4f}  ({args.folder} vs {ref.description}, n = {len(feats)})")
                rows.append(result_record(metric, value, n=len(feats), mode=fx.mode, features=fx.name,
                                          checkpoint=os.path.abspath(args.folder), reference=ref.description,
                                          k=args.k if metric in ("precision", "recall") else None, **extra))
    else:
        seeds = args.seeds if args.seeds else list(range(args.repeats))
        prompts = _read_prompts(args.prompts) if args.prompts else None
        if args.teacher:
            gen = _load_teacher(args.teacher, args.sampler, args.num_steps, args.num_classes, state.device)
            extra.update(sampler=args.sampler, num_steps=args.num_steps)
        else:
            gen = _load_generator(args.gen, state.device)
        rows = evaluate_generator(gen, fx, ref, args.num_samples, seeds, args.batch_size, args.num_classes, prompts,
                                  args.save_dir, args.overwrite, args.precision_recall, pr_num, args.k,
                                  args.feature_batch_size, args.num_workers, state,
                                  checkpoint=os.path.abspath(args.teacher or args.gen), **extra)
        if args.teacher:
            for row in rows:
                row["nfe"] = gen.nfe  # network evaluations per sample (35 for heun with 18 steps)
    if state.is_main_process:
        append_results(args.out, rows)
    return rows


def _stats_probe(args) -> FeatureExtractor:
    """A weightless stand-in carrying the file-name parts, for non-main ranks' statistics check."""
    name = args.features
    return FeatureExtractor(name, lambda x: x, args.mode, "FID" if name == "inception" else f"FD-{name}")


def cli() -> None:
    """``main`` with missing files reported as one readable message (exit status 2) instead of a traceback."""
    try:
        main()
    except (FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    cli()
