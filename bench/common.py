"""What the benchmark scripts share: timing, the environment record, JSON output, tables, OOM handling.

Timing follows one rule everywhere: untimed warm-up calls first, then every timed call measured on its own, and the
median reported. On CUDA each call sits between two ``torch.cuda.Event`` records (the device's own clock, so launch
gaps and host syncs inside the call count, queued work before it does not); on CPU ``time.perf_counter`` around the
call. Scripts import this module as ``common`` (``python bench/<script>.py`` puts ``bench/`` first on ``sys.path``).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# EDM's CIFAR-10 DDPM++ network (edm-cifar10-32x32-*-vp.pkl, docs/teachers.md): 55.73M parameters.
CIFAR10_DDPMPP = dict(embedding_type="positional", encoder_type="standard", decoder_type="standard",
                      channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2],
                      augment_dim=9, dropout=0.13)
# The same architecture shrunk for CPU smoke runs (8x8 images, 0.19M parameters; attention kept at 4x4).
TINY_SONGUNET = dict(CIFAR10_DDPMPP, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])


def edm_cifar10(small: bool = False, num_classes: int = 0):
    """EDM's CIFAR-10 DDPM++ denoiser (EDM preconditioning) with random weights (seed 0), or its tiny version."""
    from fdistill.networks.edm import EDMDenoiser

    torch.manual_seed(0)
    return EDMDenoiser(arch="SongUNet", arch_kwargs=TINY_SONGUNET if small else CIFAR10_DDPMPP, precond="edm",
                       img_resolution=8 if small else 32, img_channels=3, label_dim=num_classes)


