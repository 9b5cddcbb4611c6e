"""Benchmark (not a test): one training iteration of the Stable Diffusion 1.5 preset (configs/sd15-fdistill-js.yaml)
at 512x512 (64x64 latents) with random-initialised full-size networks, on one GPU.

    python bench/sd15_step.py --max-batch --out bench/results/sd15_step.json     # full size, batch 8, GPU
    python bench/sd15_step.py --variants ckpt,lora --batch 16 --fake-updates 2
    python bench/sd15_step.py --small                                           # tiny components, CPU smoke check

No weights can be downloaded, so the script first writes a Stable Diffusion pipeline directory with random weights,
built from configs only: SD1.5's ``UNet2DConditionModel`` (859.52M parameters), the CLIP ViT-L/14 text model (123.06M),
the SD ``AutoencoderKL`` (83.65M), SD1.5's PNDM scheduler (scaled-linear betas 0.00085..0.012, 1000 steps, epsilon)
and an offline CLIP tokenizer (a letters-only BPE vocabulary, ``model_max_length`` 77). The weights are saved in bf16
(half the bytes to write and read); the teacher loader (diffusers) loads the UNet in fp32 all the same, so generator
and fake score are fp32 as with the real checkpoint. The directory is reused when ``--workdir`` already holds one.

Each variant builds the Distiller as ``train.py`` does (``load_config`` -> ``RunContext`` -> ``Distiller``) from
the preset plus overrides: the random pipeline as teacher, a small prompt file, a teacher pool of ``batch`` latents
drawn with 2 Heun steps (the pool is built once per run and is not part of an iteration), ``train.batch_size``,
``train.fake_updates`` (default 1; the preset uses 10) and bf16. Variants (``--variants``):

- ``ckpt``: full generator with gradient checkpointing (the preset);
- ``no_ckpt``: full generator without gradient checkpointing;
- ``lora``: LoRA generator (``network.lora_rank``, default 64) with gradient checkpointing; the fake score stays a
  full copy;
- ``lora_no_ckpt``: LoRA generator without gradient checkpointing (not in the default list).

Per variant: median ms of ``Distiller.step`` (one iteration = ``fake_updates`` fake-score + discriminator updates,
then one generator update and the EMA; so the time per iteration is the time per generator update), images/s =
batch / median, ``torch.cuda.max_memory_allocated`` over the timed steps and the memory resident before them. The
same Distiller is then timed with one more fake update, which gives the cost of one fake update and the projected
iteration at the preset's 10 (``--no-extrapolate`` skips this). ``--max-batch`` then searches the largest batch that
fits on the same Distiller (its batch is switched in place: weights and optimiser states stay, as in training):
doubling from ``--batch`` up to ``--search-limit`` (64), bisection on multiples of ``--search-granularity`` (4), one
step per trial, within ``--search-budget`` seconds in all. Out-of-memory (or any other failure) is recorded per
variant and the run goes on. Each variant frees the GPU before the next one.

Results: a table on stdout and JSON at ``--out`` (default ``bench/results/sd15_step[_small].json``), rewritten after
every variant. Random weights: timings and memory only.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
import traceback

import torch

import common

PRESET = os.path.join(common.REPO, "configs", "sd15-fdistill-js.yaml")

# SD1.5 (runwayml/stable-diffusion-v1-5) component configs; the parameter counts are those of the released weights.
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu")
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
SD15_PARAMS = {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}
# The tiny versions (tests/test_sd.py's sizes): 8x8 latents, 16x16 images.
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16, attention_head_dim=4,
                 norm_num_groups=8)
TINY_TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 max_position_embeddings=77, projection_dim=16)
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                norm_num_groups=8, sample_size=16, scaling_factor=0.18215)
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 prediction_type="epsilon", skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
MODEL_MAX_LENGTH = 77

PROMPTS = ["a photo of a cat", "a red car on a street", "a bowl of fruit on a table", "a dog running on the beach",
           "an old castle on a hill", "a bird on a branch", "a city at night", "a man riding a horse",
           "a plate of pasta", "a mountain lake at sunrise", "a cup of coffee", "a train in the snow",
           "a painting of a ship at sea", "two children playing football", "a vase of flowers", "a blue door"]

VARIANTS = {"ckpt": dict(gradient_checkpointing=True, lora_rank=0),
            "no_ckpt": dict(gradient_checkpointing=False, lora_rank=0),
            "lora": dict(gradient_checkpointing=True, lora_rank=None),
            "lora_no_ckpt": dict(gradient_checkpointing=False, lora_rank=None)}
DEFAULT_VARIANTS = ["ckpt", "no_ckpt", "lora"]
VARIANT_TITLES = {"ckpt": "full G, grad ckpt (preset)", "no_ckpt": "full G, no grad ckpt",
                  "lora": "LoRA G, grad ckpt", "lora_no_ckpt": "LoRA G, no grad ckpt"}

_T0 = time.monotonic()


def stamp(res: dict | None, msg: str) -> None:
    """Print ``[+seconds] msg`` at once and keep it in ``res['stages']``."""
    t = time.monotonic() - _T0
    print(f"[+{t:7.1f}s] {msg}", flush=True)
    if res is not None:
        res.setdefault("stages", []).append([round(t, 2), msg])


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------- the pipeline dir
def write_tokenizer(path: str, max_length: int = MODEL_MAX_LENGTH) -> dict:
    """An offline CLIP tokenizer (``vocab.json`` + ``merges.txt``, as SD1.5 ships it): letters and end-of-word
    letters, no merges; ids < 49408. Returns the vocabulary."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    vocab.update({"<|startoftext|>": 2 * len(letters), "<|endoftext|>": 2 * len(letters) + 1})
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "vocab.json"), "w") as fh:
        json.dump(vocab, fh)
    with open(os.path.join(path, "merges.txt"), "w") as fh:
        fh.write("#version: 0.2\n")
    with open(os.path.join(path, "tokenizer_config.json"), "w") as fh:
        json.dump({"model_max_length": max_length, "tokenizer_class": "CLIPTokenizer"}, fh)
    return vocab


