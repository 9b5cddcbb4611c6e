"""The training loop every method runs in: the accelerator, ``out_dir`` layout, optimiser updates with NaN-step
skipping, learning-rate schedule and warm-up, EMA, metrics, checkpoints, resume, time limits, progress.

A *method* (``fdistill.methods``: distribution matching, teacher pretraining, the probability-flow regression)
builds its networks and registers each optimiser with ``ctx.prepare(name, model, optimizer, base_lr)``, makes every
update through ``ctx.update(name, loss, model, optimizer)``, and supplies ``step(i) -> dict of tensors`` (its named
phases composed), ``state_dict()``, ``load_state_dict()``, ``snapshot(step)``, ``export()``, optionally
``evaluate(step)`` and an ``ema`` with its ``ema_source``. ``run(cfg, method_cls)`` drives it:

    for step: train_step (learning rates, method.step, EMA, skip counts); log; checkpoint; snapshot; evaluate
    method.export()

``ctx.steps_done`` holds the number of steps trained when ``export`` runs: ``train.steps``, or fewer when the launch
stopped early with a checkpoint (``resume=latest`` continues): ``train.time_limit_min`` passed (a cluster's wall-time
limit), or a stop signal came (``StopSignals``: SIGTERM or SIGUSR1 of a preempting scheduler, the first Ctrl-C).
"""
from __future__ import annotations

import json
import math
import os
import time

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from . import checkpoint
from .config import to_yaml
from .optim import lr_scale, set_lr


def guarded_step(acc: Accelerator, loss, model, opt, max_norm: float):
    """Backward, clip to ``max_norm`` (0 = off), and step — unless the gradient norm is not finite, in which case the
    step is skipped. Returns ``(grad_norm, skipped)``. One host sync per update: the price of never applying a NaN
    step (the norm is all-reduced, so every process decides the same)."""
    acc.backward(loss)
    max_norm = max_norm if max_norm > 0 else math.inf
    if acc.is_fsdp2:
        # accelerate 1.15 finds the model of the parameters by comparing parameter lists with ==, which raises
        # ("Boolean value of Tensor ... ambiguous") for two models with as many parameters (generator and fake score
        # are the same network); torch's clip handles the DTensor gradients of FSDP2 and returns a DTensor norm
        acc.unscale_gradients()
        norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()), max_norm)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    else:
        norm = acc.clip_grad_norm_(model.parameters(), max_norm)
    skipped = not bool(torch.isfinite(norm))
    if not skipped:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return norm, skipped