# ---------------------------------------------------------------------------------------------- devices and time
def pick_device(name: str | None) -> torch.device:
    """``name`` as given, else ``cuda`` when there is one, else ``cpu``."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Seconds taken by each of ``iters`` calls of ``fn()``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for start, end in pairs:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) / 1e3 for start, end in pairs]
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def summary(times: list[float]) -> dict:
    """Milliseconds: median (the number to report), min, mean, max, and every call."""
    ms = [1e3 * t for t in times]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "mean_ms": statistics.fmean(ms),
            "max_ms": max(ms), "iters": len(ms), "all_ms": [round(v, 4) for v in ms]}


# ---------------------------------------------------------------------------------------------- memory
def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """``torch.cuda.max_memory_allocated`` since the last reset, GiB (``None`` off CUDA)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def allocated_gib(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def free_memory(device: torch.device) -> None:
    """Collect garbage and return cached blocks, so the next measurement starts from an empty GPU (CUDA only)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def release(d, compiled: bool = False) -> None:
    """Drop accelerate's references to a Distiller's modules and optimisers (and compiled graphs, if any)."""
    if d is not None:
        d.ctx.acc.free_memory()
    if compiled:
        torch._dynamo.reset()


def largest_fitting(fits: Callable[[int], bool], start: int, limit: int, granularity: int) -> dict:
    """The largest batch ``b <= limit`` with ``fits(b)``: double from ``start`` until a batch fails, then bisect on
    multiples of ``granularity``. Assumes that fitting is monotone in the batch. Returns
    ``{"largest": b or None, "first_failing": b or None, "trials": [[batch, fits], ...]}``."""
    trials = []

    def trial(b):
        ok = bool(fits(b))
        trials.append([b, ok])
        return ok

    ok_b, fail_b, b = None, None, start
    while b <= limit:
        if not trial(b):
            fail_b = b
            break
        ok_b, b = b, 2 * b
    if ok_b is not None and fail_b is not None:
        while True:
            mid = (ok_b + fail_b) // 2 // granularity * granularity
            if mid <= ok_b:
                break
            if trial(mid):
                ok_b = mid
            else:
                fail_b = mid
    return {"largest": ok_b, "first_failing": fail_b, "trials": trials, "limit": limit, "granularity": granularity}


# ---------------------------------------------------------------------------------------------- the record
def git_commit() -> str:
    """``$BENCH_GIT_COMMIT`` when set (the device machine's copy of the working tree may carry a stale ``.git``),
    else ``HEAD`` of this checkout (``-dirty`` if tracked files changed)."""
    env = os.environ.get("BENCH_GIT_COMMIT")
    if env:
        return env
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def environment(device: torch.device, argv: list[str] | None = None) -> dict:
    """Where and when a benchmark ran: device, software versions, date, commit, numerics flags, and the command
    (``argv``: the script's arguments, default ``sys.argv[1:]``)."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "command": " ".join([os.path.basename(sys.argv[0]), *(sys.argv[1:] if argv is None else argv)]),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   gpu_memory_gib=round(props.total_memory / 2**30, 2), multiprocessors=props.multi_processor_count,
                   capability=f"{props.major}.{props.minor}",
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    return env


def save_figure(fig, path: str, dpi: int = 90) -> None:
    """Lay out ``fig``, write it to ``path`` (folders made) and close it."""
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def write_json(path: str, obj: dict) -> None:
    """Write ``obj`` to ``path`` (folders made; written to a temporary file first, so a reader never sees half)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".part"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


def earlier_rows(path: str, ran_again: Callable[[dict], bool]) -> tuple[list[dict], dict]:
    """The rows (``runs``) that an earlier call of a sweep wrote to the JSON at ``path``, less those ``ran_again``
    (this call runs them again), and that file's whole content ({} when there is none): a call for more seeds, rates or
    lengths keeps the others' rows."""
    if not os.path.isfile(path):
        return [], {}
    with open(path) as fh:
        earlier = json.load(fh)
    return [r for r in earlier.get("runs", []) if not ran_again(r)], earlier


def write_markdown(path: str, lines: list[str]) -> None:
    """Write a Markdown table (its ``lines``) to ``path`` and print it."""
    text = "\n".join(lines)
    with open(path, "w") as fh:
        fh.write(text + "\n")
    print(text)


def write_json_if(path: str | None, obj: dict) -> None:
    """``write_json`` when a path was given (a script's optional ``--json`` / ``--out``), saying where it wrote."""
    if path:
        write_json(path, obj)
        print(f"wrote {path}")


def table(header: list[str], rows: list[list]) -> str:
    """Plain aligned text table: first column left, the others right; floats with 3 significant-ish digits."""
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    cells = [header] + [[cell(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def recipe_words(extra, warm_start: bool = True, teacher_words=()) -> list[str]:
    """The mixture teacher's defaults of ``fdistill.student.resolve_teacher_defaults`` under ``teacher_words`` and
    ``extra`` (over configs/gmm2d.yaml, whose teacher is ring8), as explicit ``key=value`` words: a run that states
    them is reused only under the same recipe, whatever the defaults were when it ran (the regression term's noise
    level only where the term is on; unless ``warm_start=False`` (the ceiling has none), the warm start's Adam betas,
    whose default changed on 2026-12-05, and its length in steps, ``network.flow_fit_steps``, resolved for the
    teacher: its per-mode default changed the same day; and, for a student run longer than it, the generator's rate
    budget ``train.lr_budget_steps`` (0: the full rate; a mixture teacher's default since 2026-12-06 is 500): a longer
    run made at one rate is not reused for the other)."""
    from fdistill.config import load_config
    from fdistill.methods.distill import flow_fit_betas, flow_fit_steps
    from fdistill.student import resolve_teacher_defaults
    from fdistill.teachers import mixture

    cfg = load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs/gmm2d.yaml"),
                      [*teacher_words, *extra])
    bundle = mixture.bundle(mixture.build_mixture(cfg.teacher))
    resolve_teacher_defaults(cfg, bundle)
    o, budget = cfg.objective, cfg.train.lr_budget_steps
    betas = flow_fit_betas(cfg.network)
    return [f"data.num_steps={cfg.data.num_steps}", f"objective.regression_weight={o.regression_weight}",
            *([f"objective.regression_sigma={o.regression_sigma}"] if o.regression_weight > 0 else []),
            *([f"network.flow_fit_betas=[{betas[0]},{betas[1]}]",
               f"network.flow_fit_steps={flow_fit_steps(cfg.network, bundle)}"] if warm_start else []),
            *([f"train.lr_budget_steps={budget}"]
              if warm_start and cfg.train.steps > (budget or mixture.RECIPE["train.lr_budget_steps"]) else [])]


# what a run made before a key existed did: the value that key's absence from its config.yaml stands for
KEYS_ADDED_LATER = {"objective.regression_weight": 0.0, "objective.regression_sigma": 0.0,
                    "objective.regression_pairs": 0, "network.flow_fit_betas": [0.9, 0.999],
                    "train.lr_budget_steps": 0}
# keys whose null meant something else before: a run that left train.lr_budget_steps null before 2026-12-06 (when null
# became the teacher's default, 500 for a mixture) trained at the full rate, 0 now
NULL_MEANT_BEFORE = {"train.lr_budget_steps": 0}


def parse_with_overrides(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``p.parse_intermixed_args`` with the ``key=value`` words (any word with "=" that is not an option) pulled out
    first and put in ``overrides``, so they may stand anywhere, even right after a list option (``--seeds 0 1``,
    ``--steps 1600 2400``), which would otherwise take them as its values."""
    argv = sys.argv[1:] if argv is None else list(argv)
    words = [w for w in argv if "=" in w and not w.startswith("-")]
    a = p.parse_intermixed_args([w for w in argv if w not in words])
    a.overrides = [*a.overrides, *words]
    return a


def same_overrides(run_dir: str, overrides) -> bool:
    """Whether the resolved ``config.yaml`` of the run in ``run_dir`` has every ``key=value`` of ``overrides`` (a
    finished run is reused only then); a key its config lacks counts as ``KEYS_ADDED_LATER``'s value."""
    from omegaconf import OmegaConf

    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return False
    cfg, want = OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides))
    def stated(k):
        v = OmegaConf.select(cfg, k, default=KEYS_ADDED_LATER.get(k))
        return NULL_MEANT_BEFORE.get(k) if v is None else v

    return all(stated(k) == OmegaConf.select(want, k) for k in (o.split("=", 1)[0] for o in overrides))



def split_common(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """A probe's command line ``[options and runs] [-- words for every run]`` -> ``(options and runs, words)``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])


def parse_labelled(spec: str, form: str) -> tuple[str, list[str]]:
    """``'label=word word ...'`` -> ``(label, [word, ...])``; a clear error naming the accepted ``form`` otherwise."""
    label, sep, rest = spec.partition("=")
    if not sep or not label:
        raise SystemExit(f"a run is '{form}'; got {spec!r}")
    return label, rest.split()