def build_pipeline_dir(path: str, small: bool, device: torch.device, res: dict | None = None) -> dict:
    """Write a Stable Diffusion pipeline directory with random weights (seed 0) at ``path``: SD1.5's full-size
    components, or tiny ones with ``small``. Modules are initialised on ``device`` and saved in bf16 (full size) or
    fp32 (tiny). An existing directory of the same kind is reused. Returns the parameter counts."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    kind = "tiny" if small else "sd15"
    marker = os.path.join(path, "fdistill_bench.json")
    if os.path.isfile(marker):
        with open(marker) as fh:
            saved = json.load(fh)
        if saved.get("kind") == kind:
            stamp(res, f"reusing the random {kind} pipeline at {path}")
            return saved["params"]
    dtype = torch.float32 if small else torch.bfloat16
    vocab = write_tokenizer(os.path.join(path, "tokenizer"))
    specials = dict(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                    pad_token_id=vocab["<|endoftext|>"])
    text_cfg = dict(TINY_TEXT, vocab_size=len(vocab)) if small else dict(SD15_TEXT)
    params = {}
    torch.manual_seed(0)
    builders = {"unet": lambda: UNet2DConditionModel(**(TINY_UNET if small else SD15_UNET)),
                "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**text_cfg, **specials)),
                "vae": lambda: AutoencoderKL(**(TINY_VAE if small else SD15_VAE))}
    for name, make in builders.items():
        with torch.device(device):  # initialise where it is fast (the GPU for the full-size networks)
            module = make()
        params[name] = n_params(module)
        if dtype != torch.float32:
            module.to(dtype)
        module.to("cpu").save_pretrained(os.path.join(path, name))  # safetensors from host memory
        del module
        common.free_memory(device)
        stamp(res, f"  {name}: {params[name] / 1e6:.2f}M parameters, saved ({str(dtype)[6:]})")
    PNDMScheduler(**SCHEDULER).save_pretrained(os.path.join(path, "scheduler"))
    with open(marker, "w") as fh:
        json.dump({"kind": kind, "params": params}, fh)
    return params


def check_sd15_params(params: dict) -> bool:
    """Whether the counts equal SD1.5's (printed when they do not: the networks would not be SD1.5's)."""
    bad = {k: (params.get(k), v) for k, v in SD15_PARAMS.items() if params.get(k) != v}
    for k, (got, want) in bad.items():
        print(f"WARNING: {k} has {got} parameters, SD1.5's has {want}: the benchmark does not time SD1.5's network",
              file=sys.stderr, flush=True)
    return not bad


def write_prompts(path: str) -> str:
    with open(path, "w") as fh:
        fh.write("\n".join(PROMPTS) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- the Distiller
def variant_settings(a, name: str) -> dict:
    s = dict(VARIANTS[name])
    if s["lora_rank"] is None:
        s["lora_rank"] = a.lora_rank
    return s


def config_overrides(a, name: str, batch: int) -> list[str]:
    s = variant_settings(a, name)
    return [f"out_dir={a.workdir}/run", f"teacher.path={a.pipe_dir}", f"data.prompts={a.prompts}",
            "data.kind=teacher", f"data.pool_size={batch}", f"data.num_steps={a.pool_steps}",
            f"train.batch_size={batch}", f"train.fake_updates={a.fake_updates}", "train.mixed_precision=bf16",
            f"network.gradient_checkpointing={str(s['gradient_checkpointing']).lower()}",
            f"network.lora_rank={s['lora_rank']}", "log.trackers=[]", "log.progress=false"]


def build(a, name: str, batch: int):
    """The Distiller of the preset with this variant's overrides, built as ``train.py`` builds it."""
    from accelerate import Accelerator

    from fdistill.config import load_config
    from fdistill.run import RunContext, reset_accelerate_state
    from fdistill.methods.distill import Distiller

    common.free_memory(a.device)
    reset_accelerate_state()
    cfg = load_config(PRESET, config_overrides(a, name, batch))
    acc = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=a.device.type == "cpu")
    if acc.device.type != a.device.type:
        raise RuntimeError(f"accelerate chose {acc.device}, the benchmark runs on {a.device}")
    return Distiller(cfg, RunContext(cfg, acc))


