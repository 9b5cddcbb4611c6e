"""The training loop runs methods (fdistill.methods): one found by name, one of one's own by module:Class, each
getting the loop's learning-rate schedule and warm-up, EMA, NaN-step skipping, checkpoints and exact resume without
implementing them (tests/method_example.py)."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from trainer_utils import reset_accelerate

from fdistill.config import ConfigError, load_config
from fdistill.methods import Method, available, method_class
from fdistill.optim import lr_scale
from fdistill.run import run

TASK = "method_example:MeanMatching"


def _cfg(out, *extra):
    return load_config(None, [f"out_dir={out}", f"task={TASK}", "teacher.preset=ring8", "train.steps=40",
                              "train.lr=0.2", "train.warmup_steps=5", "train.lr_schedule=cosine", "train.ema=[0.9]",
                              "train.batch_size=64", "train.log_every=1", "train.sample_every=100000",
                              "train.checkpoint_every=10", "train.keep_checkpoints=4", "log.trackers=[]", "log.progress=false", *extra])


def _run(cfg):
    reset_accelerate()
    return run(cfg, method_class(cfg.task))


def test_the_package_methods_are_found_by_name():
    assert available() == ["distill", "regress", "teacher"]
    for task in available():
        cls = method_class(task)
        assert issubclass(cls, Method) and cls.phases and all(callable(getattr(cls, p)) for p in cls.phases)
    assert method_class("distill").phases == ("fake_update", "disc_update", "generator_update")


def test_a_bad_task_is_refused_with_what_is_accepted(tmp_path):
    with pytest.raises(ConfigError, match=r"task='distil' is not accepted; valid: \['distill', 'regress', 'teacher'\]"):
        load_config(None, [f"out_dir={tmp_path}", "task=distil"])
    with pytest.raises(ValueError, match="has no attribute 'Nope'"):
        method_class("method_example:Nope")
    with pytest.raises(ConfigError, match="has no attribute 'Nope'"):
        load_config(None, [f"out_dir={tmp_path}", "task=method_example:Nope"])
    # a method's own options: declared ones are filled and typed, others refused with the accepted ones listed
    assert load_config(None, [f"out_dir={tmp_path}", f"task={TASK}"]).method == {"start": 3.0}
    assert load_config(None, [f"out_dir={tmp_path}", f"task={TASK}", "method.start=1"]).method.start == 1.0
    with pytest.raises(ConfigError, match=r"takes no option method.strat; it accepts: method.start"):
        load_config(None, [f"out_dir={tmp_path}", f"task={TASK}", "method.strat=1"])
    with pytest.raises(ConfigError, match="wrong type for method.start"):
        load_config(None, [f"out_dir={tmp_path}", f"task={TASK}", "method.start=far"])
    with pytest.raises(ConfigError, match="task=distill takes no method options; got method.start"):
        load_config(None, [f"out_dir={tmp_path}", "method.start=1"])
    with pytest.raises(ValueError, match="not a subclass of fdistill.methods.Method"):
        method_class("method_example:Point")


def test_a_method_of_ones_own_gets_schedule_ema_skipping_and_exact_resume(tmp_path):
    cfg = _cfg(tmp_path / "a")
    point = _run(cfg)["point"]
    rows = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 41))
    for r in rows:  # the loop set the learning rate: warm-up over 5 steps, then cosine to 0 at step 40
        assert math.isclose(r["lr"], 0.2 * lr_scale(r["step"] - 1, cfg.train), rel_tol=1e-6)
        assert r["skipped_point_count"] == 0
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert torch.tensor(point).norm() < 0.5  # the EMA point reached ring8's mean (0) from (3, 3)
    # interrupted after the checkpoint at step 20 (the later ones lost), resumed: the same EMA point, bit for bit
    for late in ("step-30", "step-40"):
        shutil.rmtree(tmp_path / "a" / "checkpoints" / late)
    assert _run(_cfg(tmp_path / "a", "resume=latest"))["point"] == point
    resumed = [json.loads(line)["step"] for line in open(tmp_path / "a" / "metrics.jsonl")][40:]
    assert resumed == list(range(21, 41))


def test_a_nan_update_of_a_method_of_ones_own_is_skipped_and_counted(tmp_path):
    from method_example import MeanMatching

    from fdistill.run import RunContext, train_step

    reset_accelerate()
    cfg = _cfg(tmp_path)
    job = MeanMatching(cfg, RunContext(cfg))
    before = job.point.x.detach().clone()
    job.source.batch = lambda step, b: (torch.full((b, 2), float("nan")), None)
    stats = train_step(job.ctx, job, 0)
    assert float(stats["skipped_point_count"]) == 1 and torch.equal(job.point.x, before)


def test_the_walk_through_in_architecture_md_runs_as_written(tmp_path, monkeypatch):
    """docs/architecture.md "Adding a method": its module, executed as fdistill/methods/mean_matching.py would be (with
    the example's Point), trains through the loop: the walk-through is checked against the code as it now is."""
    import os
    import re

    from method_example import Point

    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "architecture.md")).read()
    code = re.search(r"\*\*1\. `fdistill/methods/mean_matching\.py`\*\*.*?```python\n(.*?)```", doc, re.S)[1]
    import sys
    import types

    module = types.ModuleType("fdistill.methods.mean_matching")
    module.__package__, module.Point = "fdistill.methods", Point
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up there
    exec(compile(code, "docs/architecture.md (mean_matching.py)", "exec"), module.__dict__)
    cls = module.METHOD
    assert issubclass(cls, Method) and cls.phases == ("point_update",)
    reset_accelerate()
    run(_cfg(tmp_path), cls)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert len(rows) == 40 and rows[-1]["loss"] < rows[0]["loss"] and all(r["skipped_point_count"] == 0 for r in rows)
