"""Benchmark (not a test): time per step of SuperDiff OR / AND (MATH S1–S3) with M diffusers UNet2DModels against
plain sampling of the same M models and the probability-flow ODE + Hutchinson log-density baseline.

    python bench/superpose_bench.py                       # CIFAR-10 DDPM-size UNets (35.7M params each), GPU if any
    python bench/superpose_bench.py --small               # tiny UNets, CPU smoke check
    python bench/superpose_bench.py --batch 64 --dtype bf16 --json bench/superpose_bench.json

Random weights: timings only. Reported per SDE/ODE step for all M models together:
- plain: M independent Euler–Maruyama samplers (M evaluations per step),
- superdiff-or / superdiff-and: one SuperDiff path (M evaluations per step + the density estimator and, for AND,
  the per-sample M x M solve),
- hutchinson: the Heun ODE carrying all M log-densities (2 steps' evaluations, each with one Hutchinson
  vector-Jacobian product per model), the cost an ODE-based density would add;
- overhead-*: SuperDiff's own work per step (Euler–Maruyama step, Itô increments, AND solve) with a network-free
  denoiser, i.e. what SuperDiff adds on top of the M network evaluations.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import DDPMScheduler, UNet2DModel

import common

from fdistill.networks import DiffusersDenoiser
from samplers import euler_maruyama_step, karras_sigmas
from superpose import sample
from superpose.hutchinson import denoised_and_divergence

CIFAR10_DDPM = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                    block_out_channels=(128, 256, 256, 256),
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6)
TINY = dict(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, steps: int) -> float:
    """Seconds per step: ``fn(n)`` runs ``n`` steps."""
    _sync(device)
    t = time.perf_counter()
    fn(steps)
    _sync(device)
    return (time.perf_counter() - t) / steps


def time_rows(rows: dict, device, warmup: int, steps: int, rounds: int) -> tuple[dict, dict]:
    """Median seconds per step of every row over ``rounds`` interleaved rounds (each row warmed up first), so that
    clock ramp-up and other drifts hit all rows alike; also returns every round's numbers."""
    for fn in rows.values():
        fn(warmup)
    per_round = {name: [] for name in rows}
    for _ in range(rounds):
        for name, fn in rows.items():
            per_round[name].append(_timed(fn, device, steps))
    return {name: statistics.median(v) for name, v in per_round.items()}, per_round


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="tiny UNets, batch 2, 3 steps (CPU smoke check)")
    p.add_argument("--models", type=int, default=2)
    p.add_argument("--batch", type=int, default=None, help="default 32 (2 with --small)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10, 3 with --small)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps of each method first")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds, median taken (default 5; 1 "
                                                            "with --small)")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default="bench/superpose_bench.json")
    a = p.parse_args(argv)
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    batch = a.batch or (2 if a.small else 32)
    steps = a.steps or (3 if a.small else 10)
    rounds = a.rounds or (1 if a.small else 5)
    cfg = TINY if a.small else CIFAR10_DDPM
    sched = DDPMScheduler()
    torch.manual_seed(0)
    dens = []
    for _ in range(a.models):
        unet = UNet2DModel(**cfg).to(device).eval().requires_grad_(False)
        unet = unet if dtype == torch.float32 else unet.to(dtype)
        dens.append(DiffusersDenoiser(unet, sched.alphas_cumprod).to(device))
    params = sum(q.numel() for q in dens[0].unet.parameters())
    shape = (batch, cfg["in_channels"], cfg["sample_size"], cfg["sample_size"])
    # a long schedule so every timed step is an ordinary step in the middle of sampling
    sig = karras_sigmas(200, dens[0].sigma_min, dens[0].sigma_max, append_zero=False)
    gen = torch.Generator(device).manual_seed(0)
    x0 = torch.randn(shape, generator=gen, device=device) * float(sig[0])

    def plain(n):
        xs = [x0.clone() for _ in dens]
        for s, s_next in zip(sig[:n].tolist(), sig[1:n + 1].tolist()):
            sigma = torch.full((batch,), s, device=device)
            for i, d in enumerate(dens):
                with torch.no_grad():
                    score = (d(xs[i], sigma) - xs[i]) / s**2
                noise = torch.randn(shape, generator=gen, device=device)
                xs[i] = xs[i] + euler_maruyama_step(xs[i], score, s, s_next, noise)

    def superdiff(mode):
        return lambda n: sample(dens, x0.clone(), sig[: n + 1], mode=mode, generator=gen)

    def hutchinson(n):
        x = x0.clone()
        for s, s_next in zip(sig[:n].tolist(), sig[1:n + 1].tolist()):
            h = s_next - s
            sigma = torch.full((batch,), s, device=device)
            v1 = None
            for j, d in enumerate(dens):  # every model's divergence on the ODE of the first
                den, _, _ = denoised_and_divergence(d, x, sigma, generator=gen)
                v1 = (x - den) / s if j == 0 else v1
            x_e = x + h * v1
            sigma_n = torch.full((batch,), s_next, device=device)
            for j, d in enumerate(dens):
                den, _, _ = denoised_and_divergence(d, x_e, sigma_n, generator=gen)
                if j == 0:
                    x = x + 0.5 * h * (v1 + (x_e - den) / s_next)

    def overhead(mode):  # the same step with a network-free denoiser: SuperDiff's own cost (estimator, AND solve)
        free = [lambda x, sigma, cond=None, k=k: x / (1 + k + sigma.reshape(-1, 1, 1, 1) ** 2) for k in range(a.models)]
        return lambda n: sample(free, x0.clone(), sig[: n + 1], mode=mode, generator=gen)

    rows = {"plain": plain, "superdiff-or": superdiff("or"), "superdiff-and": superdiff("and"),
            "hutchinson-heun": hutchinson, "overhead-average": overhead("average"), "overhead-or": overhead("or"),
            "overhead-and": overhead("and")}
    results, per_round = time_rows(rows, device, a.warmup, steps, rounds)
    info = common.environment(device, argv)
    info.update({
        "benchmark": "superpose", "dtype": a.dtype, "batch": batch,
        "models": a.models, "params_per_model": params, "config": "tiny" if a.small else "cifar10-ddpm",
        "timed_steps": steps, "rounds": rounds, "seconds_per_step": results, "seconds_per_step_rounds": per_round,
        "relative_to_plain": {k: v / results["plain"] for k, v in results.items()},
    })
    print(f"{info['config']} UNet ({params / 1e6:.1f}M params) x {a.models}, batch {batch}, {a.dtype}, "
          f"{info['device_name']}, torch {torch.__version__}")
    print(f"{'method':<18}{'ms / step':>12}{'x plain':>10}")
    for k, v in results.items():
        print(f"{k:<18}{1e3 * v:>12.2f}{v / results['plain']:>10.2f}")
    common.write_json_if(a.json, info)
    return info


if __name__ == "__main__":
    main()