def set_batch(d, batch: int) -> None:
    """Switch a built Distiller to another batch in place (every draw of ``step`` reads ``ctx.local_batch``; the
    teacher pool is drawn from with replacement)."""
    d.cfg.train.batch_size = batch
    d.ctx.local_batch = batch


def recover(d, device) -> None:
    """After an out-of-memory step: drop partial gradients and cached blocks."""
    for opt in (d.opt_g, d.opt_f, d.opt_d):
        if opt is not None:
            opt.zero_grad(set_to_none=True)
    gc.collect()
    common.free_memory(device)


def trainable(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class _OutOfTime(Exception):
    pass


class Runner:
    """Steps one Distiller with a running step index."""

    def __init__(self, d):
        self.d, self.i, self.stats = d, 0, []

    def __call__(self):
        from fdistill.run import train_step

        self.stats.append(train_step(self.d.ctx, self.d, self.i))  # as the loop runs it: learning rates, step, EMA
        self.i += 1


def time_steps(a, run: Runner, warmup: int, iters: int) -> dict:
    return common.summary(common.time_calls(run, a.device, warmup, iters))


def search(a, d, run: Runner, name: str, deadline: float, timed_ok: bool, timed_peak) -> dict:
    """Largest batch (<= ``--search-limit``) whose step fits, on the built Distiller ``d`` (one step per trial, one
    fake update). Stops at ``deadline`` (``time.monotonic``) with what it found."""
    record, peaks = [], {}

    def fits(b):
        if timed_ok and b == a.batch:  # measured already
            record.append([b, True])
            peaks[str(b)] = timed_peak
            return True
        if time.monotonic() > deadline:
            raise _OutOfTime
        set_batch(d, b)
        common.reset_peak_memory(a.device)
        t, ok = time.monotonic(), True
        try:
            for _ in range(a.search_steps):
                run()
            common.sync(a.device)
        except Exception as e:
            if not common.is_oom(e):
                raise
            ok = False
        if ok:
            peaks[str(b)] = common.peak_memory_gib(a.device)
        else:
            recover(d, a.device)
        record.append([b, ok])
        stamp(None, f"  {name}: batch {b} {'fits' if ok else 'out of memory'} ({time.monotonic() - t:.1f}s"
                    + (f", peak {peaks[str(b)]:.1f} GiB)" if ok and peaks[str(b)] is not None else ")"))
        return ok

    d.cfg.train.fake_updates = 1
    out = {}
    try:
        if timed_ok:  # up from the timed batch
            res = common.largest_fitting(fits, a.batch, a.search_limit, a.search_granularity)
        else:  # the timed batch ran out of memory: below it, one by one
            res = common.largest_fitting(fits, 1, a.batch - 1, 1) if a.batch > 1 else {"first_failing": 1}
            res["first_failing"] = res.get("first_failing") or a.batch
        out.update(largest=res.get("largest"), first_failing=res["first_failing"])
    except _OutOfTime:
        ok = [b for b, f in record if f]
        bad = [b for b, f in record if not f]
        out.update(largest=max(ok) if ok else None, first_failing=min(bad) if bad else None,
                   stopped="wall-clock budget (--search-budget)")
    out.update(trials=record, peak_memory_gib=peaks, limit=a.search_limit, granularity=a.search_granularity,
               steps_per_trial=a.search_steps)
    if out["largest"] == a.search_limit:
        out["note"] = "the limit fits: the largest batch may be larger (--search-limit)"
    if a.device.type != "cuda":
        out["note"] = "not on CUDA: nothing runs out of memory here; this only checks that the search runs"
    return out


def measure_variant(a, name: str, search_share: float, res: dict) -> dict:
    """Build, time and (``--max-batch``) search one variant; ``search_share``: seconds its search may take."""
    d, run = None, None
    settings = variant_settings(a, name)
    out = {"title": VARIANT_TITLES[name], "settings": settings, "fake_updates": a.fake_updates}
    try:
        t = time.monotonic()
        d = build(a, name, a.batch)
        out["build_s"] = time.monotonic() - t
        out["trainable_params"] = {"generator": trainable(d.gen_u), "fake_score": trainable(d.fake_u),
                                   "discriminator": trainable(d.disc) if d.disc is not None else 0}
        stamp(res, f"{name}: built in {out['build_s']:.1f}s (trainable: generator "
                   f"{out['trainable_params']['generator'] / 1e6:.2f}M)")
        if d.device.type != a.device.type or next(d.gen_u.parameters()).device.type != a.device.type:
            raise RuntimeError(f"the Distiller's networks are on {next(d.gen_u.parameters()).device}, "
                               f"not on {a.device}")
        run = Runner(d)
        common.reset_peak_memory(a.device)
        t = time.monotonic()
        run()
        common.sync(a.device)
        out["first_step_s"] = time.monotonic() - t
        out["first_step_peak_gib"] = common.peak_memory_gib(a.device)
        for _ in range(max(a.warmup - 1, 0)):
            run()
        common.sync(a.device)
        common.reset_peak_memory(a.device)
        out["resident_gib"] = common.allocated_gib(a.device)
        it = time_steps(a, run, 0, a.iters)
        out["peak_memory_gib"] = common.peak_memory_gib(a.device)
        if a.device.type == "cuda":
            out["peak_reserved_gib"] = torch.cuda.max_memory_reserved(a.device) / 2**30
        out["iteration"] = it
        out["ms_per_generator_update"] = it["median_ms"]
        out["images_per_s"] = a.batch / (it["median_ms"] / 1e3)
        stamp(res, f"{name}: {it['median_ms']:.1f} ms/iteration (K={a.fake_updates}), "
                   f"{out['images_per_s']:.2f} img/s, peak {fmt_gib(out['peak_memory_gib'])}")
        if a.extrapolate:
            k = a.fake_updates
            d.cfg.train.fake_updates = k + 1
            it2 = time_steps(a, run, 1, a.iters)
            d.cfg.train.fake_updates = k
            fake_ms = it2["median_ms"] - it["median_ms"]
            gen_ms = it["median_ms"] - k * fake_ms
            proj = gen_ms + a.preset_fake_updates * fake_ms
            out["extrapolation"] = {
                "iteration_k_plus_1": it2, "fake_update_ms": fake_ms, "generator_update_ms": gen_ms,
                "preset_fake_updates": a.preset_fake_updates, "projected_iteration_ms": proj,
                "projected_images_per_s": a.batch / (proj / 1e3) if proj > 0 else None}
            stamp(res, f"{name}: one fake update {fake_ms:.1f} ms, generator update {gen_ms:.1f} ms -> "
                       f"K={a.preset_fake_updates}: {proj:.0f} ms/iteration")
        out["skipped_updates"] = {k: sum(float(s[k]) for s in run.stats) for k in run.stats[0]
                                  if k.startswith("skipped_")}
    except Exception as e:  # one failing variant (out of memory, most likely) must not lose the others
        if a.strict:
            raise
        out["error"] = "out of memory" if common.is_oom(e) else f"{type(e).__name__}: {e}"
        out["traceback"] = traceback.format_exc(limit=8)
        stamp(res, f"{name}: {out['error'].splitlines()[0][:200]}")
    searchable = d is not None and out.get("error", "out of memory") == "out of memory"
    if a.max_batch and searchable and (a.device.type == "cuda" or a.small):
        if "error" in out:
            recover(d, a.device)
        stamp(res, f"{name}: searching the largest batch (budget {search_share:.0f}s)")
        t = time.monotonic()
        try:
            out["max_batch"] = search(a, d, run or Runner(d), name, t + search_share, "error" not in out,
                                      out.get("peak_memory_gib"))
            stamp(res, f"{name}: largest batch {out['max_batch']['largest']}")
        except Exception as e:
            if a.strict:
                raise
            out["max_batch"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8)}
            stamp(res, f"{name}: the search failed: {out['max_batch']['error'][:200]}")
        out["search_s"] = time.monotonic() - t
    elif a.max_batch:
        out["max_batch"] = {"skipped": "needs CUDA (out-of-memory is what ends the search)" if searchable
                            else "the variant failed (not out of memory)" if d is not None
                            else "the Distiller was not built"}
    common.release(d)
    d = run = None
    gc.collect()
    common.free_memory(a.device)
    out["allocated_after_release_gib"] = common.allocated_gib(a.device)
    return out


