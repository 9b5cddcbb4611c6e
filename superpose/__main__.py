"""``python -m superpose``: compose two (or more) models by OR / AND and draw the result.

    python -m superpose demo --out docs/superpose_demo.png
    python -m superpose compose left right --mode and --out and.png [--json stats.json]
    python -m superpose compose path/to/ddpm_a path/to/ddpm_b --mode or --n 16 --out grid.png
    python -m superpose prompts path/to/sd_pipeline --prompt "a cat" --prompt "a dog" --mode and --out grid.png

A model is a mixture preset (``left``, ``right``, ``top``, ``bottom``), a mixture JSON file (a scatter plot over the
exact densities is drawn), or a local diffusers directory with ``unet/`` and ``scheduler/`` (an image grid).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from samplers import karras_sigmas

from . import AndSolver, sample
from .presets import PRESETS, is_mixture, load_mixture

MIX_SIGMA_MIN, MIX_SIGMA_MAX = 0.01, 80.0


def _parser():
    p = argparse.ArgumentParser(prog="python -m superpose", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(q):
        q.add_argument("--mode", default="or", choices=["or", "and", "average", "single"])
        q.add_argument("--steps", type=int, default=None, help="SDE steps (default 200 for mixtures, 50 for UNets)")
        q.add_argument("--n", type=int, default=None, help="samples (default 2000 for mixtures, 16 images)")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--T", type=float, default=1.0, help="OR temperature (MATH S2)")
        q.add_argument("--bias", type=float, nargs="+", default=None, help="one bias l_i per model (MATH S2/S3)")
        q.add_argument("--kappa-range", type=float, nargs=2, default=(-10.0, 11.0), help="AND clip range")
        q.add_argument("--process", default="ve", choices=["ve", "vp"])
        q.add_argument("--device", default="cpu")
        q.add_argument("--out", required=True, help="output picture (.png)")
        q.add_argument("--json", default=None, help="also write statistics as JSON")

    c = sub.add_parser("compose", help="compose mixtures or local diffusers UNet directories")
    c.add_argument("models", nargs="+", help=f"presets {sorted(PRESETS)}, .json mixtures or diffusers dirs")
    common(c)
    t = sub.add_parser("prompts", help="prompts as models with a saved SuperDiffPipeline (text mode)")
    t.add_argument("pipeline", help="local SuperDiffPipeline / Stable-Diffusion-layout directory")
    t.add_argument("--prompt", action="append", required=True)
    t.add_argument("--guidance-scale", type=float, default=7.5)
    common(t)
    d = sub.add_parser("demo", help="OR / AND of the 'left' and 'right' mixtures (docs/superpose_demo.png)")
    d.add_argument("--out", default="docs/superpose_demo.png")
    d.add_argument("--steps", type=int, default=200)
    d.add_argument("--n", type=int, default=2000)
    d.add_argument("--seed", type=int, default=0)
    return p


def mixture_stats(out, models, sigma_end: float) -> dict:
    """Exact log-densities of the samples under each model, the share where they are within 1 of each other, and
    the share nearest (highest density) to each model."""
    x = out.samples.to(torch.float64)
    lq = torch.stack([m.log_prob(x, sigma_end) for m in models])
    return {
        "mean_exact_log_q": lq.mean(1).tolist(),
        "share_equal_density": float(((lq.max(0).values - lq.min(0).values) < 1).double().mean()),
        "share_by_model": torch.bincount(lq.argmax(0), minlength=len(models)).div(x.shape[0]).tolist(),
        "fallbacks": out.fallbacks, "solves": out.solves,
    }


def run_mixtures(models, mode, steps, n, seed, **kw):
    """Sample ``n`` points of the composition of analytic mixtures; ends at sigma = 0.01 (no final denoising)."""
    gen = torch.Generator().manual_seed(seed)
    sig = karras_sigmas(steps, MIX_SIGMA_MIN, MIX_SIGMA_MAX, append_zero=False)
    x0 = torch.randn(n, 2, generator=gen, dtype=torch.float64) * sig[0]
    out = sample(models, x0, sig, mode=mode, generator=gen, **kw)
    return out, mixture_stats(out, models, float(sig[-1]))


def _kwargs(a):
    return dict(T=a.T, bias=a.bias, process=a.process, and_solver=AndSolver(kappa_range=tuple(a.kappa_range)))


def compose(a):
    if all(is_mixture(m) for m in a.models):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from .plot import scatter_panel

        models = [load_mixture(m) for m in a.models]
        out, stats = run_mixtures(models, a.mode, a.steps or 200, a.n or 2000, a.seed, **_kwargs(a))
        fig, ax = plt.subplots(figsize=(4, 4))
        scatter_panel(ax, out.samples, models, f"{a.mode.upper()} of {', '.join(a.models)}")
        fig.savefig(a.out, dpi=150, bbox_inches="tight")
        plt.close(fig)
        return stats
    from fdistill.networks import DiffusersDenoiser

    from .plot import image_grid

    dens = [DiffusersDenoiser.from_pretrained(m).to(a.device).eval() for m in a.models]
    unet = dens[0].unet
    size = unet.config.sample_size
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    n = a.n or 16
    gen = torch.Generator(a.device).manual_seed(a.seed)
    sig = karras_sigmas(a.steps or 50, max(d.sigma_min for d in dens), min(d.sigma_max for d in dens))
    x0 = torch.randn(n, unet.config.in_channels, *size, generator=gen, device=a.device) * float(sig[0])
    out = sample(dens, x0, sig, mode=a.mode, generator=gen, progress=True, **_kwargs(a))
    image_grid((out.samples / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()).save(a.out)
    return {"fallbacks": out.fallbacks, "solves": out.solves, "mean_log_q": out.log_q.mean(1).tolist()}


def prompts(a):
    from .pipeline import SuperDiffPipeline
    from .plot import image_grid

    pipe = SuperDiffPipeline.from_pretrained(a.pipeline).to(a.device)
    out = pipe(prompts=a.prompt, mode=a.mode, num_inference_steps=a.steps or 50, guidance_scale=a.guidance_scale,
               batch_size=a.n or 4, generator=torch.Generator(a.device).manual_seed(a.seed), output_type="np",
               **_kwargs(a))
    image_grid(out.images).save(a.out)
    return {"fallbacks": out.fallbacks, "solves": out.solves, "mean_log_q": out.log_q.mean(1).tolist()}


def demo(a):
    """Models 'left' and 'right' (sharing the centre): exact samples, OR, AND, average, and the end gap
    ``log q_left - log q_right``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plot import COLORS, scatter_panel

    models = [load_mixture("left"), load_mixture("right")]
    gen = torch.Generator().manual_seed(a.seed)
    fig, axes = plt.subplots(2, 3, figsize=(10.5, 7))
    for i, (ax, name) in enumerate(zip(axes[0, :2], ("left", "right"))):
        scatter_panel(ax, models[i].sample(a.n, generator=gen, dtype=torch.float64), [models[i]],
                      f"model {name} (exact samples)", color=COLORS[i])
    stats, gaps = {}, {}
    for ax, mode in zip([axes[0, 2], axes[1, 0], axes[1, 1]], ("or", "and", "average")):
        out, st = run_mixtures(models, mode, a.steps, a.n, a.seed)
        stats[mode] = st
        x = out.samples
        gaps[mode] = (models[0].log_prob(x, MIX_SIGMA_MIN) - models[1].log_prob(x, MIX_SIGMA_MIN)).numpy()
        label = {"or": "OR (S2): union", "and": "AND (S3): equal density", "average": "average of scores"}[mode]
        scatter_panel(ax, x, models, f"{label}\n|log q_L - log q_R| < 1: {st['share_equal_density']:.0%}")
    ax = axes[1, 2]
    bins = torch.linspace(-12, 12, 61).numpy()
    for mode, col in (("and", "k"), ("average", "tab:gray")):
        ax.hist(gaps[mode].clip(-12, 12), bins=bins, histtype="step", color=col, label=mode, density=True)
    ax.set_title("exact log q_left - log q_right at the end", fontsize=9)
    ax.legend(fontsize=8)
    fig.suptitle(f"SuperDiff on two 2-D Gaussian mixtures ({a.steps} SDE steps, {a.n} samples, seed {a.seed})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    plt.close(fig)
    return stats


def main(argv=None):
    a = _parser().parse_args(argv)
    if getattr(a, "bias", None) is not None and a.command != "demo":
        n_models = len(a.models) if a.command == "compose" else len(a.prompt)
        if len(a.bias) != n_models:
            raise SystemExit(f"--bias takes one value per model ({n_models}); got {len(a.bias)}")
    stats = {"compose": compose, "prompts": prompts, "demo": demo}[a.command](a)
    text = json.dumps(stats, indent=2)
    print(text)
    if getattr(a, "json", None):
        with open(a.json, "w") as fh:
            fh.write(text + "\n")
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
