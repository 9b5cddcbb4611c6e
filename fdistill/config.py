"""Typed configuration: OmegaConf structured configs over dataclasses.

``load_config(yaml_path, overrides)`` merges a YAML file and ``key=value`` overrides onto the defaults, and fails with
a ``ConfigError`` that names the bad key, type or choice and lists what is accepted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from samplers import SAMPLERS

from .denoiser import PREDICTION_TYPES
from .noise_levels import KINDS as LEVEL_KINDS
from .optim import LR_SCHEDULES
from .teachers import KIND_MODULES as TEACHER_KINDS


class ConfigError(ValueError):
    """A configuration value or key that is not accepted; the message says what is."""


@dataclass
class TeacherConfig:
    kind: str = "gmm"                      # a module of fdistill.teachers (valid values: CHOICES)
    preset: str = "ring8"                  # gmm: a fdistill.data preset, used when `means` is empty
    means: Optional[List[Any]] = None      # gmm: (K, d) nested list
    stds: Any = None                       # gmm: scalar, (K,) or like means
    weights: Optional[List[float]] = None  # gmm: (K,)
    path: str = ""                         # pretrained/diffusers/edm: local directory
    guidance_scale: float = 1.0            # classifier-free guidance of the teacher (MATH F2)
    num_classes: int = 0                   # class-conditional teachers: number of classes (null label = num_classes)
    prediction_type: str = ""              # diffusers: override the scheduler's prediction type


@dataclass
class NetworkConfig:
    init: str = "teacher"        # copies of the teacher (warm start, MATH §0) or random (valid values: CHOICES)
    arch: str = "mlp"            # new networks (random init, teacher pretraining, GMM fits); ARCH_KEYS: what each reads
    hidden: int = 256            # mlp width
    depth: int = 4               # mlp residual blocks
    channels: List[int] = field(default_factory=lambda: [32, 64, 64])  # unet2d / songunet channel widths
    attention: bool = False      # unet2d / songunet: attention at the lowest resolution
    prediction_type: str = "v_prediction"  # what a unet2d built here predicts (CHOICES). With epsilon,
                                 # D(x, sigma) = x - sigma * eps_hat: a one-step generator at sigma_init amplifies
                                 # the network's error sigma_init times (v and sample keep |c_out| <= 1)
    fourier_features: int = 64   # mlp: random Fourier features of the input (0 = a plain linear input layer)
    fourier_scale: float = 1.0   # mlp: their frequency scale, in units of the preconditioned input c_in (x - mu)
    fit_steps: int = 600         # analytic teacher + init=teacher: steps regressing an MLP onto the exact denoiser
    fake_score: str = "auto"     # how the fake score starts (CHOICES): the analytic teacher + a zero-initialised
                                 # MLP correction (residual, MATH R2), a copy of the generator's start, or auto
                                 # (residual for analytic teachers, copy otherwise)
    flow_fit_steps: Optional[int] = None  # then regress the generator onto the teacher's probability-flow map for
                                 # this many steps (fresh (z, PF(z)) pairs, data.sampler / data.num_steps) before
                                 # distilling (fdistill.pf_regression.fit_flow_map; conditional teachers: uniform
                                 # labels / prompts). None = flow_fit_per_mode x max(8, modes) for mixture
                                 # teachers (exact, cheap PF map), 0 for networks
    flow_fit_per_mode: Optional[int] = None  # mixture teachers, flow_fit_steps null: warm-start steps per mode; None =
                                 # 750 (375 until 2026-12-05)
    flow_fit_lr: float = 1e-3    # its Adam learning rate (cosine-decayed to 0)
    flow_fit_batch: Optional[int] = None  # its batch of pairs; None = train.batch_size
    flow_fit_betas: Optional[List[float]] = None  # its Adam betas; null = (0.9, 0.99) (fdistill.optim.FLOW_MAP_BETAS)
    warm_start_cache: str = ""   # a directory: reuse flow-map warm starts keyed by what made them ("" = no cache)
    generator_init: str = ""     # a trained one-step generator (its run's out_dir or generator/ export): its weights
                                 # start the generator instead of the teacher's (a second stage, e.g. a data-free
                                 # student continued with the GAN term on real data); the fake score still starts
                                 # from the teacher, and there is no flow-map warm start (flow_fit_steps null = 0)
    sigma_init: Optional[float] = None  # one-step generator input noise level (MATH §0); None = the teacher's
                                 # sigma_max (fdistill.scale: mixtures 10 sigma_data, EDM 80, a VP table its largest
                                 # sigma, SD1.5 14.6146); presets: 80 (DMD2, f-distill) or 2.5 (SiD)
    sigma_data: Optional[float] = None  # networks built for the teacher (mlp; random unet2d/songunet): None = the
                                 # teacher's (mixtures: exact; EDM 0.5; else from its samples)
    gradient_checkpointing: bool = False  # diffusers UNets: recompute activations in backward (generator, fake)
    lora_rank: int = 0           # > 0: the generator is the teacher copy + LoRA adapters (only they train; merged
                                 # on export); diffusers UNets
    lora_alpha: Optional[float] = None  # LoRA scale numerator (None = lora_rank)
    lora_targets: List[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])  # module names


@dataclass
class ScheduleEntry:
    step: int = 0                      # from this generator step on ...
    divergence: Optional[str] = None   # ... use this divergence
    name: Optional[str] = None         # ... and/or this objective


@dataclass
class ObjectiveConfig:
    # Keys left at None take the objective's (or the preset's) own value: rkl, no GAN term, exact gradient.
    name: str = "fdistill"             # an objective or preset of fdistill.objectives (its names())
    divergence: Optional[str] = None   # any name of fdistill.divergences (rkl, fkl, js, ..., alpha:<a>)
    gan_weight: Optional[float] = None  # lambda_GAN (MATH F2)
    gan_sigma_max: Any = None          # the GAN term on the generator step's noise levels at or below this sigma
                                       # only (MATH F2): a number or "auto" (2 sigma_data of the teacher);
                                       # None = on the step's own x_sigma (every level)
    alpha: Optional[float] = None      # uni_instruct: SiD's alpha knob (None = the exact gradient, MATH U3)
    zero_mean_term: Optional[bool] = None  # uni_instruct: keep the zero-mean term (MATH U2; dropping it biases
                                       # non-location parameters whenever h' != 0, see docs/objectives.md); None =
                                       # keep it, except the sim preset (which drops it by definition)
    normalize: bool = True             # two-stage ratio normalisation (MATH F3)
    logit_clamp: float = 10.0
    ratio_min: float = 0.1
    ratio_max: float = 20.0
    weighting: Optional[str] = None    # the generator loss's per-level weight: fdistill dmd | none; uni_instruct
                                       # sid | none (None = the objective's own: dmd / sid)
    estimator: Optional[str] = None    # uni_instruct: expanded (MATH U2) | sim (SIM's L2 form); None = the preset's
    t_max: Optional[float] = None      # uni_instruct: the largest diffusion time of its ramp (None = 0.8)
    index_range: Optional[List[int]] = None  # fdistill: [lo, hi] of the 1000-level Karras grid (None = [2, 998])
    flow_mean: Optional[float] = None  # sigma_dist=flow_time: the logit-normal time's mean, std and SD3's shift
    flow_std: Optional[float] = None   # (MATH N1; None = 0, 1, 1)
    flow_shift: Optional[float] = None
    sigma_min: Optional[float] = None  # noise-level range of the generator/discriminator steps; None = the teacher's
    sigma_max: Optional[float] = None  # (fdistill.scale: a mixture 0.1 x its finest std .. 10 sigma_data; EDM
                                       # 0.002 / 80; a discrete VP teacher its own table, SD1.5 0.0292 / 14.6146)
    sigma_dist: str = ""               # generator noise levels, a kind of fdistill.noise_levels (CHOICES); "" = the
                                       # objective's own (fdistill: karras, uni_instruct: karras_ramp)
    schedule: List[ScheduleEntry] = field(default_factory=list)  # e.g. [{step: 500, divergence: fkl}]
    regression_weight: Optional[float] = None  # lambda_reg of DMD's regression term beside the generator loss (MATH
                                       # R1): the step's G(z) regressed onto the teacher's probability-flow sample of
                                       # the same z (and label or prompt), in sigma_data units; 0 =
                                       # off. None = 0.7 for analytic mixture teachers (the recipe, with
                                       # regression_sigma 1: README "Longer training"), 0 for networks (Phi costs
                                       # 2 num_steps - 1 calls)
    regression_sigma: Optional[float] = None  # > 0: the regression term compares G(z) and Phi(z) through the teacher's
                                       # denoiser at this noise level, in sigma_data units (MATH R1b: which mode, not
                                       # where in it); 0 = the plain squared error of MATH R1. None = 1 for analytic
                                       # mixture teachers, 0 for networks
    regression_pairs: int = 0          # 0: Phi(z) drawn fresh every step on the step's own noise; N > 0: a pool of N
                                       # (z, Phi(z)) pairs drawn once (DMD's paired set; keyed cache
                                       # out_dir/regression_pairs.pt) from which each step takes its regression batch,
                                       # for teachers whose many-step Phi is too costly per step


@dataclass
class DiscriminatorConfig:
    features: str = "teacher"  # the frozen network whose features the heads read (MATH F3; CHOICES)
    hidden: int = 128
    lr: float = 1e-4
    r1_gamma: float = 0.0      # approximate R1 weight (MATH F3), 0 = off
    augment_shift: int = 0     # images: translate the real and generated images by up to this many pixels each time
                               # they meet the discriminator (its loss, the GAN term; fdistill.augment, MATH F3),
                               # against a discriminator that learns a small real set; 0 = off
    ema_rate: float = 0.99     # per-sigma-bin EMA of the ratio normaliser


@dataclass
class DataConfig:
    kind: str = "auto"          # the discriminator's "real" samples (DATA_KIND_KEYS: the kinds and what each
                                # reads; the README's options table says what each is)
    path: str = ""              # folder: image directory
    resolution: int = 16        # digits / folder
    sampler: str = "heun"       # the teacher's many-step sampler (samplers.SAMPLERS)
    num_steps: Optional[int] = None  # sampler levels of the teacher's many-step samples (data-free pool, the flow
                                # map of the warm start, the regression term and task=regress; heun: 2 n - 1
                                # evaluations). None = 70 for analytic mixture teachers (Heun's flow map within
                                # 0.3 %; 18 levels are 5.5 % too wide), 18 for networks
    pool_size: Optional[int] = None  # data-free: teacher samples drawn once and reused; None = from the budget
                                # (data_pool_size: train.steps x train.batch_size / 8, within 4096 and 1 GiB)
    pool_cache: str = ""        # data-free: a folder that keeps pools under their key (teacher_pool-<key>.pt), shared
                                # by every run that would draw the same pool; "" = the run's out_dir/teacher_pool.pt
    prompts: str = ""           # teacher.kind=sd: a text file (one prompt a line), a captions folder (image + .txt)
                                # or a JSONL ("caption"/"text" field); "" = the captions at `path`
    prompt_cache: int = 4096    # teacher.kind=sd: prompt lists up to this size are encoded once and kept


@dataclass
class TrainConfig:
    steps: int = 500                # generator updates (after the warm start, network.flow_fit_steps)
    batch_size: int = 256           # global batch (split across processes)
    fake_updates: int = 4           # fake-score (+ discriminator) updates per generator update
    fake_sigma: str = "lognormal"   # fake-score DSM noise levels: EDM's log-normal or the objective's own (CHOICES)
    lr: float = 1e-4                # generator (the defaults are the vector recipe's; image presets set their own)
    lr_fake: float = 1e-3           # fake score
    betas: Optional[List[float]] = None  # Adam betas; None = the method's own (its default_betas): distill
                                    # (0, 0.99) (the vector recipe; image presets set [0, 0.999]), teacher
                                    # (0.9, 0.999), regress (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 0           # linear learning-rate warm-up (generator and fake score)
    lr_schedule: str = "cosine"     # a schedule of fdistill.optim.LR_SCHEDULES (its module docstring says what each is)
    lr_ref_steps: int = 1000        # inv_sqrt: the step where the decay starts
    lr_decay_fraction: float = 0.2  # wsd: the final fraction of train.steps over which the rate falls linearly to 0
    lr_budget_steps: Optional[int] = None  # distillation: a run longer than this many steps scales the generator's
                                    # rate by lr_budget_steps / steps, so it moves its weights no further in total
                                    # (the sum of its rates) than a run of this length and spends its extra steps
                                    # averaging more batches (fdistill.optim.generator_lr, issue 23). 0 = off (the
                                    # full rate at any length); null = the teacher's default: 500 for an analytic
                                    # mixture (the vector recipe's train.steps, since 2026-12-06), off for a network
    grad_clip: float = 10.0         # max grad norm, 0 = off
    ema: List[float] = field(default_factory=lambda: [0.99])  # EMA decays of the generator
    ema_halflife_kimg: float = 0.0  # > 0: one EMA with this half-life in thousands of images instead of `ema`
    ema_power: float = 0.0          # > 0: one power-function EMA (EDM2) with this gamma instead of `ema`: it averages
                                    # a fixed fraction of the steps so far (6.94: relative width 0.10)
    mixed_precision: str = "no"     # accelerate's mixed precision (CHOICES)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 500
    log_every: int = 25
    eval_samples: int = 20000       # samples for the final metrics (GMM teachers)
    eval_every: int = 0             # > 0, mixture teachers: exact metrics of the EMA generator every this many steps,
                                    # appended to out_dir/eval.jsonl (the training curve of MATH §7's metrics)
    time_limit_min: float = 0.0     # > 0: stop after this many minutes of this launch (checked at log steps),
                                    # checkpoint and export as at the end; resume=latest continues to `steps`


@dataclass
class LogConfig:
    trackers: List[str] = field(default_factory=lambda: ["tensorboard"])  # tensorboard | wandb
    progress: bool = True


@dataclass
class Config:
    task: str = "distill"        # the method: a module of fdistill.methods (its available()), or
                                 # package.module:Class
    out_dir: str = "runs/gmm2d"
    seed: int = 0
    resume: str = ""             # "" | latest | a checkpoint directory
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    method: Any = field(default_factory=dict)  # options of the chosen method (its Method.options dataclass; the
                                               # methods of the package read the sections above and take none)


# The network.* keys each architecture reads (fdistill.build.build_network); network.arch and these keys are read only
# when a network is built from them (random init, task=teacher, an analytic teacher's fitted MLP), and a key another
# architecture reads is refused when set
ARCH_KEYS = {"mlp": ("hidden", "depth", "fourier_features", "fourier_scale"),
             "unet2d": ("channels", "attention", "prediction_type"),
             "songunet": ("channels", "attention")}
# The data.* keys each data.kind reads besides kind, sampler and num_steps (read by every kind: the data-free pool,
# the flow map, the regression term); a teacher kind may read more (its DATA_KEYS: SD's prompts)
DATA_KIND_KEYS = {"auto": ("pool_size", "pool_cache"), "gmm": (), "teacher": ("pool_size", "pool_cache"),
                  "digits": ("resolution",), "folder": ("path", "resolution"), "captions": ("path",)}
DATA_COMMON_KEYS = ("kind", "sampler", "num_steps")
BUILT_IN_STUDENT_TASKS = ("distill", "regress")  # tasks whose networks are copies of a network teacher's


# The accepted values of every choice-valued key: listed here, or read from the module that owns them (the README's
# options table is checked against this by tests/test_config.py)
CHOICES = {
    "teacher.kind": list(TEACHER_KINDS),
    "network.init": ["teacher", "random"],
    "network.arch": list(ARCH_KEYS),
    "network.fake_score": ["auto", "residual", "copy"],
    "network.prediction_type": list(PREDICTION_TYPES),
    "discriminator.features": ["teacher", "fake"],
    "data.kind": list(DATA_KIND_KEYS),
    "data.sampler": list(SAMPLERS),
    "train.mixed_precision": ["no", "bf16", "fp16"],
    "train.fake_sigma": ["lognormal", "generator"],
    "train.lr_schedule": list(LR_SCHEDULES),
    "objective.sigma_dist": ["", *LEVEL_KINDS],  # "" = the objective's own
}


def _keys(dc, prefix=""):
    out = []
    for f in fields(dc):
        out.append(prefix + f.name)
        default = f.default_factory() if f.default_factory is not MISSING and callable(f.default_factory) else None
        if is_dataclass(default):
            out += _keys(type(default), prefix + f.name + ".")
    return out


def _nearest(key: str, valid: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, valid, n=3)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def _select(cfg, dotted):
    return OmegaConf.select(cfg, dotted)


def _check_betas(key: str, betas, null_means: str) -> None:
    """Adam betas: null or two numbers in [0, 1)."""
    if betas is not None and (len(betas) != 2 or not all(0 <= b < 1 for b in betas)):
        raise ConfigError(f"{key} must be null ({null_means}) or two numbers in [0, 1); got {list(betas)}")


def validate(cfg: DictConfig) -> None:
    """Check every choice-valued key, the divergence and objective names, and numeric ranges."""
    if cfg.train.mixed_precision in ("False", "false"):  # YAML reads a bare `no` as a boolean
        cfg.train.mixed_precision = "no"
    for key, valid in CHOICES.items():
        v = _select(cfg, key)
        if v not in valid:
            raise ConfigError(f"{key}={v!r} is not accepted; valid: {valid}")
    _validate_method(cfg)
    from . import divergences, objectives

    try:
        if cfg.objective.divergence is not None:
            divergences.get(cfg.objective.divergence)
        objectives.get_objective(cfg.objective.name)
        for entry in cfg.objective.schedule:
            if entry.divergence is not None:
                divergences.get(entry.divergence)
            if entry.name is not None:
                objectives.get_objective(entry.name)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:  # the objectives themselves (cheap, no networks): a bad combination fails here, not after the teacher loads
        from .objectives.from_config import objective_schedule

        objective_schedule(cfg.objective)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"objective: {e}") from None
    t = cfg.train
    for key in ("steps", "batch_size", "fake_updates", "checkpoint_every", "sample_every", "log_every"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key} must be >= 1; got {getattr(t, key)}")
    _check_betas("train.betas", t.betas, "the task's own")
    if any(not 0 <= d < 1 for d in t.ema):
        raise ConfigError(f"train.ema decays must lie in [0, 1); got {list(t.ema)}")
    if len(set(t.ema)) != len(t.ema):
        raise ConfigError(f"train.ema decays must differ (each is exported on its own); got {list(t.ema)}")
    _refuse_unread(cfg)
    try:  # the teacher kind's own checks (fdistill.teachers)
        from . import teachers

        teachers.validate(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.network.lora_rank < 0:
        raise ConfigError(f"network.lora_rank must be >= 0; got {cfg.network.lora_rank}")
    for key in ("network.sigma_init", "network.sigma_data", "objective.sigma_min", "objective.sigma_max"):
        v = _select(cfg, key)
        if v is not None and v <= 0:
            raise ConfigError(f"{key} must be > 0 (or null: the teacher's); got {v}")
    o = cfg.objective
    if o.sigma_min is not None and o.sigma_max is not None and o.sigma_min > o.sigma_max:
        raise ConfigError(f"objective.sigma_min={o.sigma_min} is above objective.sigma_max={o.sigma_max}")
    if t.ema_power < 0 or t.lr_ref_steps < 1 or t.eval_every < 0 or not 0 < t.lr_decay_fraction <= 1:
        raise ConfigError(f"need train.ema_power >= 0, train.lr_ref_steps >= 1, train.eval_every >= 0, "
                          f"0 < train.lr_decay_fraction <= 1; got {t.ema_power}, {t.lr_ref_steps}, {t.eval_every}, "
                          f"{t.lr_decay_fraction}")
    if t.lr_budget_steps is not None and t.lr_budget_steps < 0:
        raise ConfigError(f"train.lr_budget_steps must be >= 0 (0: the generator keeps train.lr however long the run; "
                          f"null: the teacher's default); got {t.lr_budget_steps}")
    if o.regression_weight is not None and o.regression_weight < 0:
        raise ConfigError(f"objective.regression_weight must be >= 0 (0 = off); got {o.regression_weight}")
    if o.regression_pairs < 0:
        raise ConfigError(f"objective.regression_pairs must be >= 0 (0 = fresh pairs every step, N > 0 = a pool of N "
                          f"pairs drawn once); got {o.regression_pairs}")
    if o.regression_sigma is not None and o.regression_sigma < 0:
        raise ConfigError(f"objective.regression_sigma must be >= 0 (0 = the plain squared error; > 0 a noise level "
                          f"in sigma_data units); got {o.regression_sigma}")
    d = cfg.discriminator
    if d.augment_shift < 0 or d.r1_gamma < 0:
        raise ConfigError(f"discriminator.augment_shift (pixels) and discriminator.r1_gamma must be >= 0 (0 = off); "
                          f"got {d.augment_shift}, {d.r1_gamma}")
    if d.augment_shift > 0 and o.gan_sigma_max is None:
        raise ConfigError("discriminator.augment_shift needs a GAN term on its own noise levels "
                          "(objective.gan_weight > 0 and objective.gan_sigma_max a level or auto, not null): on the "
                          "step's own x_sigma the term shares its logit with the density ratio, which reads the image "
                          "untranslated")
    if cfg.data.pool_size is not None and cfg.data.pool_size < 1:
        raise ConfigError(f"data.pool_size must be >= 1 (or null: from the budget, train.steps x train.batch_size / "
                          f"{POOL_REUSE}, at least {POOL_MIN}); got {cfg.data.pool_size}")
    if cfg.data.num_steps is not None and cfg.data.num_steps < 1:
        raise ConfigError(f"data.num_steps must be >= 1 (or null: 70 for mixture teachers, 18 for networks); got "
                          f"{cfg.data.num_steps}")
    _check_betas("network.flow_fit_betas", cfg.network.flow_fit_betas, "(0.9, 0.99)")
    n = cfg.network
    if n.generator_init and ((n.flow_fit_steps or 0) > 0 or n.flow_fit_per_mode):
        raise ConfigError(f"network.generator_init={n.generator_init!r} starts the generator from a trained one; a "
                          f"flow-map warm start (network.flow_fit_steps={n.flow_fit_steps}, flow_fit_per_mode="
                          f"{n.flow_fit_per_mode}) would regress it onto the teacher's map first and discard that "
                          f"start: leave both null (no warm start)")
    if cfg.network.flow_fit_steps is not None and cfg.network.flow_fit_steps < 0:
        raise ConfigError(f"network.flow_fit_steps must be >= 0 (or null: the teacher's default); got "
                          f"{cfg.network.flow_fit_steps}")
    if cfg.network.flow_fit_per_mode is not None and cfg.network.flow_fit_per_mode < 0:
        raise ConfigError(f"network.flow_fit_per_mode must be >= 0 (or null: 750 for mixture teachers); got "
                          f"{cfg.network.flow_fit_per_mode}")
    if cfg.network.flow_fit_batch is not None and cfg.network.flow_fit_batch < 1:
        raise ConfigError(f"network.flow_fit_batch must be >= 1 (or null: train.batch_size); got "
                          f"{cfg.network.flow_fit_batch}")
    if cfg.network.fourier_features < 0:
        raise ConfigError(f"network.fourier_features must be >= 0; got {cfg.network.fourier_features}")


def _unread(section: str, values, defaults, reads, reader: str) -> None:
    """Refuse a ``section.*`` key that is set away from its default but not in ``reads`` (what ``reader`` reads)."""
    for key in values:
        if key not in reads and values[key] != getattr(defaults, key):
            listed = ", ".join(f"{section}.{k}" for k in reads) or "none of them"
            raise ConfigError(f"{section}.{key}={values[key]} is not read by {reader}; it reads {listed}")


def _refuse_unread(cfg: DictConfig) -> None:
    """Every set ``teacher.*``, ``network.*`` and ``data.*`` key is read by the chosen teacher kind, architecture and
    data kind, or refused naming what is read (``fdistill.teachers`` modules' ``KEYS`` / ``DATA_KEYS``,
    ``ARCH_KEYS``, ``DATA_KIND_KEYS``)."""
    from . import teachers

    kind = teachers.kind_module(cfg.teacher.kind)
    _unread("teacher", cfg.teacher, TeacherConfig(), teachers.COMMON_KEYS + tuple(kind.KEYS),
            f"teacher.kind={cfg.teacher.kind}")
    by_arch = {k for keys in ARCH_KEYS.values() for k in keys} | {"arch"}
    builds = (cfg.network.init == "random" or getattr(kind, "ANALYTIC", False)
              or cfg.task not in BUILT_IN_STUDENT_TASKS)
    if builds:
        reads, reader = ("arch", *ARCH_KEYS[cfg.network.arch]), f"network.arch={cfg.network.arch}"
    else:
        reads, reader = (), (f"task={cfg.task} with network.init=teacher and teacher.kind={cfg.teacher.kind} "
                             "(the networks are copies of the teacher)")
    governed = {k: cfg.network[k] for k in by_arch}
    _unread("network", governed, NetworkConfig(), reads, reader)
    if cfg.task in BUILT_IN_STUDENT_TASKS or cfg.task == "teacher":
        reads = DATA_COMMON_KEYS + DATA_KIND_KEYS[cfg.data.kind] + tuple(getattr(kind, "DATA_KEYS", ()))
        _unread("data", cfg.data, DataConfig(), reads, f"data.kind={cfg.data.kind} with teacher.kind={cfg.teacher.kind}")


def _validate_method(cfg: DictConfig) -> None:
    """``task`` names a method (``fdistill.methods``), and ``method.*`` holds only the options it declares (its
    ``options`` dataclass), filled with their defaults."""
    from . import methods

    if ":" not in cfg.task and cfg.task not in methods.available():
        raise ConfigError(f"task={cfg.task!r} is not accepted; valid: {methods.available()} (the modules of "
                          f"fdistill.methods) or package.module:Class for a method of your own")
    try:
        cls = methods.method_class(cfg.task)
    except (ImportError, ValueError) as e:
        raise ConfigError(str(e)) from None
    given = OmegaConf.to_container(cfg.method, resolve=True) if isinstance(cfg.method, DictConfig) else cfg.method
    if not isinstance(given, dict):
        raise ConfigError(f"method must be a mapping of the method's options; got {given!r}")
    if cls.options is None:
        if given:
            raise ConfigError(f"task={cfg.task} takes no method options; got method.{', method.'.join(given)}")
        return
    accepted = [f.name for f in fields(cls.options)]
    unknown = [k for k in given if k not in accepted]
    if unknown:
        raise ConfigError(f"task={cfg.task} takes no option {', '.join('method.' + k for k in unknown)}; "
                          f"it accepts: {', '.join('method.' + k for k in accepted) or 'none'}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls.options), given)
    except ValidationError as e:
        raise ConfigError(f"wrong type for method.{getattr(e, 'key', '?')}: {e.msg if hasattr(e, 'msg') else e}") \
            from None
    cfg.method = OmegaConf.to_container(merged)


POOL_REUSE, POOL_MIN, POOL_MAX_BYTES = 8, 4096, 2 ** 30


def data_pool_size(cfg: DictConfig, sample_shape=()) -> int:
    """The data-free pool's size: ``data.pool_size``, or (null) one pool sample for every ``POOL_REUSE`` = 8 samples
    the generator makes over the run — ``train.steps x train.batch_size / 8``, rounded up to a multiple of 1024, at
    most what fits in ``POOL_MAX_BYTES`` (1 GiB of float32 samples of ``sample_shape``: 87381 CIFAR-10 images, 16384
    SD latents), at least 4096. A data-free student ends near its pool's own FD (README, digits: 4096 teacher samples
    are 1.5-2.5 FD-digits from the real digits where 32768 are 0.83, and a student moved from the one to the other
    went from 2.12 to 1.48), and the pool then costs 35 / 8 ~ 4.4 teacher evaluations per generator sample, a small
    part of the training's own at any model size."""
    if cfg.data.pool_size is not None:
        return int(cfg.data.pool_size)
    budget = 1024 * math.ceil(int(cfg.train.steps) * int(cfg.train.batch_size) / POOL_REUSE / 1024)
    fits = POOL_MAX_BYTES // (4 * math.prod(int(d) for d in sample_shape))
    return max(POOL_MIN, min(budget, fits))


def load_config(path: str | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Defaults <- YAML file <- ``key=value`` overrides, validated. Raises ConfigError with a clear message."""
    base = OmegaConf.structured(Config)
    valid = _keys(Config)
    try:
        if path:
            import os

            if not os.path.isfile(path):
                raise ConfigError(f"config file not found: {path!r}")
            base = OmegaConf.merge(base, OmegaConf.load(path))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"overrides must look like key=value; got {bad}")
            base = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
    except (ConfigKeyError, ConfigAttributeError) as e:
        key = getattr(e, "full_key", None) or str(e)
        raise ConfigError(f"unknown config key {key!r}.{_nearest(str(key), valid)} Valid keys: {', '.join(valid)}") \
            from None
    except ValidationError as e:
        raise ConfigError(f"wrong type for {getattr(e, 'full_key', '?')!r}: {e.msg if hasattr(e, 'msg') else e}") \
            from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid configuration: {e}") from None
    validate(base)
    return base


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
