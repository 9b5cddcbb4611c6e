"""One JSON line per evaluation (MATH §7 metrics): append to a results file, read JSON-lines files back."""
from __future__ import annotations

import json
import math
import os
import time


def result_record(metric: str, value: float, n: int | None = None, mode: str | None = None,
                  features: str | None = None, seed=None, checkpoint: str | None = None, **extra) -> dict:
    """``{"metric", "value", "n", "mode", "features", "seed", "checkpoint", "time", ...extra}``."""
    value = float(value)
    row = dict(metric=metric, value=value if math.isfinite(value) else None, n=n, mode=mode, features=features,
               seed=seed, checkpoint=checkpoint, time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    row.update({k: v for k, v in extra.items() if v is not None})
    return row


def append_results(path: str | None, rows) -> None:
    """Append each row of ``rows`` as one JSON line to ``path`` (created with its folder); no-op for ``None``."""
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def read_jsonl(path: str) -> list[dict]:
    """All JSON objects of a JSON-lines file (blank and unreadable lines are skipped, e.g. a torn last line)."""
    rows = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                rows.append(obj)
    return rows
