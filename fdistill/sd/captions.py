"""Prompt lists and captioned image sets.

``read_captions(path)`` accepts

- a text file: one prompt per non-empty line (no images);
- a JSONL file (``.jsonl``): one object per line with a ``caption`` or ``text`` field and, optionally, the image in
  ``file_name``, ``image`` or ``image_path`` (relative to the file's folder);
- a folder: every image (png, jpg, jpeg, webp, bmp; recursively) with a ``.txt`` of the same name beside it; each
  non-empty line of that file is one caption of the image (COCO has five). A ``metadata.jsonl`` in the folder is
  read as the JSONL above instead. Images without a caption file are left out.

The order is deterministic (sorted paths, file order), so prompt indices are stable across runs and processes.
"""
from __future__ import annotations

import json
import os
from typing import NamedTuple

from ..data import IMAGE_EXTENSIONS


class Caption(NamedTuple):
    image: str | None  # absolute path, or None for a prompt without an image
    text: str


def _clean(text: str) -> str:
    return " ".join(text.split())


def _read_jsonl(path: str) -> list[Caption]:
    root = os.path.dirname(os.path.abspath(path))
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
            text = obj.get("caption", obj.get("text")) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise ValueError(f"{path}:{n}: expected an object with a 'caption' or 'text' string")
            image = next((obj[k] for k in ("file_name", "image", "image_path") if isinstance(obj.get(k), str)), None)
            out.append(Caption(None if image is None else os.path.join(root, image), _clean(text)))
    return out


def _read_folder(root: str) -> list[Caption]:
    meta = os.path.join(root, "metadata.jsonl")
    if os.path.isfile(meta):
        return _read_jsonl(meta)
    out = []
    images = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                    if f.lower().endswith(IMAGE_EXTENSIONS))
    for image in images:
        txt = os.path.splitext(image)[0] + ".txt"
        if os.path.isfile(txt):
            with open(txt, encoding="utf-8") as fh:
                out += [Caption(image, _clean(line)) for line in fh if line.strip()]
    return out


def read_captions(path: str) -> list[Caption]:
    """``[Caption(image, text), ...]`` from a text file, a JSONL file or a captions folder (see the module doc)."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        found = _read_folder(path)
    elif os.path.isfile(path):
        if path.lower().endswith(".jsonl"):
            found = _read_jsonl(path)
        else:
            with open(path, encoding="utf-8") as fh:
                found = [Caption(None, _clean(line)) for line in fh if line.strip()]
    else:
        raise FileNotFoundError(f"no prompts at {path!r}: expected a text file (one prompt a line), a JSONL file or a "
                                "folder of images with .txt captions")
    if not found:
        raise ValueError(f"no prompts found in {path!r}")
    return found


def read_prompts(path: str) -> list[str]:
    """The prompts of ``read_captions(path)``, in order."""
    return [c.text for c in read_captions(path)]