def fsdp2_shard(acc: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """Shard ``model`` in place with FSDP2's ``fully_shard`` as accelerate's size-based wrap means it, before
    ``acc.prepare(model, optimiser)`` (create the optimiser afterwards; prepare then finds an FSDP module and keeps
    it). Other wrap policies are left to ``prepare``.

    Why: accelerate 1.15's FSDP2 size-based policy counts a module's parameters including its children's and so also
    picks containers (``nn.ModuleList`` such as a UNet's ``down_blocks``), for which torch's ``fully_shard`` raises
    "does not support containers that do not implement forward". Here only modules with their own ``forward`` and
    more than ``min_num_params`` parameters become units (bottom-up), then the root."""
    from accelerate.utils.fsdp_utils import get_module_children_bottom_up
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

    plugin = acc.state.fsdp_plugin
    plugin.set_auto_wrap_policy(model)
    policy = plugin.auto_wrap_policy
    policy = getattr(policy, "func", policy)
    if policy is not size_based_auto_wrap_policy or isinstance(model, FSDPModule):
        return model
    if acc.mixed_precision != "no":  # as accelerate: fp32 master weights, the policy casts for compute
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.to(torch.float32)
    mesh = getattr(acc, "torch_device_mesh", None)
    kwargs = dict(offload_policy=plugin.cpu_offload, mp_policy=plugin.mixed_precision_policy or MixedPrecisionPolicy(),
                  mesh=mesh[tuple(acc.parallelism_config.fsdp_dim_names)] if mesh is not None else None)
    for m in get_module_children_bottom_up(model)[:-1]:
        if (type(m).forward is not torch.nn.Module.forward and not isinstance(m, FSDPModule)
                and sum(p.numel() for p in m.parameters()) > plugin.min_num_params):
            fully_shard(m, reshard_after_forward=plugin.reshard_after_forward, **kwargs)
    fully_shard(model, **kwargs)  # the root: torch's default (no reshard after forward)
    return model


def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide singletons, so that the next ``Accelerator`` in this process can take other
    settings (mixed precision, device): several runs in one Python process (tests, benchmarks, notebooks)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def make_accelerator(cfg) -> Accelerator:
    trackers = []
    for name in cfg.log.trackers:
        if name == "wandb":
            try:
                import wandb  # noqa: F401
            except ImportError:
                raise ValueError("log.trackers includes 'wandb' but wandb is not installed (pip install wandb)") \
                    from None
        elif name != "tensorboard":
            raise ValueError(f"unknown tracker {name!r}; valid: ['tensorboard', 'wandb']")
        trackers.append(name)
    return Accelerator(mixed_precision=cfg.train.mixed_precision, log_with=trackers or None,
                       project_config=ProjectConfiguration(project_dir=cfg.out_dir, logging_dir=cfg.out_dir))


class RunContext:
    """One run: its config, accelerator and process's batch, and the hooks the loop was given. ``measures``: the
    evaluation hook ``(samples, mixture_teacher) -> dict`` of exact measures (MATH §7; ``eval.gmm.gmm_metrics``,
    which ``train.py`` passes): evaluation reaches the loop through it, and ``fdistill`` imports nothing of ``eval``.
    Without it, runs are not measured (no ``eval.jsonl``, no ``final_metrics.json``)."""

    def __init__(self, cfg, accelerator: Accelerator | None = None, measures=None):
        self.cfg = cfg
        self.measures = measures
        self.acc = accelerator or make_accelerator(cfg)
        self.out_dir = cfg.out_dir
        self.ckpt_dir = os.path.join(cfg.out_dir, "checkpoints")
        if cfg.train.batch_size % self.acc.num_processes:
            raise ValueError(f"train.batch_size={cfg.train.batch_size} must divide by the number of processes "
                             f"({self.acc.num_processes})")
        self.local_batch = cfg.train.batch_size // self.acc.num_processes
        set_seed(cfg.seed, device_specific=False)
        if self.acc.is_main_process:
            os.makedirs(self.ckpt_dir, exist_ok=True)
            with open(os.path.join(cfg.out_dir, "config.yaml"), "w") as fh:
                fh.write(to_yaml(cfg))
        self.acc.wait_for_everyone()
        if self.acc.log_with:
            self.acc.init_trackers("fdistill", config=_flat_config(cfg))
        self._window: dict[str, list] = {}
        self._t0 = self.started = time.time()
        self._images_at_t0 = 0
        self.steps_done = cfg.train.steps
        self.optimised: dict[str, tuple] = {}  # name -> (optimizer, base learning rate, scheduled)
        self._skipped: dict[str, int] = {}

    def write_resolved_config(self) -> None:
        """``out_dir/resolved_config.yaml``: the config as the job uses it, once it is built — the keys left ``null``
        for the teacher to decide (sampler levels, regression term, rate budget, warm-start length, sigma_init) filled
        in. ``config.yaml`` stays what was asked (what a resume and the benchmarks compare)."""
        if self.acc.is_main_process:
            with open(os.path.join(self.cfg.out_dir, "resolved_config.yaml"), "w") as fh:
                fh.write("# the config as this run used it: the teacher-dependent defaults filled in (config.yaml: as "
                         "asked)\n" + to_yaml(self.cfg))

    def prepare(self, name: str, model, optimizer, base_lr: float, scheduled: bool = True):
        """``accelerator.prepare(model, optimizer)`` (one pair per call: what FSDP2 needs; the call order is the
        order of the models in checkpoints), registered under ``name``: its learning rate follows ``train``'s
        schedule from ``base_lr`` (``scheduled=False``: stays ``base_lr``) and its skipped updates are logged as
        ``skipped_<name>_count``. Returns the prepared pair."""
        if name in self.optimised:
            raise ValueError(f"optimiser {name!r} is registered twice")
        # training starts with no gradient, whatever built the model: a gradient left by a fit would be added to the
        # first update (guarded_step clears gradients after each step, not before), so a run with a freshly fitted
        # warm start would differ from one that loads the same fit from the cache
        model.zero_grad(set_to_none=True)
        model, optimizer = self.acc.prepare(model, optimizer)
        self.optimised[name] = (optimizer, float(base_lr), scheduled)
        self._skipped[name] = 0
        return model, optimizer

    def update(self, name: str, loss, model, optimizer):
        """One update of the optimiser registered as ``name`` (``guarded_step`` with ``train.grad_clip``): a step
        whose gradient norm is not finite is skipped and counted. Returns the gradient norm."""
        norm, skipped = guarded_step(self.acc, loss, model, optimizer, self.cfg.train.grad_clip)
        self._skipped[name] += int(skipped)
        return norm

    def set_learning_rates(self, step: int) -> None:
        """Every scheduled optimiser at its base rate times ``fdistill.optim.lr_scale(step)`` (warm-up, schedule)."""
        scale = lr_scale(step, self.cfg.train)
        set_lr([(opt, lr) for opt, lr, scheduled in self.optimised.values() if scheduled], scale)

    def take_skip_counts(self) -> dict:
        """``skipped_<name>_count`` of each registered optimiser since the last call (then reset)."""
        out = {f"skipped_{k}_count": torch.tensor(float(v)) for k, v in self._skipped.items()}
        self._skipped = dict.fromkeys(self._skipped, 0)
        return out

    @property
    def device(self):
        return self.acc.device

    @property
    def is_main(self) -> bool:
        return self.acc.is_main_process

    def resume(self, job) -> int:
        if self.cfg.resume == "latest":  # falls back to the newest checkpoint that loads
            found = checkpoint.load_latest(self.acc, self.ckpt_dir)
            if found is None:
                return 0
            path, state = found
        else:
            path = checkpoint.resolve_resume(self.cfg.resume, self.out_dir)
            if path is None:
                return 0
            state = checkpoint.load_checkpoint(self.acc, path)
        job.load_state_dict(state["job"])
        if self.is_main:
            print(f"resumed from {path} at step {state['step']}")
        return int(state["step"])

    def save(self, job, step: int) -> str:
        return checkpoint.save_checkpoint(self.acc, self.ckpt_dir, step, {"step": step, "job": job.state_dict()},
                                          keep=self.cfg.train.keep_checkpoints)

    def record(self, step: int, stats: dict, images_seen: int, force: bool = False) -> dict | None:
        """Accumulate per-step stats (tensors; no host sync) and every ``log_every`` steps write their means to
        ``metrics.jsonl`` and the trackers. Returns the logged row, if any."""
        for k, v in stats.items():
            self._window.setdefault(k, []).append(v.detach().float() if torch.is_tensor(v) else torch.tensor(v))
        if not force and (step + 1) % self.cfg.train.log_every:
            return None
        row = {k: float(torch.stack([t.reshape(()) for t in vals]).mean()) for k, vals in self._window.items()}
        for k in [k for k in row if k.endswith("_count")]:
            row[k] = float(sum(float(t) for t in self._window[k]))
        self._window.clear()
        now = time.time()
        row.update(step=step + 1, images_seen=images_seen,
                   images_per_s=(images_seen - self._images_at_t0) / max(now - self._t0, 1e-9))
        self._t0, self._images_at_t0 = now, images_seen
        if self.is_main:
            with open(os.path.join(self.out_dir, "metrics.jsonl"), "a") as fh:
                fh.write(json.dumps(row) + "\n")
        if self.acc.log_with:
            self.acc.log({k: v for k, v in row.items() if k != "step"}, step=step + 1)
        return row

    def stop_reason(self, signalled: str | None, log_step: bool) -> str | None:
        """Why the launch stops after this step, or None: a stop signal that any process received (``signalled``,
        its name on this process), or ``train.time_limit_min`` passed on the main process's clock. One process
        looks at signals every step (no sync); several agree at log steps through one all-reduce, so every process
        stops after the same step. The time limit is looked at on log steps only."""
        limit = self.cfg.train.time_limit_min
        multi = self.acc.num_processes > 1
        timed_out = log_step and limit > 0 and self.is_main and time.time() - self.started > 60 * limit
        if multi:
            if not log_step:
                return None
            from accelerate.utils import reduce

            flags = reduce(torch.tensor([float(signalled is not None), float(timed_out)], device=self.device),
                           reduction="sum")
            signalled = (signalled or "a stop signal (on another process)") if flags[0] > 0 else None
            timed_out = bool(flags[1] > 0)
        if signalled is not None:
            return f"{signalled} received"
        return f"train.time_limit_min={limit} reached" if timed_out else None

    def close(self):
        if self.acc.log_with:
            self.acc.end_training()


def _flat_config(cfg) -> dict:
    from omegaconf import OmegaConf

    def walk(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(walk(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
        return out

    return walk(OmegaConf.to_container(cfg, resolve=True))


class StopSignals:
    """Stop requests while training: SIGTERM and SIGUSR1 (a scheduler's preemption notice, e.g. SLURM's
    ``--signal=USR1@120``) and the first Ctrl-C (SIGINT) are remembered in ``received`` (the signal's name), and the
    loop stops after the current step with a checkpoint; a second Ctrl-C interrupts at once. Installed only in the
    main thread; the handlers before are restored on exit."""

    NAMES = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self):
        self.received: str | None = None
        self._before = {}

    def _handle(self, signum, frame):
        import signal

        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.NAMES:
                sig = getattr(signal, name, None)  # SIGUSR1: not on every platform
                if sig is not None:
                    self._before[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, handler in self._before.items():
            signal.signal(sig, handler)
        self._before.clear()


def train_step(ctx: RunContext, job, step: int) -> dict:
    """One training step of ``job`` as the loop runs it: the learning rates at ``step``, the method's ``step``, the
    EMA update of its ``ema_source`` (if it has an ``ema``), and the skip counts. Returns the step's stats."""
    ctx.set_learning_rates(step)
    stats = job.step(step)
    if getattr(job, "ema", None) is not None:
        job.ema.update(job.ema_source, step)
    stats.update(ctx.take_skip_counts())
    return stats


def run(cfg, job_cls, accelerator: Accelerator | None = None, measures=None):
    """Drive ``job_cls(cfg, ctx)`` for ``cfg.train.steps`` steps with logging, checkpoints and snapshots;
    ``measures``: the evaluation hook (``RunContext``)."""
    ctx = RunContext(cfg, accelerator, measures)
    job = job_cls(cfg, ctx)
    ctx.write_resolved_config()
    start = ctx.resume(job)
    t = cfg.train
    bar = tqdm(range(start, t.steps), initial=start, total=t.steps, desc=cfg.task,
               disable=not (ctx.is_main and cfg.log.progress), dynamic_ncols=True)
    with StopSignals() as signals:
        for step in bar:
            stats = train_step(ctx, job, step)
            row = ctx.record(step, stats, (step + 1) * t.batch_size, force=step + 1 == t.steps)
            if row is not None:
                bar.set_postfix({k: f"{row[k]:.3g}" for k in job.progress_keys if k in row}
                                | {"img/s": f"{row['images_per_s']:.0f}"})
            stop = ctx.stop_reason(signals.received, row is not None) if step + 1 < t.steps else None
            if (step + 1) % t.checkpoint_every == 0 or step + 1 == t.steps or stop:
                ctx.save(job, step + 1)
            if (step + 1) % t.sample_every == 0 and ctx.is_main:
                job.snapshot(step + 1)
            if t.eval_every and (step + 1) % t.eval_every == 0 and hasattr(job, "evaluate"):
                job.evaluate(step + 1)
            if stop:
                ctx.steps_done = step + 1
                if ctx.is_main:
                    bar.write(f"{stop}: stopped at step {step + 1} of {t.steps} (checkpoint saved; resume=latest "
                              f"continues)")
                break
    bar.close()
    result = job.export()
    ctx.close()
    return result
