"""Does the discriminator of a digits run memorise the real digits it trains on? (issue 24, target 3)

The GAN term of a digits run reads the stratified *train* split of scikit-learn's digits (``DigitsDataset(split=
"train")``: 1437 images); the 360 of the *test* split are never shown to it. For each checkpoint given, this rebuilds
the run from its ``resolved_config.yaml``, loads the checkpoint, and measures the discriminator's logit (MATH F3) on
the train split, the held-out split and as many samples of the checkpoint's generator, each noised at a grid of noise
levels with one fixed noise draw per image:

- ``gap_train_gen`` / ``gap_test_gen``: mean logit of real minus generated — what the GAN term pushes on;
- ``gap_train_test``: train minus held-out (0 for a discriminator that generalises; > 0 for one that memorises);
- ``auc_train_test``: the probability that a train image outscores a held-out one (0.5 = cannot tell them apart);
- ``auc_test_gen``: the same for held-out against generated (what the discriminator knows about digits as such);
- ``r1``: the approximate R1 of ``fdistill.ratio.r1_penalty`` on the train split (times ``discriminator.r1_gamma``
  in the loss), for calibrating ``r1_gamma``.

    python bench/digits_disc_probe.py runs/X/runs/staged-fkl-s1/checkpoints/step-3200 ... --out bench/results/Y.json
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from common import write_json, write_markdown  # noqa: E402

SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(pos > neg) + P(pos = neg) / 2 over every pair (the Mann-Whitney AUC)."""
    diff = pos.reshape(-1, 1) - neg.reshape(1, -1)
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


def build_job(checkpoint: str, work: str):
    """The run's ``Distiller`` (from its resolved config, out_dir in ``work``) with ``checkpoint`` loaded."""
    from fdistill.config import load_config
    from fdistill.methods import method_class
    from fdistill.run import RunContext, reset_accelerate_state

    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))
    cfg = load_config(os.path.join(run_dir, "resolved_config.yaml"),
                      [f"out_dir={work}", f"resume={os.path.abspath(checkpoint)}", "log.progress=false"])
    reset_accelerate_state()
    ctx = RunContext(cfg)
    job = method_class(cfg.task)(cfg, ctx)
    step = ctx.resume(job)
    return job, cfg, step


@torch.no_grad()
def logits(disc, x: torch.Tensor, sigma: float, seed: int, batch: int = 512) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=g)
    out = []
    for i in range(0, len(x), batch):
        xs = x[i:i + batch] + sigma * noise[i:i + batch]
        out.append(disc(xs, torch.full((len(xs),), sigma), None).float().reshape(-1))
    return torch.cat(out)


def probe(checkpoint: str, seed: int = 0) -> dict:
    from fdistill import ratio
    from fdistill.data import DigitsDataset
    from fdistill.denoiser import one_step

    with tempfile.TemporaryDirectory() as work:
        job, cfg, step = build_job(checkpoint, work)
        disc = job.disc.eval()
        res = cfg.data.resolution
        train = DigitsDataset(res, "train").images.float()  # in [-1, 1], what DatasetSource gives the GAN term
        test = DigitsDataset(res, "test").images.float()
        with torch.no_grad():
            z = torch.randn((len(train), *job.shape), generator=torch.Generator().manual_seed(seed))
            gen = torch.cat([one_step(job.gen_u, z[i:i + 256], job.sigma_init, None, mean=job.gen_mean)
                             for i in range(0, len(z), 256)]).float()
        rows = []
        for s in SIGMAS:
            lt, lh, lg = (logits(disc, x, s, seed + k) for k, x in enumerate((train, test, gen)))
            g = torch.Generator().manual_seed(seed + 7)
            x_r1 = train[:512] + s * torch.randn(train[:512].shape, generator=g)
            with torch.no_grad():
                r1 = ratio.r1_penalty(disc, x_r1, torch.full((len(x_r1),), s), None, generator=g)
            rows.append({"sigma": s, "logit_train": float(lt.mean()), "logit_test": float(lh.mean()),
                         "logit_gen": float(lg.mean()), "gap_train_gen": float(lt.mean() - lg.mean()),
                         "gap_test_gen": float(lh.mean() - lg.mean()), "gap_train_test": float(lt.mean() - lh.mean()),
                         "auc_train_test": auc(lt, lh), "auc_test_gen": auc(lh, lg), "r1": float(r1)})
    return {"checkpoint": checkpoint, "step": step, "seed": int(cfg.seed),
            "r1_gamma": float(cfg.discriminator.r1_gamma), "n_train": len(train), "n_test": len(test), "rows": rows}


def markdown(results: list[dict], sigmas=(0.1, 1.0)) -> list[str]:
    """One line per checkpoint: at each of ``sigmas``, the train-minus-held-out gap and AUC (memorising) beside the
    held-out-minus-generated gap and AUC (what the discriminator knows of digits as such)."""
    kinds = ("gap train-test", "AUC train>test", "gap test-gen", "AUC test>gen")
    head = ["run", "step", "r1_gamma"] + [f"{k} @ sigma {s:g}" for s in sigmas for k in kinds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        by = {row["sigma"]: row for row in r["rows"]}
        cells = [r["checkpoint"].split("/checkpoints")[0].removeprefix("runs/"), str(r["step"]), f"{r['r1_gamma']:g}"]
        for s in sigmas:
            row = by[s]
            cells += [f"{row['gap_train_test']:.2f}", f"{row['auc_train_test']:.2f}", f"{row['gap_test_gen']:.2f}",
                      f"{row['auc_test_gen']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="checkpoint folders (<run>/checkpoints/step-N)")
    ap.add_argument("--out", required=True, help="JSON file of every checkpoint's rows (and a .md table beside it)")
    args = ap.parse_args(argv)
    results = []
    for ck in args.checkpoints:
        r = probe(ck)
        results.append(r)
        print(f"{ck} (step {r['step']}):")
        print("  sigma  gap(train-gen) gap(test-gen) gap(train-test) AUC(train>test) AUC(test>gen)  R1")
        for row in r["rows"]:
            print(f"  {row['sigma']:5.2f}  {row['gap_train_gen']:13.3f} {row['gap_test_gen']:13.3f} "
                  f"{row['gap_train_test']:15.3f} {row['auc_train_test']:15.3f} {row['auc_test_gen']:13.3f}  "
                  f"{row['r1']:.2e}")
    write_json(args.out, {"command": "python bench/digits_disc_probe.py " + " ".join(sys.argv[1:] if argv is None
                                                                                       else argv),
                          "probes": results})
    write_markdown(os.path.splitext(args.out)[0] + ".md", markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