# ---------------------------------------------------------------------------------------------- report
def fmt_gib(x) -> str:
    return "-" if x is None else f"{x:.1f} GiB"


def fits_notes(res: dict) -> list[str]:
    """What fits where, from the measurements (printed and stored)."""
    notes, global_batch = [], res["settings"]["preset_batch"]
    for name, r in res["variants"].items():
        m = r.get("max_batch", {})
        largest = m.get("largest")
        if "error" in r:
            what = "does not fit" if r["error"] == "out of memory" else "failed"
            notes.append(f"{name}: batch {res['batch']} {what} on one {res['device_name']} ({r['error'][:60]})"
                         + (f"; largest that fits: {largest}" if largest else ""))
        if _off_cuda(res):
            continue
        if largest:
            gpus = math.ceil(global_batch / largest)
            notes.append(f"{name}: up to {largest} per GPU ({m.get('stopped') or m.get('note') or 'searched'}) -> the "
                         f"preset's global batch {global_batch} needs >= {gpus} GPUs with DDP (the trainer has no "
                         "gradient accumulation; DDP adds gradient buckets, ~3.4 GB per full trained UNet, not "
                         "measured here)")
        elif "max_batch" in r and "trials" in m:
            notes.append(f"{name}: not even batch 1 fits: LoRA or FSDP over several GPUs (docs/sd15.md, FSDP: the "
                         "trainer needs the changes listed there first)")
    return notes


