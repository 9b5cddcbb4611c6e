"""``python -m superpose``: mixtures (presets and JSON) to a scatter plot, diffusers directories to an image grid."""
import json

from diffusers import DDPMScheduler
from PIL import Image

from fdistill.networks import DiffusersDenoiser
from superpose.__main__ import main

from test_superpose_pipeline import tiny_text_pipeline, tiny_unet


def test_compose_mixtures_writes_plot_and_stats(tmp_path):
    spec = tmp_path / "mine.json"
    spec.write_text(json.dumps({"means": [[2.5, 2.5], [0.0, 0.0]], "stds": [0.5, 0.4], "weights": [0.5, 0.5]}))
    out, stats = tmp_path / "and.png", tmp_path / "and.json"
    main(["compose", "left", str(spec), "--mode", "and", "--steps", "40", "--n", "300", "--out", str(out),
          "--json", str(stats)])
    s = json.loads(stats.read_text())
    assert Image.open(out).size[0] > 100
    assert s["solves"] == 300 * 39 and len(s["mean_exact_log_q"]) == 2 and s["share_equal_density"] > 0.8


def test_compose_unet_dirs_and_prompts_write_grids(tmp_path):
    sched = DDPMScheduler()
    for i in range(2):
        DiffusersDenoiser(tiny_unet(i), sched.alphas_cumprod).save_pretrained(str(tmp_path / f"m{i}"))
    grid = tmp_path / "grid.png"
    main(["compose", str(tmp_path / "m0"), str(tmp_path / "m1"), "--mode", "or", "--steps", "3", "--n", "4",
          "--out", str(grid)])
    assert Image.open(grid).size == (16, 16)
    tiny_text_pipeline(tmp_path).save_pretrained(tmp_path / "sd")
    main(["prompts", str(tmp_path / "sd"), "--prompt", "a cat", "--prompt", "a dog", "--mode", "and", "--steps", "3",
          "--n", "2", "--out", str(grid)])
    assert Image.open(grid).size == (32, 16)
