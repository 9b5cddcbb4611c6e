"""Post-hoc averaging of a digits student's exported generators: the uniform average of the weights of its snapshots
in a step window, scored like every student (FD-digits, precision / recall, class TV, FD-check) — what a longer EMA
would have given, measured without training again.

    python bench/digits_snapshot_average.py --sweep runs/pilot_fu5 --run datafree-fkl-s1 --from-step 1600 \\
        --to-step 2400

Snapshots are ``SWEEP/runs/RUN/gen_snapshots/step-N``, the run's ``generator/`` export after each
``bench/digits_students.py --steps N --keep-snapshots``. The averaged pipeline is written to ``.../gen_snapshots/avg-A-B`` and its
scores to ``SWEEP/results/RUN@avgA-B.json``.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import digits_score  # noqa: E402
from common import write_json  # noqa: E402

WEIGHTS = os.path.join("generator", "diffusion_pytorch_model.safetensors")


def snapshots(folder: str, lo: int, hi: int) -> list[tuple[int, str]]:
    """``(step, path)`` of the snapshots in ``folder`` with ``lo <= step <= hi``, by step."""
    found = []
    for path in glob.glob(os.path.join(folder, "step-*")):
        m = re.fullmatch(r"step-(\d+)", os.path.basename(path))
        if m and lo <= int(m[1]) <= hi:
            found.append((int(m[1]), path))
    return sorted(found)


def average_pipeline(paths: list[str], out: str) -> str:
    """A copy of the last pipeline in ``paths`` whose generator weights are the mean of all of theirs."""
    from safetensors.torch import load_file, save_file

    states = [load_file(os.path.join(p, WEIGHTS)) for p in paths]
    mean = {k: sum(s[k].double() for s in states).div(len(states)).to(states[0][k].dtype) for k in states[0]}
    if os.path.isdir(out):
        shutil.rmtree(out)
    shutil.copytree(paths[-1], out)
    save_file(mean, os.path.join(out, WEIGHTS))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", required=True, help="OUT folder of bench/digits_students.py")
    p.add_argument("--run", required=True, help="run name, e.g. datafree-fkl-s1")
    p.add_argument("--from-step", type=int, required=True)
    p.add_argument("--to-step", type=int, required=True)
    p.add_argument("--num-samples", type=int, default=2000)
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--classifier-steps", type=int, default=1500)
    a = p.parse_args(argv)

    import fdistill

    folder = os.path.join(a.sweep, "runs", a.run, "gen_snapshots")
    found = snapshots(folder, a.from_step, a.to_step)
    if not found:
        raise SystemExit(f"no snapshot with step in [{a.from_step}, {a.to_step}] in {folder}")
    tag = f"avg{found[0][0]}-{found[-1][0]}"
    gen = fdistill.load_generator(average_pipeline([p for _, p in found], os.path.join(folder, tag)))
    scores = digits_score.DigitsScorer(a.sweep, a.classifier_steps, seed=0).score(gen, a.num_samples, a.sample_seed)
    scores.update(nfe=1, snapshots=[s for s, _ in found])
    write_json(os.path.join(a.sweep, "results", f"{a.run}@{tag}.json"), scores)
    print(f"{a.run} {tag} ({len(found)} snapshots): FD-digits {scores['FD-digits']:.2f}, class TV "
          f"{scores['class_tv']:.3f}, precision {scores['precision']:.3f}, recall {scores['recall']:.3f}")
    return scores


if __name__ == "__main__":
    main()