def _off_cuda(res: dict) -> bool:
    return not str(res.get("device", "")).startswith("cuda")


def print_report(res: dict) -> None:
    s = res["settings"]
    p = res["params"]
    print(f"\nSD1.5 preset, {s['network']} (UNet {p['unet'] / 1e6:.2f}M, text {p['text_encoder'] / 1e6:.2f}M, "
          f"VAE {p['vae'] / 1e6:.2f}M), {res['resolution']}x{res['resolution']} (latent {res['latent']}), "
          f"batch {res['batch']}, K={s['fake_updates']} fake updates, {res['dtype']}\n"
          f"{res['device_name']}, torch {res['torch']}, commit {res['git_commit'][:12]}\n")
    rows = []
    for name, r in res["variants"].items():
        mb = r.get("max_batch", {}).get("largest")
        if "iteration" not in r:
            rows.append([r["title"], r.get("error", "?").splitlines()[0][:30], None, None, None, None, None, mb])
            continue
        ex = r.get("extrapolation", {})
        rows.append([r["title"], r["iteration"]["median_ms"], r["images_per_s"], ex.get("projected_iteration_ms"),
                     ex.get("projected_images_per_s"), r.get("peak_memory_gib"), r.get("resident_gib"), mb])
    k10 = s["preset_fake_updates"]
    header = ["variant", f"ms/iter K={s['fake_updates']}", "img/s", f"ms/iter K={k10} (proj.)", "img/s K=10",
              "peak GiB", "resident GiB", "max batch"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = ["-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v)) for v in r]
        print("| " + " | ".join(cells) + " |")
    for n in res.get("notes", []):
        print(f"- {n}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="tiny random SD components, batch 2, 2 iterations (CPU smoke)")
    p.add_argument("--variants", default=None,
                   help=f"comma list of {list(VARIANTS)} (default: {','.join(DEFAULT_VARIANTS)})")
    p.add_argument("--batch", type=int, default=None, help="batch per iteration (default 8; 2 with --small)")
    p.add_argument("--fake-updates", type=int, default=1, help="fake-score/discriminator updates per iteration "
                   "(the preset uses 10; see the extrapolation)")
    p.add_argument("--no-extrapolate", dest="extrapolate", action="store_false",
                   help="skip the timing with one more fake update (and the projection to the preset's K)")
    p.add_argument("--lora-rank", type=int, default=64)
    p.add_argument("--iters", type=int, default=None, help="timed steps (default 5; 2 with --small)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2; 1 with --small)")
    p.add_argument("--pool-steps", type=int, default=2, help="Heun steps of the teacher pool (not timed)")
    p.add_argument("--max-batch", action="store_true", help="search the largest batch that fits (CUDA)")
    p.add_argument("--search-limit", type=int, default=None, help="largest batch tried (default 64; 4 with --small)")
    p.add_argument("--search-granularity", type=int, default=None, help="bisection step (default 4; 1 with --small)")
    p.add_argument("--search-steps", type=int, default=1, help="steps per search trial")
    p.add_argument("--search-budget", type=float, default=90.0, help="seconds for all searches together")
    p.add_argument("--workdir", default=None, help="where the random pipeline and the run go (kept; a pipeline "
                   "already there is reused); default: a temporary folder")
    p.add_argument("--build-only", action="store_true", help="write the random pipeline directory and stop")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 with --small on CPU)")
    p.add_argument("--strict", action="store_true", help="stop at the first failure (tests)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/sd15_step[_small].json)")
    a = p.parse_args(argv)

    global _T0
    _T0 = time.monotonic()
    a.device = common.pick_device(a.device)
    if a.device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")
    a.batch = a.batch or (2 if a.small else 8)
    a.iters = a.iters or (2 if a.small else 5)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.small else 2)
    a.search_limit = a.search_limit or (4 if a.small else 64)
    a.search_granularity = a.search_granularity or (1 if a.small else 4)
    names = DEFAULT_VARIANTS if a.variants is None else [v.strip() for v in a.variants.split(",") if v.strip()]
    for n in names:
        if n not in VARIANTS:
            raise SystemExit(f"unknown variant {n!r}; valid: {list(VARIANTS)}")
    if a.batch < 1 or a.fake_updates < 1 or a.iters < 1:
        raise SystemExit("--batch, --fake-updates and --iters must be >= 1")
    a.out = a.out or os.path.join(common.RESULTS, f"sd15_step{'_small' if a.small else ''}.json")
    threads = a.threads or (1 if a.small and a.device.type == "cpu" else None)
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    if not a.small and a.device.type != "cuda":
        print("WARNING: full-size SD1.5 on the CPU: building works, a training step takes minutes per iteration",
              file=sys.stderr, flush=True)

    from fdistill.config import load_config

    preset = load_config(PRESET, ["teacher.path=unused", "data.prompts=unused"])
    a.preset_fake_updates = int(preset.train.fake_updates)

    res = common.environment(a.device, argv)
    latent = (TINY_UNET if a.small else SD15_UNET)["sample_size"]
    vae_scale = 2 ** (len((TINY_VAE if a.small else SD15_VAE)["block_out_channels"]) - 1)
    res.update(benchmark="sd15_step", batch=a.batch,
               dtype="bf16 autocast; trained networks fp32, frozen teacher / text encoder / VAE bf16",
               resolution=latent * vae_scale, latent=latent, variants={})
    res["settings"] = dict(network="tiny random SD components" if a.small else "SD1.5, random weights",
                           config=os.path.relpath(PRESET, common.REPO), fake_updates=a.fake_updates,
                           preset_fake_updates=a.preset_fake_updates, preset_batch=int(preset.train.batch_size),
                           guidance_scale=float(preset.teacher.guidance_scale), lora_rank=a.lora_rank,
                           iters=a.iters, warmup=a.warmup, pool_size=a.batch, pool_steps=a.pool_steps,
                           pytorch_cuda_alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""))
    stamp(res, f"device {res['device_name']}, torch {res['torch']}, batch {a.batch}, variants {','.join(names)}")

    tmp = None
    if a.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="fdistill-sd15-")
        a.workdir = tmp.name
    os.makedirs(a.workdir, exist_ok=True)
    try:
        a.pipe_dir = os.path.join(a.workdir, "tiny-sd" if a.small else "sd15-random")
        stamp(res, f"building the random pipeline at {a.pipe_dir}")
        res["params"] = build_pipeline_dir(a.pipe_dir, a.small, a.device, res)
        if not a.small:
            res["params_match_sd15"] = check_sd15_params(res["params"])
        res["params"]["total"] = sum(res["params"].values())
        stamp(res, "pipeline ready: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in res["params"].items()))
        common.write_json(a.out, res)
        if a.build_only:
            return res
        a.prompts = write_prompts(os.path.join(a.workdir, "prompts.txt"))
        for i, name in enumerate(names):
            stamp(res, f"variant {name}: {VARIANT_TITLES[name]}")
            # each variant's search may use an equal share of what is left of the budget
            spent = sum(v.get("search_s", 0.0) for v in res["variants"].values())
            share = max(a.search_budget - spent, 0.0) / (len(names) - i)
            t = time.monotonic()
            out = measure_variant(a, name, share, res)
            out["variant_s"] = time.monotonic() - t
            res["variants"][name] = out
            common.write_json(a.out, res)
        res["notes"] = fits_notes(res)
        stamp(res, "done")
        common.write_json(a.out, res)
    finally:
        if tmp is not None:
            tmp.cleanup()
        torch.set_num_threads(saved_threads)
    print_report(res)
    print(f"\nwrote {a.out}", flush=True)
    return res


if __name__ == "__main__":
    main()
