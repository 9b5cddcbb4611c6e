"""Scores of a digits model (MATH §7), shared by the digits bench scripts: FD-digits, precision / recall (k = 3) and
the class histogram's TV against the real digits, on images written as PNGs and read back through clean-fid (the path
``python -m eval.fid`` takes), so the numbers are the CLI's."""
from __future__ import annotations

import os
import shutil
import time


def reference(work: str, classifier_steps: int = 1500, seed: int = 0):
    """``(extractor, classifier, reference)``: the FD-digits feature network (trained once into ``work/classifier``)
    and the 1797 real digits' features (``work/digits_png``)."""
    from eval.digits_classifier import export_images, load_classifier, save_classifier, train_classifier
    from eval.features import build_features
    from eval.fid import reference_from_folder

    clf, png = os.path.join(work, "classifier"), os.path.join(work, "digits_png")
    if not os.path.isfile(os.path.join(clf, "model.safetensors")):
        model, info = train_classifier(steps=classifier_steps, seed=seed, progress=False)
        save_classifier(model, clf, info)
    if not os.path.isdir(png) or not os.listdir(png):
        export_images(png)
    fx = build_features("digits", "clean", "cpu", digits_classifier=clf)
    model, _ = load_classifier(clf)
    return fx, model, reference_from_folder(png, fx, batch_size=256, num_workers=0, device="cpu", verbose=False)


def score(gen, fx, model, ref, num_samples: int, seed: int, work: str) -> dict:
    """FD-digits, precision, recall, class TV and the class histogram of ``num_samples`` samples of ``gen`` (any
    object with ``sample(n, seed=...)``; the samples go through ``work/samples``, removed afterwards)."""
    from eval.digits_classifier import class_histogram, class_tv
    from eval.fid import folder_features, score_features
    from eval.generate import generate_to_folder

    folder = os.path.join(work, "samples")
    shutil.rmtree(folder, ignore_errors=True)
    t = time.time()
    generate_to_folder(gen, folder, num_samples, seed, 500, progress=False)
    feats = folder_features(folder, fx, 256, 0, "cpu", verbose=False)
    out = score_features(feats, ref, fx, with_pr=True, pr_num=None, k=3, seed=seed)
    hist = class_histogram(feats, model)
    out.update(class_tv=class_tv(hist, class_histogram(ref.feats, model)), class_histogram=hist.round(4).tolist(),
               n=num_samples, eval_wall_s=round(time.time() - t, 1))
    shutil.rmtree(folder, ignore_errors=True)
    return out
