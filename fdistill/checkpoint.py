"""Atomic checkpoints: ``checkpoints/step-N/`` = accelerate ``save_state`` + our ``trainer_state.pt``.

A checkpoint is written into a temporary directory and renamed into place, so a crash never leaves a half-written
``step-N``. ``latest_checkpoint`` only ever sees complete ones.
"""
from __future__ import annotations

import os
import re
import shutil

import torch

_STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.pt"


def list_checkpoints(root: str) -> list[tuple[int, str]]:
    """Complete checkpoints under ``root`` as ``(step, path)``, oldest first."""
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _STEP_DIR.match(name)
        path = os.path.join(root, name)
        if m and os.path.isfile(os.path.join(path, STATE_FILE)):
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(root: str) -> str | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def resolve_resume(resume: str, out_dir: str) -> str | None:
    """``""`` -> None; ``latest`` -> newest checkpoint in ``out_dir/checkpoints`` (None if there is none yet);
    a path -> that checkpoint (error naming the path if it is not a complete checkpoint)."""
    if not resume:
        return None
    if resume == "latest":
        return latest_checkpoint(os.path.join(out_dir, "checkpoints"))
    if not os.path.isfile(os.path.join(resume, STATE_FILE)):
        raise FileNotFoundError(f"resume={resume!r}: no complete checkpoint there (expected {STATE_FILE} in it); "
                                f"checkpoints are in {os.path.join(out_dir, 'checkpoints')!r}")
    return resume


def save_checkpoint(accelerator, root: str, step: int, state: dict, keep: int = 2) -> str:
    """Write ``root/step-{step}`` atomically (all processes call it; the main process renames) and keep the newest
    ``keep`` checkpoints."""
    final = os.path.join(root, f"step-{step}")
    tmp = os.path.join(root, f".tmp-step-{step}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()  # every rank has written its files (random_states_i.pkl, shards) before the rename
    if accelerator.is_main_process:
        torch.save(state, os.path.join(tmp, STATE_FILE + ".part"))
        os.replace(os.path.join(tmp, STATE_FILE + ".part"), os.path.join(tmp, STATE_FILE))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in list_checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str) -> dict:
    accelerator.load_state(path)
    return torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=False)
