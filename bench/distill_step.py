"""Benchmark (not a test): one training iteration of ``fdistill.methods.distill.Distiller`` on the CIFAR-10 EDM network,
against the standalone cost of the network passes it is made of.

    python bench/distill_step.py                                   # CIFAR-10 DDPM++ (55.7M), batch 256, GPU if any
    python bench/distill_step.py --objective uni_instruct
    python bench/distill_step.py --toggles compile --max-batch --profile
    python bench/distill_step.py --small                           # tiny SongUNet, CPU smoke check

The teacher is EDM's CIFAR-10 DDPM++ ``SongUNet`` (``docs/teachers.md``) with random weights, saved to a temporary
directory and loaded through ``teacher.kind=edm``; generator and fake score are copies of it (``network.init=teacher``)
and the "real" samples come from a small teacher pool (``data.kind=teacher``). The Distiller is built exactly as
``train.py`` builds it (``load_config`` -> ``RunContext`` -> ``Distiller``); one iteration is the loop's
``fdistill.run.train_step`` (learning rates, ``Distiller.step(i)``, EMA): ``fake_updates`` x (generate without grad,
fake-score DSM update, discriminator update), then the generator update and the EMA. Random weights: timings only.

Measured in one run, for a baseline and for one-at-a-time variants of it (``--toggles``):

- the iteration: median over ``--iters`` steps after ``--warmup`` (CUDA events on GPU), images/s = batch / median,
  peak ``torch.cuda.max_memory_allocated`` over the timed steps;
- each public phase of the method on its own (``Distiller.phases``: ``fake_update``, ``disc_update``,
  ``generator_update``, called as the step calls them), their sum weighted by how often one iteration runs each,
  and the ratio iteration / sum of phases (what the composition and the EMA add);
- each essential network pass on its own, with the modules, dtype and autocast of that Distiller: generator forward
  (no grad) and forward+backward, fake-score DSM forward+backward, discriminator forward+backward, teacher and fake
  forward (f-distill) or forward+backward to their input (Uni-Instruct), the discriminator at the generator step;
  their sum weighted by how often one iteration runs each, and the ratio iteration / sum (target <= 1.10). The
  optimiser steps (clip, finite check, AdamW, EMA) are timed as a separate, non-network row;
- variants (each a freshly built Distiller): ``bf16`` (autocast off = fp32), ``compile`` (``torch.compile`` of
  generator, fake score, teacher and discriminator, in place), ``channels_last``, ``adam`` (the other AdamW
  implementation: foreach on CUDA, where the trainer uses fused; fused on CPU), ``sdpa`` (``sdpa_kernel`` math
  backend), ``attn4d`` (the bench's own contiguous 4-D q/k/v attention; the package uses that layout too since
  06e3018, so this equals the baseline), ``sdpa_backends`` (4-D
  attention with flash / efficient / cudnn, one at a time), ``cudnn_benchmark``, and ``combo`` (compile +
  channels_last). The trainer has no switch for compile, channels_last or the AdamW kind: the script applies them
  to the built Distiller's modules and optimisers, as such a switch would;
- ``--max-batch``: the largest batch that fits (baseline settings, two steps per trial, doubling then bisection);
- ``--profile``: a ``torch.profiler`` Chrome trace of a few baseline steps and the table of the top operators.

Results: a table on stdout and JSON at ``--out`` (default ``bench/results/distill_step[_small].json``), rewritten
after every variant so a run cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
import traceback

import torch

import common

# Objective recipes of MATH §5 / configs/: f-distill JS (cifar10-fdistill-js.yaml) and Uni-Instruct after its
# reverse-KL warm start (cifar10-uni-instruct.yaml: forward KL, GAN weight 0.01).
OBJECTIVES = {"fdistill": dict(divergence="js", gan_weight=1e-3, sigma_init=80.0),
              "uni_instruct": dict(divergence="fkl", gan_weight=0.01, sigma_init=2.5)}

STANDARD_TOGGLES = ["bf16", "compile", "channels_last", "adam", "sdpa", "attn4d", "cudnn_benchmark"]
ALL_TOGGLES = STANDARD_TOGGLES + ["sdpa_backends", "combo"]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One set of execution settings. ``adam``: ``default`` (what the trainer picks: fused on CUDA, foreach on CPU),
    ``fused`` or ``foreach``; ``sdpa``: ``default`` (PyTorch's choice) or one backend; ``attention``: ``edm`` (the
    package's ``self_attention``, 3-D q/k/v) or ``4d`` (the same attention with 4-D q/k/v, see ``attention_4d``)."""
    name: str
    bf16: bool = True
    compile: bool = False
    channels_last: bool = False
    adam: str = "default"
    sdpa: str = "default"
    cudnn_benchmark: bool = False
    attention: str = "edm"

    def settings(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "name"}


