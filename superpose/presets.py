"""Analytic 2-D Gaussian-mixture models for the command and the demo, by name or from JSON.

A JSON model is ``{"means": [[x, y], ...], "stds": s | [s_k, ...], "weights": [w_k, ...]}`` (stds and weights
optional: 1 and equal).
"""
from __future__ import annotations

import json
import os

from fdistill import data
from fdistill.networks import GaussianMixture

PRESETS = {
    # three modes each; left/right share the centre, left/top share the centre and the top-left corner
    "left": {"means": [[-2.5, 2.5], [-2.5, -2.5], [0.0, 0.0]], "stds": 0.5},
    "right": {"means": [[2.5, 2.5], [2.5, -2.5], [0.0, 0.0]], "stds": 0.5},
    "top": {"means": [[-2.5, 2.5], [2.5, 2.5], [0.0, 0.0]], "stds": 0.5},
    "bottom": {"means": [[-2.5, -2.5], [2.5, -2.5], [0.0, 0.0]], "stds": 0.5},
}


def mixture_from_spec(spec: dict) -> GaussianMixture:
    """A ``GaussianMixture`` from ``{"means", "stds", "weights"}`` (``fdistill.data.mixture_from_spec``)."""
    if not hasattr(spec, "keys"):
        raise ValueError(f"a mixture spec is a mapping with 'means'; got {type(spec).__name__}")
    return data.mixture_from_spec(spec)


def is_mixture(name: str) -> bool:
    return name in PRESETS or (name.endswith(".json") and os.path.isfile(name))


def load_mixture(name: str) -> GaussianMixture:
    """A preset name (``left``, ``right``, ``top``, ``bottom``) or a JSON file."""
    if name in PRESETS:
        return mixture_from_spec(PRESETS[name])
    if name.endswith(".json") and os.path.isfile(name):
        with open(name) as fh:
            return mixture_from_spec(json.load(fh))
    raise ValueError(f"unknown mixture {name!r}: use a preset {sorted(PRESETS)} or a .json file")
