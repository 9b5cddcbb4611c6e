"""Smoke test of bench/sd15_step.py: --small (tiny random SD components, CPU) writes the JSON it promises, every
variant is timed, and the largest-batch search survives out-of-memory steps on the same Distiller. No timing is
checked (GPU numbers belong in bench/results)."""
from __future__ import annotations

import importlib
import json
import math
import os
import sys

import pytest
import torch

from trainer_utils import reset_accelerate

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


@pytest.fixture(scope="module")
def sd15():
    sys.path.insert(0, BENCH)
    threads = torch.get_num_threads()
    try:
        yield importlib.import_module("sd15_step")
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(BENCH)
        reset_accelerate()


def _finite_positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_sd15_step_small(sd15, tmp_path, monkeypatch):
    from fdistill.methods.distill import Distiller

    step = Distiller.step

    def step_that_runs_out_of_memory_above_2(self, i):  # what a GPU does when the batch is too large
        if self.ctx.local_batch > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return step(self, i)

    monkeypatch.setattr(Distiller, "step", step_that_runs_out_of_memory_above_2)
    out = tmp_path / "sd15.json"
    sd15.main(["--small", "--device", "cpu", "--strict", "--max-batch", "--workdir", str(tmp_path / "work"),
               "--out", str(out)])
    res = json.loads(out.read_text())
    for key in ("device_name", "torch", "batch", "dtype", "date", "git_commit", "resolution", "latent"):
        assert res[key] not in (None, "")
    assert res["batch"] == 2 and res["resolution"] == 16 and res["latent"] == 8
    assert res["settings"]["preset_fake_updates"] == 10 and res["settings"]["fake_updates"] == 1
    assert all(_finite_positive(res["params"][k]) for k in ("unet", "text_encoder", "vae", "total"))
    assert list(res["variants"]) == ["ckpt", "no_ckpt", "lora"]
    for name, v in res["variants"].items():
        assert "error" not in v, name
        assert _finite_positive(v["iteration"]["median_ms"]) and _finite_positive(v["images_per_s"])
        assert all(_finite_positive(t) for t in v["iteration"]["all_ms"])
        assert math.isfinite(v["extrapolation"]["projected_iteration_ms"])
        assert sum(v["skipped_updates"].values()) == 0
        m = v["max_batch"]
        assert m["largest"] == 2 and m["first_failing"] == 3, m["trials"]
        assert m["trials"] == [[2, True], [4, False], [3, False]]
    full, lora = res["variants"]["ckpt"], res["variants"]["lora"]
    assert full["settings"] == {"gradient_checkpointing": True, "lora_rank": 0}
    assert not res["variants"]["no_ckpt"]["settings"]["gradient_checkpointing"]
    assert lora["settings"]["lora_rank"] == 64
    assert 0 < lora["trainable_params"]["generator"] < full["trainable_params"]["generator"] == res["params"]["unet"]
    # the pipeline directory is reused by a second run in the same work dir
    again = sd15.main(["--small", "--device", "cpu", "--build-only", "--workdir", str(tmp_path / "work"),
                       "--out", str(tmp_path / "again.json")])
    assert any("reusing" in msg for _, msg in again["stages"])
    assert again["params"] == res["params"]


def test_sd15_configs_are_sd15_sized(sd15):
    """The full-size configs give SD1.5's parameter counts (built on the meta device: no memory, no time)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        counts = {"unet": sd15.n_params(UNet2DConditionModel(**sd15.SD15_UNET)),
                  "text_encoder": sd15.n_params(CLIPTextModel(CLIPTextConfig(**sd15.SD15_TEXT))),
                  "vae": sd15.n_params(AutoencoderKL(**sd15.SD15_VAE))}
    assert counts == sd15.SD15_PARAMS
    assert sd15.check_sd15_params(counts)


def test_sd15_step_records_out_of_memory_and_searches_below(sd15, tmp_path, monkeypatch):
    from fdistill.methods.distill import Distiller

    step = Distiller.step

    def step_that_fits_batch_1_only(self, i):
        if self.ctx.local_batch > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return step(self, i)

    monkeypatch.setattr(Distiller, "step", step_that_fits_batch_1_only)
    out = tmp_path / "sd15.json"
    res = sd15.main(["--small", "--device", "cpu", "--variants", "no_ckpt", "--batch", "2", "--max-batch",
                     "--workdir", str(tmp_path / "work"), "--out", str(out)])
    v = json.loads(out.read_text())["variants"]["no_ckpt"]
    assert v["error"] == "out of memory" and "iteration" not in v
    assert v["max_batch"]["largest"] == 1 and v["max_batch"]["first_failing"] == 2
    assert any("does not fit" in n for n in res["notes"])