def variants_for(toggles: list[str], device: torch.device) -> list[Variant]:
    other_adam = "foreach" if device.type == "cuda" else "fused"
    table = {
        "bf16": [Variant("fp32 (no autocast)", bf16=False)],
        "compile": [Variant("compile", compile=True)],
        "channels_last": [Variant("channels_last", channels_last=True)],
        "adam": [Variant(f"adam={other_adam}", adam=other_adam)],
        "sdpa": [Variant("sdpa=math", sdpa="math")],
        "attn4d": [Variant("attention 4-D", attention="4d")],
        "sdpa_backends": [Variant(f"attention 4-D, sdpa={b}", attention="4d", sdpa=b)
                          for b in ("flash", "efficient", "cudnn")],
        "cudnn_benchmark": [Variant("cudnn.benchmark", cudnn_benchmark=True)],
        "combo": [Variant("compile+channels_last", compile=True, channels_last=True)],
    }
    out = [Variant("baseline")]
    for t in toggles:
        if t not in table:
            raise SystemExit(f"unknown toggle {t!r}; valid: {ALL_TOGGLES}")
        out += table[t]
    return out


# ---------------------------------------------------------------------------------------------- building
def save_teacher(path: str, small: bool, num_classes: int) -> int:
    """A random-weight EDM CIFAR-10 DDPM++ denoiser (or the tiny one) saved where ``teacher.kind=edm`` loads it."""
    net = common.edm_cifar10(small, num_classes)
    net.save_pretrained(path)
    return sum(p.numel() for p in net.parameters())


def config_overrides(a, batch: int, variant: Variant, workdir: str) -> list[str]:
    o = a.objective_settings
    out = [f"out_dir={workdir}/run", "teacher.kind=edm", f"teacher.path={workdir}/teacher",
           f"teacher.num_classes={a.num_classes}", "network.init=teacher", f"network.sigma_init={o['sigma_init']}",
           f"objective.name={a.objective}", f"objective.divergence={o['divergence']}",
           f"objective.gan_weight={o['gan_weight']}", "data.kind=teacher", f"data.pool_size={a.pool_size}",
           f"data.num_steps={a.pool_steps}", f"train.batch_size={batch}", f"train.fake_updates={a.fake_updates}",
           f"train.mixed_precision={'bf16' if variant.bf16 else repr('no')}", "train.steps=1000000",
           "log.trackers=[]", "log.progress=false"]
    return out


def set_adam_impl(opt, impl: str) -> None:
    """Make an AdamW (bare or wrapped by accelerate) step with the ``fused`` or ``foreach`` kernels. Call before its
    first step (its state is created by the first step, in the layout the kind wants)."""
    inner = getattr(opt, "optimizer", opt)
    for group in inner.param_groups:
        group["fused"], group["foreach"] = impl == "fused", impl == "foreach"


def networks(d) -> list:
    """The distinct trainable or frozen networks of a Distiller (the guided teacher wraps ``raw_teacher``)."""
    nets = [d.gen_u, d.fake_u, d.raw_teacher] + ([d.disc] if d.disc is not None else [])
    return list({id(m): m for m in nets}.values())


def apply_variant(d, v: Variant, compile_mode: str | None) -> None:
    """What a trainer switch for these settings would do, applied to a built Distiller."""
    if v.channels_last:
        for m in networks(d):
            m.to(memory_format=torch.channels_last)  # in place: the optimisers keep the same Parameters
    if v.adam != "default":
        for opt in (d.opt_g, d.opt_f, d.opt_d):
            if opt is not None:
                set_adam_impl(opt, v.adam)
    if v.compile:
        for m in networks(d):
            m.compile(mode=compile_mode)  # in place: every reference the Distiller holds gets the compiled call


