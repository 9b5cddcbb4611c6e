"""Why does distillation not improve a good warm start? The generator's distillation gradient at its starting point,
taken apart into batch noise and the fake score's bias (issue 23).

For each start (``'label=key=value key=value ...'``, one argument; e.g. the DMD start ``network.flow_fit_steps=0``
and warm starts of two lengths) the Distiller is built as ``train.py`` builds it (mixture teacher,
``configs/gmm2d.yaml``), its fake score is trained on the frozen generator for ``--fake-steps`` x
``train.fake_updates`` DSM updates (what it has caught up to by then in training), and the generator's gradient is taken on ``--batches`` independent batches of the step's streams
without any update:

- the distillation gradient ``g_b`` (MATH F2, the regression term off) per batch ``b``; its mean ``g``, the batch noise
  ``n = sqrt(mean_b ||g_b - g||^2)`` and the per-batch signal-to-noise ratio ``||g||^2 / n^2``;
- for reverse KL (``h = 1``, no density ratio), the same gradient with the fake score replaced by the generator's
  exact noised denoiser, ``D(x, sigma) = sum_i softmax_i(-||x - x_i||^2 / 2 sigma^2) x_i`` over ``--ref-samples`` of its
  own samples (Tweedie on the empirical distribution; 2-D teachers, where the samples are dense at the noise levels
  that matter): its mean ``g*`` is the direction the generator should take; the fake score's bias, the mean of the
  paired per-batch differences ``g_b - g*_b`` (same batches, so their shared noise cancels), relative to ``||g*||``,
  and the cosine between ``g`` and ``g*``; each mean's norm with its noise floor ``batch noise / sqrt(batches)``;
- the regression term's gradient (MATH R1b) beside it: ``||g_reg||``.

With Adam (``beta1 = 0``), each step moves every weight by about the learning rate whatever its gradient's size, so a
gradient whose batch signal-to-noise ratio is far below 1 (or whose fake-score bias is above 1) moves the generator
at random. Writes ``<out>.json`` and ``<out>.md``.

    python bench/gmm_gradient_noise.py --teacher ring8 --out bench/results/probes/ring8_gradient_noise_s0 \\
        dmd=network.flow_fit_steps=0 ws375=network.flow_fit_steps=3000 ws750=network.flow_fit_steps=6000 \\
        -- network.warm_start_cache=runs/warm_start_cache
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch
from common import parse_labelled, split_common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class EmpiricalDenoiser(torch.nn.Module):
    """The exact denoiser of the empirical distribution of ``samples`` at noise level ``sigma`` (Tweedie): the
    softmax-weighted mean of the samples, weights ``-||x - x_i||^2 / 2 sigma^2``, taken in chunks, in ``dtype``
    (float32 is 2-3x faster on a CPU and enough where the samples are O(1))."""

    def __init__(self, samples: torch.Tensor, chunk: int = 65536, dtype=torch.float64):
        super().__init__()
        self.register_buffer("samples", samples.flatten(1).to(dtype))
        self.chunk = chunk

    def _weighted(self, x, sigma):
        """The Tweedie weights chunk by chunk, as a running log-sum-exp: yields ``(part, w, rescale)`` — a chunk of the
        samples, their weights relative to the running maximum, and the factor that brings the sums so far onto
        that maximum."""
        dtype = self.samples.dtype
        xf = x.flatten(1).to(dtype)
        s2 = torch.as_tensor(sigma).to(dtype).reshape(-1, 1) ** 2
        top = torch.full((xf.shape[0], 1), -float("inf"), dtype=dtype)
        for part in self.samples.split(self.chunk):
            logits = -torch.cdist(xf, part, compute_mode="donot_use_mm_for_euclid_dist") ** 2 / (2 * s2)
            new_top = torch.maximum(top, logits.max(1, keepdim=True).values)
            yield part, torch.exp(logits - new_top), torch.exp(top - new_top)
            top = new_top

    @torch.no_grad()
    def forward(self, x, sigma, cond=None):
        num = torch.zeros(x.flatten(1).shape, dtype=self.samples.dtype)
        den = torch.zeros((x.shape[0], 1), dtype=self.samples.dtype)
        for part, w, rescale in self._weighted(x, sigma):
            num = num * rescale + w @ part
            den = den * rescale + w.sum(1, keepdim=True)
        return (num / den).reshape(x.shape).to(x.dtype)

    @torch.no_grad()
    def effective_sample_size(self, x, sigma) -> torch.Tensor:
        """Per query, how many samples the Tweedie weights of ``forward`` spread over, ``(sum w)^2 / sum w^2``:
        about the number of samples at a large ``sigma``, 1 where the denoiser is the nearest sample (a small
        ``sigma``, or a high dimension: the estimate is then the nearest sample's position, not the distribution's
        denoiser)."""
        s1 = torch.zeros((x.shape[0], 1), dtype=self.samples.dtype)
        sq = torch.zeros_like(s1)
        for _, w, rescale in self._weighted(x, sigma):
            s1 = s1 * rescale + w.sum(1, keepdim=True)
            sq = sq * rescale ** 2 + (w ** 2).sum(1, keepdim=True)
        return (s1 ** 2 / sq).reshape(-1)


def build(teacher: str, words: list[str], workdir: str):
    """A Distiller exactly as ``train.py`` builds it (``load_config`` -> ``RunContext`` -> ``Distiller``)."""
    from accelerate import Accelerator

    from fdistill.config import load_config
    from fdistill.methods.distill import Distiller
    from fdistill.run import RunContext, reset_accelerate_state

    reset_accelerate_state()
    cfg = load_config(os.path.join(REPO, "configs/gmm2d.yaml"),
                      [f"teacher.preset={teacher}", f"out_dir={workdir}", "log.trackers=[]", "log.progress=false",
                       *words])
    ctx = RunContext(cfg, Accelerator(cpu=True))
    return Distiller(cfg, ctx)


def generator_gradients(d, steps, regression: bool, fake=None) -> torch.Tensor:
    """The generator's gradient of ``Distiller.generator_update`` on the streams of each of ``steps``, as rows, with
    no update (the regression term only if ``regression``; ``fake`` replaces the fake score)."""
    rows = []

    def capture(name, loss, model, opt):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.parameters()]).double())
        opt.zero_grad(set_to_none=True)
        return torch.zeros(())

    update, weight, fake_u = d.ctx.update, d.regression_weight, d.fake_u
    d.ctx.update, d.regression_weight = capture, (weight if regression else 0.0)
    d.fake_u = fake if fake is not None else fake_u
    try:
        for s in steps:
            d.generator_update(s, d.objective_at(0))
    finally:
        d.ctx.update, d.regression_weight, d.fake_u = update, weight, fake_u
    return torch.stack(rows)


def regression_only(d, steps, without: torch.Tensor) -> torch.Tensor:
    """The regression term's gradient alone: the gradient with it less ``without`` (the same batches without it)."""
    return generator_gradients(d, steps, True) - without


