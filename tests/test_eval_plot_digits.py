"""Digits classifier (FD-digits features) and the metrics plot (MATH §7)."""
import json

import torch

from eval.digits_classifier import (DigitsFeatures, export_images, load_classifier, load_digits_tensor,
                                    save_classifier, train_classifier)
from eval.plot_metrics import collect, main as plot_main
from eval.results import append_results, read_jsonl, result_record


def test_digits_data_and_classifier_roundtrip(tmp_path):
    x, y = load_digits_tensor(16)
    assert x.shape == (1797, 1, 16, 16) and x.min() >= -1 and x.max() <= 1 and y.max() == 9
    model, info = train_classifier(steps=150, progress=False)
    assert info["test_accuracy"] > 0.85  # a few seconds of training already separates the classes
    save_classifier(model, str(tmp_path / "clf"), info)
    loaded, config = load_classifier(str(tmp_path / "clf"))
    assert config["test_accuracy"] == info["test_accuracy"] and config["architecture"]["resolution"] == 16
    pixels = ((x[:8] + 1) * 127.5).repeat(1, 3, 1, 1)  # what clean-fid hands over: RGB in [0, 255]
    feats = DigitsFeatures(loaded)(pixels)
    assert feats.shape == (8, 64)
    assert torch.allclose(feats, model.features(x[:8]).detach(), atol=1e-4)
    assert DigitsFeatures(loaded)(torch.nn.functional.interpolate(pixels, size=32)).shape == (8, 64)
    assert export_images(str(tmp_path / "png"), 16) == 1797


def test_plot_metrics_reads_runs_and_results(tmp_path):
    for name, slope in (("rkl", 1.0), ("fkl", 0.5)):
        run = tmp_path / name
        run.mkdir()
        with open(run / "metrics.jsonl", "w") as fh:
            for step in range(1, 6):
                fh.write(json.dumps({"step": step, "images_seen": 256 * step, "loss_g": slope / step}) + "\n")
            fh.write('{"step": 6, "images_se')  # a torn last line is skipped
        append_results(str(run / "results.jsonl"),
                       [result_record("FD-digits", 10 * slope / k, n=100, features="digits", seed=0,
                                      checkpoint=str(run), images_seen=256 * k) for k in (1, 3, 5)]
                       + [result_record("recall", 0.5 + 0.1 * k, n=100, images_seen=256 * k) for k in (1, 5)]
                       + [result_record("FD-digits", 1.0, n=100)])  # no images_seen: not plottable
    series = collect(str(tmp_path / "rkl"))
    assert series["FD-digits"] == [(256, 10.0), (768, 10 / 3), (1280, 2.0)]
    assert series["loss_g"][0] == (256, 1.0) and len(read_jsonl(str(tmp_path / "rkl" / "metrics.jsonl"))) == 5
    out = plot_main([str(tmp_path / "rkl"), str(tmp_path / "fkl"), "--out", str(tmp_path / "fig.png")])
    assert (tmp_path / "fig.png").stat().st_size > 1000 and out.endswith("fig.png")
    plot_main([str(tmp_path / "rkl" / "metrics.jsonl"), "--keys", "loss_g", "--out", str(tmp_path / "l.png")])
    assert (tmp_path / "l.png").exists()
