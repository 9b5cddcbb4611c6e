"""Keys of the caches a run writes (flow-map warm starts, teacher sample pools): a SHA-256 of everything that made
the cached thing — the state of the networks involved and the settings — so a changed teacher or setting makes a new
entry and never reuses a stale one."""
from __future__ import annotations

import hashlib
import json

import torch


def cache_key(*modules: torch.nn.Module, **settings) -> str:
    """32 hex digits over the modules' state (names and the bytes of every tensor, parameters and buffers) and the
    JSON of ``settings``."""
    h = hashlib.sha256()
    for module in modules:
        for name, t in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def shared_cache_path(path: str, shared_dir: str | None, key: str) -> str:
    """Where a keyed cache lives: ``path`` (the run's own file), or with ``shared_dir`` the file of ``key`` in that
    folder, ``<shared_dir>/<name>-<key><ext>`` (``name``, ``ext`` from ``path``). Runs whose caches would be equal
    (one key) share one file; another key has a file of its own, so a shared folder never hands out a stale cache.
    ``~`` is expanded; a relative ``shared_dir`` is taken from the working directory, like every path in a config."""
    import os

    if not shared_dir:
        return path
    name, ext = os.path.splitext(os.path.basename(path))
    return os.path.join(os.path.expanduser(shared_dir), f"{name}-{key}{ext}")


def load_keyed(path: str, key) -> dict | None:
    """The dict saved at ``path`` (``weights_only``) if its ``"key"`` is ``key``; None otherwise, with a warning when
    a file is there but unreadable or made by other settings (the caller then makes it again)."""
    import os
    import warnings

    if not os.path.isfile(path):
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, or not ours
        warnings.warn(f"{path}: unreadable ({type(e).__name__}); making it again", stacklevel=3)
        return None
    if isinstance(saved, dict) and saved.get("key") == key:
        return saved
    warnings.warn(f"{path}: made by another teacher or other settings; making it again", stacklevel=3)
    return None


def save_keyed(path: str, key: str, payload: dict) -> None:
    """Write ``{"key": key, **payload}`` to ``path`` atomically (a temporary name, then a rename), making its folder:
    what ``load_keyed`` reads back."""
    import os

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.part{os.getpid()}"
    torch.save({"key": key, **payload}, tmp)
    os.replace(tmp, path)


def build_cached(cache_path: str, key, n_chunks: int, make_chunk, rank: int = 0, world: int = 1,
                 progress: bool = False, desc: str = "") -> dict:
    """``{name: tensor}``: the chunks ``make_chunk(c) -> {name: cpu tensor}`` for ``c < n_chunks`` concatenated in
    order, read from ``cache_path`` when its key matches (``load_keyed``), else built and cached (``save_keyed``,
    payload ``{"data": ...}``). With ``world`` processes (``torch.distributed`` initialised) process ``rank`` makes
    chunks ``rank``, ``rank + world``, ...; they meet through part files. A chunk seeded by its own index makes the
    result independent of the number of processes."""
    import os

    from tqdm.auto import tqdm

    saved = load_keyed(cache_path, key)
    if saved is not None:
        return saved["data"]
    mine = {c: make_chunk(c) for c in tqdm(range(rank, n_chunks, world), desc=desc, disable=not progress,
                                           leave=False)}
    chunks = gather_parts(cache_path, mine, n_chunks, rank, world)
    data = {name: torch.cat([ch[name] for ch in chunks]) for name in chunks[0]}
    if rank == 0:
        save_keyed(os.path.abspath(cache_path), key, {"data": data})
    barrier(world)  # nobody reads a part file any more, and the cache is written
    if world > 1:
        os.remove(f"{cache_path}.part{rank}")
    return data


def _dist(world: int):
    d = torch.distributed
    if world <= 1:
        return None
    if not (d.is_available() and d.is_initialized()):
        raise RuntimeError(f"{world} processes but torch.distributed is not initialised")
    return d


def barrier(world: int) -> None:
    """``torch.distributed.barrier()`` when there are several processes."""
    d = _dist(world)
    if d is not None:
        d.barrier()


def gather_parts(path: str, mine: dict, n: int, rank: int, world: int) -> list:
    """Parts ``0..n-1`` in order, each made by one of ``world`` processes: this process's ``{index: part}`` are
    written to ``<path>.part<rank>`` and the others' read back (the caller removes its file after a ``barrier``)."""
    d = _dist(world)
    if d is not None:
        torch.save(mine, f"{path}.part{rank}")
        d.barrier()
        mine = dict(mine)
        for r in range(world):
            if r != rank:
                mine.update(torch.load(f"{path}.part{r}", map_location="cpu", weights_only=True))
    return [mine[i] for i in range(n)]
