"""Feature spaces for Fréchet distance and precision/recall (MATH §7): Inception (FID) or the digits CNN (FD-digits).

A :class:`FeatureExtractor` is what clean-fid calls a ``custom_feat_extractor`` plus the per-image resizer it uses,
and the name under which its number is reported: "FID" only for Inception, "FD-digits" for the digits classifier.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

FEATURES = ("inception", "digits")


@dataclass
class FeatureExtractor:
    """``fn``: images in [0, 255], ``(B, 3, H, W)`` -> ``(B, D)``; ``fn_resize``: clean-fid per-image resizer
    (``None``: clean-fid's resizer for ``mode``); ``model``: the network behind ``fn`` where a caller needs more of
    it than features (the digits classifier, whose class head gives the class histogram; ``None`` for Inception)."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    mode: str
    metric: str
    fn_resize: Callable | None = None
    meta: dict = field(default_factory=dict)
    model: torch.nn.Module | None = None

    @property
    def stats_tag(self) -> str:
        """Model part of clean-fid's statistics file names: ``""`` for Inception, ``"_digits"`` otherwise."""
        return "" if self.name == "inception" else f"_{self.name}"


def check_features(features: str = "inception", mode: str = "clean", inception: str | None = None,
                   digits_classifier: str | None = None, download: bool = False) -> None:
    """Fail early (before any generation) when the weights ``build_features`` needs are not on disk."""
    if features == "inception":
        from .inception import find_inception

        find_inception(mode, inception, download)
    elif features == "digits":
        import os

        from .digits_classifier import WEIGHTS_NAME, default_path, load_classifier

        if not os.path.isfile(os.path.join(digits_classifier or default_path(), WEIGHTS_NAME)):
            load_classifier(digits_classifier)  # raises with instructions
    else:
        raise ValueError(f"unknown features {features!r}; choose one of {FEATURES}")


def build_features(features: str = "inception", mode: str = "clean", device="cpu", inception: str | None = None,
                   digits_classifier: str | None = None, download: bool = False) -> FeatureExtractor:
    """The feature extractor named ``features`` on ``device``, from local weights only (unless ``download``)."""
    if features == "inception":
        from .inception import find_inception, inception_extractor

        path = find_inception(mode, inception, download)
        return FeatureExtractor("inception", inception_extractor(mode, device, path), mode, "FID",
                                meta={"weights": path})
    if features == "digits":
        from cleanfid.resize import make_resizer

        from .digits_classifier import DigitsFeatures, load_classifier

        model, config = load_classifier(digits_classifier, device)
        fx = DigitsFeatures(model)
        res = fx.resolution
        # clean-fid's own "clean" resizing (PIL bicubic on float pixels), to the classifier's resolution.
        resize = make_resizer("PIL", False, "bicubic", (res, res))
        return FeatureExtractor("digits", fx, "clean", "FD-digits", fn_resize=resize,
                                meta={"classifier": config.get("sha256"), "resolution": res}, model=model)
    raise ValueError(f"unknown features {features!r}; choose one of {FEATURES}")