def build(a, variant: Variant, batch: int, workdir: str):
    """A Distiller exactly as ``train.py`` builds it, then the variant's settings."""
    from accelerate import Accelerator

    from fdistill.config import load_config
    from fdistill.run import RunContext, reset_accelerate_state
    from fdistill.methods.distill import Distiller

    common.free_memory(a.device)
    reset_accelerate_state()
    cfg = load_config(None, config_overrides(a, batch, variant, workdir))
    acc = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=a.device.type == "cpu")
    ctx = RunContext(cfg, acc)
    d = Distiller(cfg, ctx)
    apply_variant(d, variant, a.compile_mode)
    return d


def attention_4d(package_attention):
    """``fdistill.networks.edm_layers.self_attention`` with q/k/v as contiguous ``(B, heads, HW, C/heads)`` tensors,
    written here independently of the package: same channel layout, same result. The package has used this layout
    (which PyTorch's fused SDPA kernels need) since commit 06e3018, so the ``attn4d`` variant now equals the baseline;
    ``sdpa_backends`` uses it to force each fused kernel. ``package_attention``: the original."""
    import torch.nn.functional as F

    def self_attention(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
        if not (qkv.dtype == torch.float32 or qkv.device.type == "cuda"):
            return package_attention(qkv, num_heads)  # half precision on CPU: the package's float32 softmax
        b, c3, h, w = qkv.shape
        c = c3 // 3
        q, k, v = qkv.reshape(b, num_heads, c // num_heads, 3, h * w).unbind(3)  # each (B, heads, C/heads, HW)
        out = F.scaled_dot_product_attention(*(t.transpose(-1, -2).contiguous() for t in (q, k, v)))
        return out.transpose(-1, -2).reshape(b, c, h, w)

    return self_attention


@contextlib.contextmanager
def execution(v: Variant):
    """The variant's global settings for the duration of a measurement."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from fdistill.networks import edm_layers

    saved = torch.backends.cudnn.benchmark, edm_layers.self_attention
    torch.backends.cudnn.benchmark = v.cudnn_benchmark
    if v.attention == "4d":
        edm_layers.self_attention = attention_4d(saved[1])  # UNetBlock looks it up in its module at each call
    backend = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}.get(v.sdpa)
    try:
        with sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext():
            yield
    finally:
        torch.backends.cudnn.benchmark, edm_layers.self_attention = saved


# ---------------------------------------------------------------------------------------------- what is timed
def iteration_fn(d, stats_out: list):
    """One training iteration as the loop runs it (``fdistill.run.train_step``: learning rates, the method's step,
    the EMA update, skip counts), with a running step index."""
    from fdistill.run import train_step

    step = [0]

    def run():
        stats_out.append(train_step(d.ctx, d, step[0]))
        step[0] += 1

    return run


def phase_fns(d) -> dict:
    """``name -> (fn, runs per iteration)``: each public phase of the method (``Distiller.phases``) called on its own
    with a running step index: what one iteration is made of, without copying any of it."""
    obj, k = d.objective_at(0), d.cfg.train.fake_updates
    step = [10**6]  # step indices apart from the timed iterations' (every draw is keyed by its step)
    x_fake, cond, _ = d.fake_update(step[0], 0, obj)  # the batch the discriminator update is timed on

    def counted(fn):
        def run():
            fn(step[0])
            step[0] += 1
        return run

    phases = {"fake_update": (counted(lambda i: d.fake_update(i, 0, obj)), k)}
    if d.disc is not None:
        phases["disc_update"] = (counted(lambda i: d.disc_update(i, 0, x_fake, cond)), k)
    phases["generator_update"] = (counted(lambda i: d.generator_update(i, obj)), 1)
    assert set(phases) <= set(d.phases), (set(phases), d.phases)
    return phases


def pass_fns(d, batch: int) -> dict:
    """``name -> (fn, runs per iteration)``: each essential network pass of ``Distiller.step`` on its own, with the
    Distiller's modules, autocast and grad settings (MATH §2-§4)."""
    from fdistill import objectives, ratio
    from fdistill.methods.distill import frozen

    acc, dev, k = d.ctx.acc, d.device, d.cfg.train.fake_updates
    obj = d.objective_at(0)
    uni = isinstance(obj, objectives.UniInstruct)
    g = torch.Generator(device=dev).manual_seed(1)
    shape = (batch, *d.shape)
    bshape = (-1, *([1] * len(d.shape)))
    cond = d.labels(0, "label/gen")
    z = torch.randn(shape, generator=g, device=dev)
    with torch.no_grad(), acc.autocast():
        x0 = d.generate(d.gen_u, 0, "z/gen", cond, z=z).float()
    s_dsm = d.fake_levels(obj).sample(batch, generator=g, device=dev)
    s_gen = obj.noise_levels.sample(batch, generator=g, device=dev)
    noise = torch.randn(shape, generator=g, device=dev)
    x_gen = x0 + s_gen.reshape(bshape) * noise
    v = torch.randn(shape, generator=g, device=dev)  # a fixed output gradient for backward passes

    def gen_fwd():
        with torch.no_grad(), acc.autocast():
            d.generate(d.gen_u, 0, "z/gen", cond, z=z)

    def gen_fwd_bwd():
        with frozen(d.fake_u, d.disc), acc.autocast():
            out = d.generate(d.gen, 0, "z/gen", cond, z=z)
        acc.backward((out.float() * v).sum())
        d.opt_g.zero_grad(set_to_none=True)

    def fake_fwd_bwd():
        with acc.autocast():
            loss = objectives.fake_score_loss(d.fake, x0, cond, sigma=s_dsm, noise=noise)
        acc.backward(loss)
        d.opt_f.zero_grad(set_to_none=True)

    def disc_fwd_bwd():
        x_real, c_real = d.source.batch(0, batch)
        c_real = d.conditioner.real_condition(c_real, cond)
        with frozen(d.fake_u), acc.autocast():
            l_real = d.disc_ddp(x_real + s_gen.reshape(bshape) * noise, s_gen, c_real)
            l_fake = d.disc_ddp(x_gen, s_gen, cond)
            loss = ratio.discriminator_loss(l_real, l_fake)
        acc.backward(loss)
        d.opt_d.zero_grad(set_to_none=True)

    def net_fwd(net):
        def run():
            with frozen(d.fake_u, d.disc), torch.no_grad(), acc.autocast():
                net(x_gen, s_gen, cond)
        return run

    def net_fwd_bwd_input(net):  # parameters frozen, gradient to the input (Uni-Instruct, MATH U2; the GAN term)
        def run():
            with frozen(d.fake_u, d.disc), acc.autocast():
                x = x_gen.detach().requires_grad_(True)
                out = net(x, s_gen, cond)
            torch.autograd.grad((out.float() * (v[:, 0, 0, 0] if out.ndim == 1 else v)).sum(), x)
        return run

    passes = {"G fwd (no grad)": (gen_fwd, k), "fake fwd+bwd (DSM)": (fake_fwd_bwd, k)}
    if d.disc is not None:
        passes["disc fwd+bwd (real+fake)"] = (disc_fwd_bwd, k)
    passes["G fwd+bwd"] = (gen_fwd_bwd, 1)
    if uni:
        passes["teacher fwd+bwd to x"] = (net_fwd_bwd_input(d.teacher), 1)
        passes["fake fwd+bwd to x"] = (net_fwd_bwd_input(d.fake_u), 1)
    else:
        passes["teacher fwd"] = (net_fwd(d.teacher), 1)
        passes["fake fwd"] = (net_fwd(d.fake_u), 1)
    if obj.needs_ratio:
        if obj.gan_weight > 0:
            passes["disc fwd+bwd to x (GAN term)"] = (net_fwd_bwd_input(d.disc), 1)
        else:
            passes["disc fwd (ratio)"] = (net_fwd(d.disc), 1)
    return passes


def optimizer_fn(d):
    """The non-network work of one iteration: per update clip + finite check + AdamW step, and the EMA update, on
    gradients that are already there (zeros, set here)."""
    acc, k = d.ctx.acc, d.cfg.train.fake_updates
    pairs = [(d.fake, d.opt_f)] + ([(d.disc_ddp, d.opt_d)] if d.disc is not None else [])
    for model, _ in pairs + [(d.gen, d.opt_g)]:
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)

    def update(model, opt):
        norm = acc.clip_grad_norm_(model.parameters(), d.cfg.train.grad_clip)
        if torch.isfinite(norm):
            opt.step()

    def run():
        for _ in range(k):
            for model, opt in pairs:
                update(model, opt)
        update(d.gen, d.opt_g)
        d.ema.update(d.gen_u)

    return run


# ---------------------------------------------------------------------------------------------- one variant
def measure_variant(a, v: Variant, workdir: str) -> dict:
    d = None
    out = {"settings": v.settings()}
    try:
        d = build(a, v, a.batch, workdir)
        with execution(v):
            stats = []
            step = iteration_fn(d, stats)
            for _ in range(a.warmup):
                step()
            common.sync(a.device)
            common.reset_peak_memory(a.device)
            out["resident_gib"] = common.allocated_gib(a.device)
            it = common.summary(common.time_calls(step, a.device, 0, a.iters))
            out["peak_memory_gib"] = common.peak_memory_gib(a.device)
            out["iteration"] = it
            out["images_per_s"] = a.batch / (it["median_ms"] / 1e3)
            out["skipped_updates"] = {key: sum(float(s[key]) for s in stats) for key in stats[0]
                                      if key.startswith("skipped_")}
            if not a.no_passes:
                phases = {}
                for name, (fn, count) in phase_fns(d).items():
                    s = common.summary(common.time_calls(fn, a.device, a.warmup, a.iters))
                    phases[name] = {"count": count, "median_ms": s["median_ms"], "all_ms": s["all_ms"]}
                phase_sum = sum(p["count"] * p["median_ms"] for p in phases.values())
                out.update(phases=phases, sum_of_phases_ms=phase_sum,
                           ratio_iteration_to_phases=it["median_ms"] / phase_sum)
                passes = {}
                for name, (fn, count) in pass_fns(d, a.batch).items():
                    s = common.summary(common.time_calls(fn, a.device, a.warmup, a.iters))
                    passes[name] = {"count": count, "median_ms": s["median_ms"], "all_ms": s["all_ms"]}
                net_sum = sum(p["count"] * p["median_ms"] for p in passes.values())
                opt = common.summary(common.time_calls(optimizer_fn(d), a.device, 1, a.iters))
                out.update(passes=passes, sum_of_passes_ms=net_sum,
                           ratio_iteration_to_passes=it["median_ms"] / net_sum,
                           optimizer_and_ema_ms=opt["median_ms"],
                           ratio_iteration_to_passes_and_optimizer=it["median_ms"] / (net_sum + opt["median_ms"]))
    except Exception as e:  # one failing variant (OOM, a missing SDPA kernel, compile) must not lose the others
        if a.strict:
            raise
        out["error"] = "out of memory" if common.is_oom(e) else f"{type(e).__name__}: {e}"
        out["traceback"] = traceback.format_exc(limit=6)
        print(f"  {v.name}: {out['error'].splitlines()[0][:200]}", file=sys.stderr)
    finally:
        common.release(d, v.compile)
        d = None
        common.free_memory(a.device)
    return out


def max_batch(a, workdir: str) -> dict:
    """Largest batch whose (baseline) iteration fits in GPU memory: two steps per trial."""
    from fdistill.run import train_step

    base = Variant("baseline")

    def fits(b):
        d, ok = None, True
        try:
            d = build(a, base, b, workdir)
            common.reset_peak_memory(a.device)
            for i in range(2):
                train_step(d.ctx, d, i)
            common.sync(a.device)
            peaks[b] = common.peak_memory_gib(a.device)
        except Exception as e:
            if not common.is_oom(e):
                raise
            ok = False
        finally:
            common.release(d)
            d = None
            common.free_memory(a.device)
        return ok

    peaks = {}
    res = common.largest_fitting(fits, a.search_start, a.search_limit, a.search_granularity)
    res["peak_memory_gib"] = {str(b): p for b, p in peaks.items()}
    return res


def write_trace(prof, path: str) -> None:
    """The Chrome trace at ``path``, gzipped when it ends in ``.gz`` (done here: not every torch release does it)."""
    import gzip
    import shutil

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    plain = path[:-3] if path.endswith(".gz") else path
    prof.export_chrome_trace(plain)
    if hasattr(prof, "wait_for_exports"):
        prof.wait_for_exports()
    if plain != path:
        with open(plain, "rb") as fin, gzip.open(path, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        os.remove(plain)


def profile(a, workdir: str) -> dict:
    """A ``torch.profiler`` trace of ``--profile-steps`` baseline steps (after 2 unrecorded) and the top operators."""
    from fdistill.run import train_step

    from torch.profiler import ProfilerActivity, record_function, schedule

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if a.device.type == "cuda" else [])
    d = build(a, Variant("baseline"), a.batch, workdir)
    try:
        with torch.profiler.profile(activities=acts,
                                    schedule=schedule(wait=1, warmup=1, active=a.profile_steps)) as prof:
            for i in range(2 + a.profile_steps):
                with record_function("train_step"):
                    train_step(d.ctx, d, i)
                prof.step()
        common.sync(a.device)
    finally:
        common.release(d)
        d = None
        common.free_memory(a.device)
    write_trace(prof, a.trace)
    key = "self_device_time_total" if a.device.type == "cuda" else "self_cpu_time_total"
    try:
        top = prof.key_averages().table(sort_by=key, row_limit=a.profile_rows)
    except (AttributeError, KeyError, ValueError):  # older name of the device column
        key = "self_cuda_time_total" if a.device.type == "cuda" else "self_cpu_time_total"
        top = prof.key_averages().table(sort_by=key, row_limit=a.profile_rows)
    return {"trace": a.trace, "steps": a.profile_steps, "sorted_by": key, "top_ops": top}


# ---------------------------------------------------------------------------------------------- report
def print_report(res: dict) -> None:
    s = res["settings"]
    print(f"\n{s['network']} ({s['params'] / 1e6:.2f}M params), {s['objective']} ({s['divergence']}, "
          f"gan {s['gan_weight']}), batch {res['batch']}, fake_updates {s['fake_updates']}, "
          f"{res['device_name']}, torch {res['torch']}, commit {res['git_commit'][:12]}")
    rows, base = [], res["variants"].get("baseline", {}).get("iteration", {}).get("median_ms")
    for name, r in res["variants"].items():
        if "error" in r:
            rows.append([name, r["error"].splitlines()[0][:40], None, None, None, None, None])
            continue
        ms = r["iteration"]["median_ms"]
        rows.append([name, ms, r["images_per_s"], base / ms if base else None, r.get("sum_of_passes_ms"),
                     r.get("ratio_iteration_to_passes"), r.get("peak_memory_gib")])
    print(common.table(["variant", "iter ms", "img/s", "x base", "passes ms", "iter/passes", "peak GiB"], rows))
    b = res["variants"].get("baseline", {})
    if "passes" in b:
        print(f"\nbaseline: standalone passes (target iter/passes <= {res['target_ratio']})")
        prow = [[n, p["count"], p["median_ms"], p["count"] * p["median_ms"]] for n, p in b["passes"].items()]
        prow.append(["sum of network passes", None, None, b["sum_of_passes_ms"]])
        prow.append(["optimisers + EMA (not a pass)", None, None, b["optimizer_and_ema_ms"]])
        prow.append(["iteration", None, None, b["iteration"]["median_ms"]])
        print(common.table(["pass", "count", "ms each", "ms / iter"], prow))
        print(f"iteration / sum of passes = {b['ratio_iteration_to_passes']:.3f}; "
              f"/ (passes + optimisers) = {b['ratio_iteration_to_passes_and_optimizer']:.3f}")
    if "max_batch" in res:
        m = res["max_batch"]
        print(f"\nlargest batch that fits: {m.get('largest')} (first failing {m.get('first_failing')}; "
              f"trials {m.get('trials')})" if "trials" in m else f"\nmax batch: {m}")
    if "profile" in res:
        print(f"\nprofile ({res['profile']['steps']} steps) -> {res['profile']['trace']}\n{res['profile']['top_ops']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="tiny SongUNet at 8x8, batch 4, 2 iterations (CPU smoke)")
    p.add_argument("--objective", default="fdistill", choices=sorted(OBJECTIVES))
    p.add_argument("--divergence", default=None, help="default: js (fdistill), fkl (uni_instruct)")
    p.add_argument("--gan-weight", type=float, default=None, help="default: 1e-3 (fdistill), 0.01 (uni_instruct)")
    p.add_argument("--fake-updates", type=int, default=1, help="fake-score/discriminator updates per iteration")
    p.add_argument("--cond", action="store_true", help="class-conditional network (10 classes)")
    p.add_argument("--batch", type=int, default=None, help="global batch (default 256; 4 with --small)")
    p.add_argument("--iters", type=int, default=None, help="timed calls (default 10; 2 with --small)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3; 1 with --small)")
    p.add_argument("--toggles", default=None,
                   help=f"comma list of variants beside the baseline, 'none' or 'all'; valid: {ALL_TOGGLES}; "
                        f"default: {','.join(STANDARD_TOGGLES)} (without compile under --small)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: PyTorch's default)")
    p.add_argument("--no-passes", action="store_true", help="time iterations only")
    p.add_argument("--max-batch", action="store_true", help="search the largest batch that fits (CUDA only)")
    p.add_argument("--search-start", type=int, default=64)
    p.add_argument("--search-limit", type=int, default=8192)
    p.add_argument("--search-granularity", type=int, default=32)
    p.add_argument("--profile", action="store_true", help="torch.profiler trace of baseline steps + top-ops table")
    p.add_argument("--profile-steps", type=int, default=2)
    p.add_argument("--profile-rows", type=int, default=30)
    p.add_argument("--trace", default=None, help="Chrome trace path (default: next to --out, .json.gz)")
    p.add_argument("--pool-size", type=int, default=None, help="teacher pool size (default 512; 8 with --small)")
    p.add_argument("--pool-steps", type=int, default=None, help="Heun steps of the pool (default 18; 2 with --small)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--strict", action="store_true", help="stop at the first failing variant (tests)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/distill_step[_small].json)")
    a = p.parse_args(argv)

    a.device = common.pick_device(a.device)
    a.batch = a.batch or (4 if a.small else 256)
    a.iters = a.iters or (2 if a.small else 10)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.small else 3)
    a.pool_size = a.pool_size or (8 if a.small else 512)
    a.pool_steps = a.pool_steps or (2 if a.small else 18)
    a.num_classes = 10 if a.cond else 0
    a.objective_settings = dict(OBJECTIVES[a.objective])
    if a.divergence:
        a.objective_settings["divergence"] = a.divergence
    if a.gan_weight is not None:
        a.objective_settings["gan_weight"] = a.gan_weight
    suffix = f"_{a.objective}" if a.objective != "fdistill" else ""
    a.out = a.out or os.path.join(common.RESULTS, f"distill_step{suffix}{'_small' if a.small else ''}.json")
    a.trace = a.trace or os.path.splitext(a.out)[0] + "_trace.json.gz"
    if a.toggles is None:
        toggles = [t for t in STANDARD_TOGGLES if not (a.small and t == "compile")]
    elif a.toggles in ("none", ""):
        toggles = []
    elif a.toggles == "all":
        toggles = list(ALL_TOGGLES)
    else:
        toggles = [t.strip() for t in a.toggles.split(",") if t.strip()]

    res = common.environment(a.device, argv)
    res.update(benchmark="distill_step", batch=a.batch, dtype="bf16 autocast (baseline)",
               target_ratio=1.10, variants={})
    with tempfile.TemporaryDirectory(prefix="fdistill-bench-") as workdir:
        params = save_teacher(os.path.join(workdir, "teacher"), a.small, a.num_classes)
        res["settings"] = dict(network="tiny SongUNet 8x8" if a.small else "EDM CIFAR-10 DDPM++ SongUNet 32x32",
                               params=params, objective=a.objective, **a.objective_settings,
                               fake_updates=a.fake_updates, num_classes=a.num_classes, iters=a.iters,
                               warmup=a.warmup, pool_size=a.pool_size, pool_steps=a.pool_steps,
                               compile_mode=a.compile_mode)
        for v in variants_for(toggles, a.device):
            print(f"measuring {v.name} ...", flush=True)
            res["variants"][v.name] = measure_variant(a, v, workdir)
            common.write_json(a.out, res)
        if a.max_batch:
            if a.device.type != "cuda":
                res["max_batch"] = {"skipped": "needs CUDA (out-of-memory is what ends the search)"}
            else:
                print("searching the largest batch ...", flush=True)
                res["max_batch"] = max_batch(a, workdir)
            common.write_json(a.out, res)
        if a.profile:
            print("profiling ...", flush=True)
            res["profile"] = profile(a, workdir)
            common.write_json(a.out, res)
    print_report(res)
    print(f"\nwrote {a.out}")
    return res


if __name__ == "__main__":
    main()
