"""Atomic checkpoints: ``checkpoints/step-N/`` = accelerate ``save_state`` + our ``trainer_state.pt``.

A checkpoint is written into a temporary directory, every file in it flushed to disk (fsync), and renamed into place,
so a crash never leaves a half-written ``step-N``. ``latest_checkpoint`` only ever sees complete ones. Our own state
holds plain tensors, numbers and strings and is read with ``weights_only=True``: a checkpoint from elsewhere cannot
run code on ``--resume``. A corrupt or truncated checkpoint is a ``CheckpointError`` naming the file, and
``resume=latest`` falls back to the newest one that loads.
"""
from __future__ import annotations

import os
import re
import shutil
import warnings

import torch

_STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded (corrupt, truncated, or holding more than plain tensors and numbers)."""


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


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    """Flush every file below ``root`` and the directories that hold them to disk."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            _fsync(os.path.join(dirpath, name))
        _fsync(dirpath)


def save_checkpoint(accelerator, root: str, step: int, state: dict, keep: int = 2) -> str:
    """Write ``root/step-{step}`` atomically (all processes call it; the main process flushes and renames) and keep
    the newest ``keep`` checkpoints."""
    final = os.path.join(root, f"step-{step}")
    tmp = os.path.join(root, f".tmp-step-{step}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()  # every rank has written its files (random_states_i.pkl, shards) before the rename
    if accelerator.is_main_process:
        torch.save(state, os.path.join(tmp, STATE_FILE))
        _fsync_tree(tmp)  # on disk before the rename makes it a checkpoint
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync(root)
        for _, old in list_checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_state(path: str, mmap: bool = False) -> dict:
    """Our ``trainer_state.pt`` of the checkpoint at ``path``, read with ``weights_only=True`` (``mmap``: tensors
    memory-mapped, read only where used)."""
    file = os.path.join(path, STATE_FILE)
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated zip, bad pickle, or a non-plain object refused by weights_only
        raise CheckpointError(f"{file}: cannot be read as a trainer state ({type(e).__name__}: {str(e)[:300]}). It "
                              f"is corrupt or truncated, or holds objects other than tensors, numbers and strings "
                              f"(only those are loaded, so that a checkpoint cannot run code)") from e


def resumed_state(resume: str, out_dir: str) -> dict | None:
    """Our state of the checkpoint that ``resume`` will continue from (``latest``: the newest whose state reads), read
    memory-mapped and before any model is built; None for a fresh run. For settings a run keeps once chosen."""
    if resume == "latest":
        found = _newest_that_loads(os.path.join(out_dir, "checkpoints"), lambda path: read_state(path, mmap=True))
        return None if found is None else found[1]
    path = resolve_resume(resume, out_dir)
    return None if path is None else read_state(path, mmap=True)


def _newest_that_loads(root: str, load, on_error=lambda e: None) -> tuple[str, object] | None:
    """``(path, load(path))`` of the newest checkpoint under ``root`` that ``load`` reads without a ``CheckpointError``
    (each one raised goes to ``on_error``); None if none does."""
    for _, path in reversed(list_checkpoints(root)):
        try:
            return path, load(path)
        except CheckpointError as e:
            on_error(e)
    return None


def load_checkpoint(accelerator, path: str) -> dict:
    """Load the checkpoint at ``path`` into the prepared models and optimisers; return our state. Our state file is
    read first, so a corrupt one fails before anything is loaded."""
    state = read_state(path)
    try:
        accelerator.load_state(path)
    except Exception as e:
        raise CheckpointError(f"{path}: accelerate could not load the model / optimiser state in it "
                              f"({type(e).__name__}: {str(e)[:300]}); it is corrupt or truncated") from e
    return state


def load_latest(accelerator, root: str) -> tuple[str, dict] | None:
    """The newest checkpoint under ``root`` that loads, as ``(path, state)``; a corrupt newer one is skipped with a
    warning naming it. None if there is none; ``CheckpointError`` if there are some and none loads."""
    failed = []

    def skip(e):
        failed.append(e)
        warnings.warn(f"resume=latest: skipping a checkpoint that does not load: {e}", stacklevel=3)

    loaded = _newest_that_loads(root, lambda path: load_checkpoint(accelerator, path), skip)
    if loaded is None and failed:
        raise CheckpointError(f"resume=latest: none of the {len(failed)} checkpoints in {root!r} loads (see the "
                              f"warnings above); start without resume or remove them")
    return loaded
