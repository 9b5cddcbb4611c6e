"""Benchmark (not a test): images/s of a one-step generator against the teacher's 35-evaluation Heun sampler on the
same network (the CIFAR-10 EDM DDPM++ SongUNet, random weights).

    python bench/sampling_speed.py                                 # batches 64 256 1024, fp32 and bf16, GPU if any
    python bench/sampling_speed.py --batch 128 512 --dtypes bf16 --compile
    python bench/sampling_speed.py --small                         # tiny SongUNet, CPU smoke check

Per batch size and weight dtype, the median over ``--iters`` calls after ``--warmup`` (CUDA events on GPU) of
- ``one-step (pipeline)``: ``OneStepPipeline.sample(n)`` (what users call: noise drawn on the CPU as diffusers does,
  ``G(z) = D(sigma_init z, sigma_init)``, clamp to [-1, 1]);
- ``one-step (direct)``: ``D(sigma_init z, sigma_init)`` on noise already on the device;
- ``heun``: ``samplers.heun`` over ``karras_sigmas(18)`` (35 network evaluations, counted once per run).
Speed-up = Heun time / one-step time (target >= 30: the network evaluations alone give 35). ``bf16`` casts the
weights (inputs and outputs stay float32, as ``EDMDenoiser`` does). JSON at ``--out`` (default
``bench/results/sampling_speed[_small].json``).
"""
from __future__ import annotations

import argparse
import os

import torch

import common

TARGET_SPEEDUP = 30.0


def make_network(small: bool, dtype: torch.dtype, device: torch.device, compile_mode: str | None, compile_: bool):
    net = common.edm_cifar10(small).to(device).eval().requires_grad_(False)
    if dtype != torch.float32:
        net = net.to(dtype)
    if compile_:
        net.compile(mode=compile_mode)
    return net


def measure(a, dtype_name: str, batches: list[int], on_row=None) -> list[dict]:
    """One row per batch size; ``on_row(row)`` after each (the caller rewrites its JSON: a run cut short keeps
    what it measured)."""
    import samplers
    from fdistill import OneStepPipeline

    dev, dtype = a.device, common.DTYPES[dtype_name]
    net = make_network(a.small, dtype, dev, a.compile_mode, a.compile)
    pipe = OneStepPipeline(generator=net, sigma_init=a.sigma_init)
    sigmas = samplers.karras_sigmas(a.heun_steps, net.sigma_min, net.sigma_max)
    counter = samplers.CountingDenoiser(net)
    shape = tuple(pipe.config.sample_shape)
    with torch.no_grad():
        samplers.heun(counter, torch.randn((1, *shape), device=dev) * float(sigmas[0]), sigmas)
    nfe = counter.calls
    rows = []
    for b in batches:
        g = torch.Generator(device=dev).manual_seed(0)
        z = torch.randn((b, *shape), generator=g, device=dev)
        s_init = torch.full((b,), a.sigma_init, device=dev)
        x_start = z * float(sigmas[0])

        @torch.no_grad()
        def direct():
            return net(a.sigma_init * z, s_init)

        def pipeline():
            return pipe.sample(b, seed=0)

        @torch.no_grad()
        def heun():
            return samplers.heun(net, x_start, sigmas)

        row = {"batch": b, "dtype": dtype_name, "heun_nfe": nfe}
        try:
            for name, fn, iters in (("one_step_direct", direct, a.iters), ("one_step_pipeline", pipeline, a.iters),
                                    ("heun", heun, a.heun_iters)):
                s = common.summary(common.time_calls(fn, dev, a.warmup, iters))
                row[name] = {"median_ms": s["median_ms"], "images_per_s": b / (s["median_ms"] / 1e3),
                             "all_ms": s["all_ms"]}
            row["speedup_direct"] = row["heun"]["median_ms"] / row["one_step_direct"]["median_ms"]
            row["speedup_pipeline"] = row["heun"]["median_ms"] / row["one_step_pipeline"]["median_ms"]
            row["heun_ms_per_evaluation"] = row["heun"]["median_ms"] / nfe
        except Exception as e:
            if not common.is_oom(e) or a.strict:
                raise
            row["error"] = "out of memory"
        finally:
            common.free_memory(dev)
        rows.append(row)
        if on_row is not None:
            on_row(row)
        print(f"  {dtype_name} batch {b}: " + ("out of memory" if "error" in row else
              f"speed-up {row['speedup_direct']:.1f}x (direct), {row['speedup_pipeline']:.1f}x (pipeline)"),
              flush=True)
    if a.compile:
        torch._dynamo.reset()
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="tiny SongUNet at 8x8, batch 4, 2 iterations (CPU smoke)")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default 64 256 1024; 4 --small)")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(common.DTYPES))
    p.add_argument("--iters", type=int, default=None, help="timed one-step calls (default 50; 2 with --small)")
    p.add_argument("--heun-iters", type=int, default=None, help="timed Heun runs (default 10; 2 with --small)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3; 1 with --small)")
    p.add_argument("--heun-steps", type=int, default=18, help="Karras levels (18 -> 35 evaluations)")
    p.add_argument("--sigma-init", type=float, default=80.0, help="one-step input noise level (80 or 2.5)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (both samplers)")
    p.add_argument("--compile-mode", default=None)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--strict", action="store_true", help="fail on out-of-memory instead of recording it")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/sampling_speed[_small].json)")
    a = p.parse_args(argv)
    a.device = common.pick_device(a.device)
    batches = a.batch or ([4] if a.small else [64, 256, 1024])
    a.iters = a.iters or (2 if a.small else 50)
    a.heun_iters = a.heun_iters or (2 if a.small else 10)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.small else 3)
    a.out = a.out or os.path.join(common.RESULTS, f"sampling_speed{'_small' if a.small else ''}.json")

    res = common.environment(a.device, argv)
    res.update(benchmark="sampling_speed", batch=batches, dtype=a.dtypes,
               network="tiny SongUNet 8x8" if a.small else "EDM CIFAR-10 DDPM++ SongUNet 32x32",
               sigma_init=a.sigma_init, heun_steps=a.heun_steps, compile=a.compile, compile_mode=a.compile_mode,
               iters=a.iters, heun_iters=a.heun_iters, warmup=a.warmup, target_speedup=TARGET_SPEEDUP, results=[])
    for dt in a.dtypes:
        print(f"measuring {dt} ...", flush=True)
        measure(a, dt, batches, on_row=lambda row: (res["results"].append(row), common.write_json(a.out, res)))

    print(f"\n{res['network']}, {res['device_name']}, torch {res['torch']}, commit {res['git_commit'][:12]}, "
          f"compile {a.compile}; speed-up target >= {TARGET_SPEEDUP:g}x")
    rows = []
    for r in res["results"]:
        if "error" in r:
            rows.append([r["dtype"], r["batch"], r["error"], None, None, None, None, None])
            continue
        rows.append([r["dtype"], r["batch"], r["one_step_direct"]["images_per_s"],
                     r["one_step_pipeline"]["images_per_s"], r["heun"]["images_per_s"], r["heun_nfe"],
                     r["speedup_direct"], r["speedup_pipeline"]])
    print(common.table(["dtype", "batch", "1-step img/s", "pipeline img/s", "heun img/s", "NFE", "x (direct)",
                        "x (pipeline)"], rows))
    print(f"\nwrote {a.out}")
    return res


if __name__ == "__main__":
    main()
