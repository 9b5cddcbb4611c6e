"""How far a data-free run's teacher pool (``data.kind=teacher``: ``<run>/teacher_pool.pt``) is from the real digits,
as a whole and in disjoint chunks of a few sizes: FD-digits (mean ± std over the chunks) and the class TV (MATH §7).

The chunks are independent draws of the same teacher, so their spread is what sampling alone does to FD-digits at
that sample count — the noise of a score on ``--num-samples`` samples — and the whole pool against its first 4096
says how much a small pool misrepresents its teacher (the discriminator of a data-free run sees only the pool).

    python bench/digits_pool_fd.py --work runs/pilot_fu5_ema998 --chunks 2000 4096 8192 \\
        --out bench/results/digits_pool_fd runs/pilot_pool32k/runs/datafree-fkl-s2/teacher_pool.pt ...

``--work`` holds the FD-digits classifier and the real digits' PNGs (``bench/digits_score.py``; the ones that scored
the students, so the numbers share their scale); the pool's images take the students' path (PNGs read by clean-fid).
Writes ``--out``.json and ``--out``.md.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from common import write_json, write_markdown  # noqa: E402
from digits_students import mean_std  # noqa: E402


def pool_features(x, scorer):
    """FD-digits features of images ``x`` in [-1, 1], ``(N, 1, H, W)``, through the path the students' scores take:
    8-bit PNGs (``eval.generate.save_pngs``) read back by clean-fid (``eval.fid.folder_features``), in a folder of
    their own in the scorer's work folder, removed afterwards."""
    import shutil
    import tempfile

    from eval.fid import folder_features
    from eval.generate import save_pngs

    folder = tempfile.mkdtemp(prefix="pool-", dir=scorer.work)
    try:
        for lo in range(0, len(x), 4096):
            save_pngs(x[lo:lo + 4096], folder, lo)
        return folder_features(folder, scorer.fx, 256, 0, "cpu", verbose=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def chunk_scores(feats, ref, model, size: int) -> dict:
    """FD-digits and class TV of every disjoint chunk of ``size`` rows of ``feats`` against the reference."""
    from eval.digits_classifier import class_histogram, class_tv
    from eval.fid import frechet_distance
    from eval.stats import feature_stats

    ref_hist = class_histogram(ref.feats, model)
    fds, tvs = [], []
    for lo in range(0, len(feats) - size + 1, size):
        mu, sigma = feature_stats(feats[lo:lo + size])
        fds.append(frechet_distance(mu, sigma, ref.mu, ref.sigma))
        tvs.append(class_tv(class_histogram(feats[lo:lo + size], model), ref_hist))
    fd, fd_std = mean_std(fds)
    tv, tv_std = mean_std(tvs)
    return {"size": size, "chunks": len(fds), "FD-digits": fd, "FD-digits_std": fd_std, "class_tv": tv,
            "class_tv_std": tv_std, "fd_values": [float(v) for v in fds]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pools", nargs="+", help="teacher_pool.pt files")
    p.add_argument("--work", required=True, help="folder with the FD-digits classifier and the digits PNGs")
    p.add_argument("--chunks", type=int, nargs="+", default=[2000, 4096, 8192])
    p.add_argument("--out", required=True, help="path without extension for the .json and .md")
    p.add_argument("--classifier-steps", type=int, default=1500)
    a = p.parse_args(argv)
    import torch

    import digits_score

    scorer = digits_score.DigitsScorer(a.work, a.classifier_steps, seed=0, check=False)
    rows = []
    for path in a.pools:
        x = torch.load(path, map_location="cpu", weights_only=True)["x"]
        feats = pool_features(x, scorer)
        row = {"pool": path, "size": len(x), "whole": chunk_scores(feats, scorer.ref, scorer.model, len(x))}
        row["chunks"] = [chunk_scores(feats, scorer.ref, scorer.model, s) for s in a.chunks if s < len(x)]
        rows.append(row)
        print(f"{path}: {len(x)} samples, FD-digits {row['whole']['FD-digits']:.3f}; "
              + ", ".join(f"{c['size']}: {c['FD-digits']:.2f} ± {c['FD-digits_std']:.2f} ({c['chunks']})"
                          for c in row["chunks"]), flush=True)
    write_json(a.out + ".json", {"rows": rows, "work": a.work})
    lines = ["| pool | samples | FD-digits (whole) | class TV (whole) | chunks: size, FD-digits mean ± std (count) |",
             "|---|---|---|---|---|"]
    for r in rows:
        chunks = "; ".join(f"{c['size']}: {c['FD-digits']:.2f} ± {c['FD-digits_std']:.2f} ({c['chunks']})"
                           for c in r["chunks"])
        lines.append(f"| {r['pool']} | {r['size']} | {r['whole']['FD-digits']:.2f} | {r['whole']['class_tv']:.3f} | "
                     f"{chunks or '-'} |")
    write_markdown(a.out + ".md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
