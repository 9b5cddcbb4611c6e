"""Would distillation improve a good warm start if its fake score were exact? (issue 23's open question)

``bench/gmm_gradient_noise.py`` measured that after the flow-map warm start the generator's distillation gradient is
the learned fake score's error (4-12x the exact-score gradient), and that the exact gradient is below one batch's
noise. This probe trains the recipe's students (reverse KL: no density ratio, so the fake score is the only learned
part) with the fake score replaced, at every step, by the *exact* denoiser of the current generator's distribution:
Tweedie on ``--ref-samples`` fresh samples of it, drawn again every ``--ref-every`` steps
(``gmm_gradient_noise.EmpiricalDenoiser``; at noise level sigma the empirical mixture of Gaussians is an unbiased
estimate of the generator's noised density, so this fake score is exact up to O(1/ref-samples) and its lag). Each variant is ``'label=exact|learned key=value ...'``; e.g. Adam's
momentum averages the exact gradient over about ten batches, whose single-batch signal-to-noise ratio is ~0.04:

    cd bench && python gmm_exact_fake.py --teacher ring8 --seed 0 --runs ../runs/probes/exact_fake \
        --out results/probes/ring8_rkl_exact_fake_s0 'warm-start=learned train.steps=1 train.lr=0' \
        'learned=learned' 'exact=exact' 'exact-momentum=exact train.betas=[0.9,0.99]' \
        -- network.warm_start_cache=../runs/warm_start_cache

Every run is a ``fdistill.run.run`` job of ``configs/gmm2d.yaml`` (reverse KL, the recipe otherwise) in
``<runs>/<teacher>-s<seed>/<label>``, measured every ``--every`` steps (MATH §7) and reused when finished. Writes
``<out>.json`` (final measures and curves), ``<out>.md`` and ``<out>.png`` (each measure against steps). The warm start alone is a variant
too: ``'warm-start=learned train.steps=1 train.lr=0'`` (drawn as a level).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from common import parse_labelled, save_figure, split_common
from gmm_gradient_noise import EmpiricalDenoiser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEASURES = (("off_mode", "off-mode fraction"), ("tv_on_mode", "on-mode mass TV"),
            ("nll_teacher_width", "NLL at the teacher's width"), ("mode_scale", "mode scale (1 = teacher)"),
            ("mode_profile", "mode profile error (0 = teacher)"))
KINDS = ("exact", "learned")
FORM = "label=exact|learned [key=value ...]"


ESS_QUERIES = 256  # generator samples, noised at the smallest level, on which the Tweedie weights are checked


def probe_distiller(exact: bool, ref_samples: int, ref_every: int, min_ess: float = 10.0):
    """A ``Distiller`` whose fake score, if ``exact``, is the exact denoiser of ``ref_samples`` fresh samples of the
    generator, drawn again every ``ref_every`` steps (no fake-score training; objectives without a density ratio
    only). Each draw also measures the Tweedie weights' median effective sample size on ``ESS_QUERIES`` further
    samples noised at the generator loss's smallest level (logged as ``exact_fake_ess``); below ``min_ess`` at the
    first draw the run stops: there the empirical denoiser is the nearest sample's position, not the generator's
    denoiser (a high dimension or too few samples), and the probe would measure that error instead."""
    from fdistill.methods.distill import Distiller

    class ProbeDistiller(Distiller):
        def __init__(self, cfg, ctx):
            if exact and (cfg.train.fake_updates != 1 or cfg.objective.gan_weight):
                raise SystemExit("the exact fake score is for objectives without a discriminator (reverse KL, no "
                                 f"GAN term) and train.fake_updates=1; got fake_updates={cfg.train.fake_updates}, "
                                 f"gan_weight={cfg.objective.gan_weight}")
            super().__init__(cfg, ctx)
            if exact and self.disc is not None:
                raise SystemExit("the exact fake score is for objectives without a discriminator (reverse KL, no "
                                 f"GAN term); got divergence {cfg.objective.divergence}")

        def fake_update(self, step, k, objective):
            if not exact:
                return super().fake_update(step, k, objective)
            if step % ref_every and isinstance(self.fake_u, EmpiricalDenoiser):
                return self.fake_u.samples[:1].float(), None, {"exact_fake_ess": self.exact_fake_ess}
            first = not isinstance(self.fake_u, EmpiricalDenoiser)
            with torch.no_grad():
                z = self.rand.randn(step, "z/exact-fake", ref_samples + ESS_QUERIES, self.shape)
                x = self.generate(self.gen_u, step, "z/exact-fake", None, z=z).float()
            self.fake_u = EmpiricalDenoiser(x[:ref_samples], chunk=25_000, dtype=torch.float32)
            sigma_min = min(o.noise_levels.sigma_min for _, o in self.schedule)
            noise = self.rand.randn(step, "noise/exact-fake-ess", ESS_QUERIES, self.shape)
            ess = self.fake_u.effective_sample_size(x[ref_samples:] + sigma_min * noise, torch.tensor(sigma_min))
            self.exact_fake_ess = ess.median()
            if first and self.exact_fake_ess < min_ess:
                raise SystemExit(
                    f"the exact fake score is not exact here: at the generator loss's smallest noise level "
                    f"{sigma_min:.3g} the Tweedie weights of {ref_samples} generator samples spread over a median of "
                    f"{self.exact_fake_ess:.1f} samples (< --min-ess {min_ess:g}), so the empirical denoiser is the "
                    f"nearest sample's position ({x[0].numel()} dimensions); use more --ref-samples or a teacher of "
                    "lower dimension")
            return x[:1], None, {"exact_fake_ess": self.exact_fake_ess}

    return ProbeDistiller


def run_variant(label: str, kind: str, words: list[str], a) -> str:
    """Train one variant (or reuse it); returns its run directory."""
    from fdistill.config import load_config
    from fdistill.run import reset_accelerate_state, run

    from eval.gmm import gmm_metrics

    out_dir = os.path.join(a.runs, f"{a.teacher}-s{a.seed}", label)
    if os.path.exists(os.path.join(out_dir, "final_metrics.json")):
        return out_dir
    extra = ["train.fake_updates=1"] if kind == "exact" else []
    cfg = load_config(os.path.join(REPO, "configs/gmm2d.yaml"),
                      [f"teacher.preset={a.teacher}", f"seed={a.seed}", f"out_dir={out_dir}", "objective.divergence=rkl",
                       f"train.eval_every={a.every}", f"network.flow_fit_batch={a.warm_start_batch}",
                       "log.trackers=[]", "log.progress=false", *extra, *words])
    reset_accelerate_state()
    run(cfg, probe_distiller(kind == "exact", a.ref_samples, a.ref_every, a.min_ess), measures=gmm_metrics)
    return out_dir


def curve(out_dir: str) -> list[dict]:
    """The run's measures every ``--every`` steps (``eval.jsonl``; none for a run shorter than that)."""
    path = os.path.join(out_dir, "eval.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def table(rows: list[dict]) -> str:
    head = "| variant | " + " | ".join(name for _, name in MEASURES) + " |"
    lines = [head, "|" + "---|" * (len(MEASURES) + 1)]
    for r in rows:
        m = r["final"]
        lines.append(f"| {r['label']} ({r['kind']}, {r['steps']} steps) | "
                     + " | ".join(f"{m[k]:.4g}" if k in m else "–" for k, _ in MEASURES) + " |")
    return "\n".join(lines) + "\n"


def figure(path: str, rows: list[dict]) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4 * len(MEASURES), 3.4))
    for ax, (key, name) in zip(axes, MEASURES):
        for r in rows:
            pts = [(m["steps"], m[key]) for m in r["curve"] if key in m]
            if len(pts) > 1:
                ax.plot(*zip(*pts), marker=".", label=r["label"])
            elif key in r["final"]:  # a run without a curve (the warm start alone): a level
                ax.axhline(r["final"][key], color="k", ls="--", lw=1, label=r["label"])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("distillation step")
    axes[0].legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="ring8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every", type=int, default=50, help="measure every this many steps")
    p.add_argument("--ref-samples", type=int, default=100_000, help="generator samples of the exact fake score")
    p.add_argument("--ref-every", type=int, default=10, help="draw them again every this many steps (the learned "
                   "fake score lags the generator too; a generator sample costs what a 4 x 256 MLP costs)")
    p.add_argument("--min-ess", type=float, default=10.0, help="stop an exact run whose Tweedie weights spread "
                   "over fewer samples than this (median, at the smallest noise level, at its first draw)")
    p.add_argument("--warm-start-batch", type=int, default=256, help="the warm start's batch "
                   "(network.flow_fit_batch), whatever the variant's train.batch_size (the recipe's 256: every "
                   "variant starts from the same fit)")
    p.add_argument("--runs", default="runs/probes/exact_fake")
    p.add_argument("--out", required=True)
    p.add_argument("variants", nargs="+", help="'label=exact|learned key=value ...' (one argument each); after --: "
                                                "overrides for every variant")
    own, common = split_common(argv)
    a = p.parse_args(own)
    specs = []
    for spec in a.variants:
        label, words = parse_labelled(spec, FORM)
        if not words or words[0] not in KINDS:
            raise SystemExit(f"a run is '{FORM}'; got {spec!r}")
        specs.append((label, words[0], [*common, *words[1:]]))
    rows = []
    for label, kind, words in specs:
        out_dir = run_variant(label, kind, words, a)
        with open(os.path.join(out_dir, "final_metrics.json")) as fh:
            final = json.load(fh)
        rows.append({"label": label, "kind": kind, "overrides": words, "run": out_dir, "final": final,
                     "steps": final.get("steps"), "curve": curve(out_dir)})
        print(label, {k: final.get(k) for k, _ in MEASURES}, flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".json", "w") as fh:
        json.dump({"meta": {"command": " ".join(sys.argv), "teacher": a.teacher, "seed": a.seed,
                            "ref_samples": a.ref_samples, "ref_every": a.ref_every,
                            "min_ess": a.min_ess}, "rows": rows}, fh, indent=1)
    with open(a.out + ".md", "w") as fh:
        fh.write(table(rows))
    figure(a.out + ".png", rows)
    print(table(rows))


if __name__ == "__main__":
    main()