def noise_stats(g: torch.Tensor) -> dict:
    """Of per-batch gradients (rows): the mean's norm, the batch noise, the per-batch signal-to-noise ratio and the
    noise floor of the mean's norm (``batch_noise / sqrt(batches)``: a mean norm near it is noise)."""
    mean = g.mean(0)
    noise2 = ((g - mean) ** 2).sum(1).mean()
    return {"mean_norm": float(mean.norm()), "batch_noise": float(noise2.sqrt()),
            "batch_snr": float(mean.norm() ** 2 / noise2), "mean_floor": float((noise2 / len(g)).sqrt())}


def measure(teacher, label, words, a) -> dict:
    with tempfile.TemporaryDirectory() as work:
        d = build(teacher, words, work)
        for s in range(a.fake_steps):  # the fake score catches up with the frozen generator
            for k in range(d.cfg.train.fake_updates):
                d.fake_update(s, k, d.objective_at(s))
        steps = range(10_000, 10_000 + a.batches)  # streams the catch-up did not use
        out = {"label": label, "overrides": words, "divergence": d.cfg.objective.divergence}
        g_fake = generator_gradients(d, steps, False)
        out["distill"] = noise_stats(g_fake)
        if d.regression_weight > 0:
            out["regression"] = noise_stats(regression_only(d, steps, g_fake))
        if d.cfg.objective.divergence == "rkl" and not d.needs_ratio:
            ref = EmpiricalDenoiser(d.sample(a.ref_samples, seed=777, ema_index=None).cpu())
            g_exact = generator_gradients(d, steps, False, fake=ref)
            out["exact"] = noise_stats(g_exact)
            # paired on the same batches: the difference's mean is the fake score's bias, its floor the noise left
            out["difference"] = noise_stats(g_fake - g_exact)
            out["fake_bias"] = out["difference"]["mean_norm"] / out["exact"]["mean_norm"]
            gf, ge = g_fake.mean(0), g_exact.mean(0)
            out["cosine_fake_exact"] = float(gf @ ge / (gf.norm() * ge.norm()))
    return out


def table(rows) -> str:
    lines = ["| start | divergence | ‖g‖ (floor) | batch noise | batch SNR | ‖g*‖ exact score (floor) | exact batch SNR | "
             "‖g − g*‖ (floor) | bias ‖g−g*‖/‖g*‖ | cos(g, g*) | ‖g_reg‖ (R1b) |", "|" + "---|" * 11]

    def norm(x):
        return f"{x['mean_norm']:.3g} ({x['mean_floor']:.2g})"

    for r in rows:
        d, reg, ex, df = r["distill"], r.get("regression"), r.get("exact"), r.get("difference")
        cells = [norm(d), f"{d['batch_noise']:.3g}", f"{d['batch_snr']:.3g}",
                 norm(ex) if ex else "-", f"{ex['batch_snr']:.3g}" if ex else "-", norm(df) if df else "-",
                 f"{r['fake_bias']:.2f}" if "fake_bias" in r else "-",
                 f"{r['cosine_fake_exact']:.2f}" if "cosine_fake_exact" in r else "-",
                 f"{reg['mean_norm']:.2g}" if reg else "-"]
        lines.append(f"| {r['label']} | {r['divergence']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="ring8")
    p.add_argument("--batches", type=int, default=32)
    p.add_argument("--fake-steps", type=int, default=200, help="generator steps' worth of fake-score updates first")
    p.add_argument("--ref-samples", type=int, default=200_000, help="generator samples of the exact denoiser")
    p.add_argument("--out", required=True)
    p.add_argument("starts", nargs="+", help="'label=key=value key=value ...' (one argument each); after --: "
                                              "overrides for every start")
    own, common = split_common(argv)
    a = p.parse_args(own)
    rows = []
    for spec in a.starts:
        label, words = parse_labelled(spec, "label=key=value [key=value ...]")
        rows.append(measure(a.teacher, label, [*common, *words], a))
        print(json.dumps(rows[-1]), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".json", "w") as fh:
        json.dump({"meta": {"command": " ".join(sys.argv), "teacher": a.teacher, "batches": a.batches,
                            "fake_steps": a.fake_steps, "ref_samples": a.ref_samples}, "rows": rows}, fh, indent=1)
    with open(a.out + ".md", "w") as fh:
        fh.write(table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
