"""Small, fast training configs for the trainer tests (2-D mixture teacher, tiny MLPs)."""
from __future__ import annotations

import torch

from fdistill.config import load_config

FAST = [
    "teacher.preset=ring8",
    "network.hidden=64",
    "network.depth=2",
    "network.fit_steps=150",
    "network.flow_fit_steps=0",      # the trainer's own dynamics from the denoiser fit (the recipe's warm start off)
    "network.fake_score=copy",       # a fake score that starts far from a point-mass generator's score; the recipe's
                                     # residual one (MATH R2): tests/test_residual_fake.py and the recipe test
    "objective.regression_weight=0",  # the trainer's own dynamics (the mixture recipe's regression term, MATH R1b,
    "objective.regression_sigma=0",   # off; tests of it set it) and the sampler levels from before it
    "data.num_steps=18",
    "train.lr_schedule=constant",
    "train.betas=[0.0,0.999]",
    "train.batch_size=128",
    "train.lr=3e-4",
    "train.lr_fake=3e-4",
    "train.fake_updates=1",
    "train.log_every=5",
    "train.sample_every=100000",
    "train.eval_samples=4000",
    "log.trackers=[]",
    "log.progress=false",
]


def fast_config(out_dir, *overrides):
    return load_config(None, [f"out_dir={out_dir}", *FAST, *overrides])


def reset_accelerate():
    from fdistill.run import reset_accelerate_state

    reset_accelerate_state()


def run_distill(cfg):
    from fdistill.run import run
    from fdistill.methods.distill import Distiller

    from eval.gmm import gmm_metrics

    reset_accelerate()
    return run(cfg, Distiller, measures=gmm_metrics)


def generator_params(out_dir) -> dict[str, torch.Tensor]:
    """Weights of the exported EMA generator and of the newest checkpoint's raw generator."""
    import os

    from safetensors.torch import load_file

    from fdistill.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(os.path.join(out_dir, "checkpoints"))
    return load_file(os.path.join(ckpt, "model.safetensors"))
