"""Distribution matching (``task=distill``): one-step generator + fake score + (optional) discriminator against a
frozen teacher. One step reads like the algorithm (MATH §2–§4), its three phases public:

    k times: fake_update (generate without grad, fake-score DSM update) -> disc_update (if the objective needs r)
    generator_update (generate -> objective(x0, teacher, fake, discriminator) [+ regression term] -> update)

then the loop (``fdistill.run``) updates the EMA.

Everything random in step i comes from ``StepRandom`` (seeded by seed/step/stream, global batch sliced per process):
results do not depend on the process count and resume needs no RNG state.
"""
from __future__ import annotations

import contextlib
import os

import torch
from accelerate.utils import DistributedType

from .. import objectives
from ..build import guided
from ..config import data_pool_size
from ..denoiser import one_step
from ..ema import EMA, ema_decays
from ..noise_levels import LogNormal
from ..objectives.from_config import gan_sigma_cap, objective_schedule
from ..optim import DISTILL_BETAS, FLOW_MAP_BETAS, adamw, generator_lr
from ..pf_regression import target_chunk
from ..run import fsdp2_shard
from ..sources import DatasetSource, MixtureSource, TeacherPoolSource, make_dataset
from ..step_random import StepRandom
from ..student import OneStepStudent
from . import Method


@contextlib.contextmanager
def frozen(*modules):
    """Parameters of ``modules`` do not require grad inside the block (inputs still carry gradients).

    Under FSDP2 a module's registered parameters are its sharded ones only while it is resharded; after a forward
    whose backward never reaches it (frozen), its root unit stays gathered, and flags set on the gathered tensors
    would not reach the sharded parameters that the next gather copies them from. So FSDP2 units are resharded
    before the flags are read and before they are restored."""
    modules = [m for m in modules if m is not None]
    _reshard_fsdp(modules)
    saved = [[p.requires_grad for p in m.parameters()] for m in modules]
    for m in modules:
        m.requires_grad_(False)
    try:
        yield
    finally:
        _reshard_fsdp(modules)
        for m, flags in zip(modules, saved):
            for p, f in zip(m.parameters(), flags):
                p.requires_grad_(f)


def _reshard_fsdp(modules) -> None:
    """Reshard the FSDP2 units of ``modules``; nothing (and no walk over submodules) for unsharded ones: FSDP2 shards
    the root of every network it shards."""
    from torch.distributed.fsdp import FSDPModule

    for m in modules:
        if isinstance(m, FSDPModule):
            for sub in m.modules():
                if isinstance(sub, FSDPModule):
                    sub.reshard()


class Distiller(OneStepStudent, Method):
    phases = ("fake_update", "disc_update", "generator_update")
    progress_keys = ("loss_g", "loss_fake", "loss_disc")
    default_betas = DISTILL_BETAS

    def __init__(self, cfg, ctx):
        acc, t = ctx.acc, cfg.train
        # scale from the teacher (MATH §0): networks built here, noise levels and sigma_init; config keys override
        teacher, gen, fake = self.build_for_teacher(cfg, ctx)
        self.flow_fit_steps = cfg.network.flow_fit_steps = flow_fit_steps(cfg.network, self.teacher_bundle)
        self.regression_weight = float(cfg.objective.regression_weight)
        self.regression_sigma = float(cfg.objective.regression_sigma)
        self.flow = self._flow_map(teacher) if self.flow_fit_steps > 0 or self.regression_weight > 0 else None
        if self.flow_fit_steps > 0:
            gen = self._fit_flow_map(gen, teacher)
        if cfg.train.mixed_precision == "bf16" and not self.teacher_bundle.analytic:
            teacher = teacher.to(torch.bfloat16)  # frozen teacher in the compute dtype
        self.raw_teacher = teacher
        self.teacher = guided(teacher, cfg.teacher, self.conditioner.null_cond)
        if cfg.objective.gan_sigma_max is not None:  # "auto" resolved once, to the teacher's (resolved_config.yaml)
            cfg.objective.gan_sigma_max = gan_sigma_cap(cfg.objective.gan_sigma_max, self.scale)
        self.schedule = objective_schedule(cfg.objective, self.scale)
        self.needs_ratio = any(o.needs_ratio for _, o in self.schedule)
        self.gen_mean = None if getattr(gen, "data_mean", None) is None else gen.data_mean.to(self.device)
        self.dsm_levels = LogNormal(sigma_data=self.scale.sigma_data)  # EDM's, in the teacher's units (MATH §4)
        warn_epsilon_amplification(gen, self.sigma_init)
        self.rand = StepRandom(cfg.seed, acc.process_index, acc.num_processes, self.device)

        gen, fake = gen.to(self.device), fake.to(self.device)
        decays = ema_decays(t)
        # FSDP2 (docs/sd15.md "FSDP"): one model + its optimiser per prepare call; the EMA is copied from the
        # unsharded generator before prepare shards it in place
        self.fsdp = acc.distributed_type == DistributedType.FSDP
        if self.fsdp and not acc.is_fsdp2:
            raise ValueError("the trainer supports FSDP2 only (fsdp_config.fsdp_version: 2): under FSDP1 the networks "
                             "it calls through accelerator.unwrap_model would see only their local flat shards")
        if self.fsdp and acc.is_main_process:
            import warnings

            warnings.warn("FSDP2: this path is checked on 2 CPU processes (gloo) against one process and for exact "
                          "resume (tests/test_trainer.py), not yet on GPUs with NCCL (docs/sd15.md, 'FSDP')",
                          stacklevel=2)
        if self.fsdp:
            self.ema = EMA(gen, decays).to(self.device)
            gen, fake = fsdp2_shard(acc, gen), fsdp2_shard(acc, fake)  # before their optimisers are made
        opt_g = adamw(gen.parameters(), generator_lr(t), t, self.device, self.default_betas)
        if ctx.is_main and generator_lr(t) != float(t.lr):
            print(f"train.lr_budget_steps={t.lr_budget_steps}: this {t.steps}-step run's generator rate is train.lr "
                  f"{float(t.lr):g} x {t.lr_budget_steps} / {t.steps} = {generator_lr(t):g} (so it moves its weights as "
                  f"far as a {t.lr_budget_steps}-step run; train.lr_budget_steps=0 keeps train.lr)")
        opt_f = adamw(fake.parameters(), t.lr_fake, t, self.device, self.default_betas)
        # one model and its optimiser per prepare call: what FSDP2 needs, and the same as one call under DDP; the
        # order (generator, fake score, discriminator) is the order of the models in accelerate's checkpoints
        self.gen, self.opt_g = ctx.prepare("generator", gen, opt_g, generator_lr(t))
        self.fake, self.opt_f = ctx.prepare("fake", fake, opt_f, t.lr_fake)
        self.disc = self.normalizer = self.source = self.augment = None
        if self.needs_ratio:
            from .. import ratio

            dcfg = cfg.discriminator
            feature_net = self.raw_teacher if dcfg.features == "teacher" else fake
            x_ex = torch.zeros((2, *self.shape), device=self.device)
            c_ex = self.conditioner.example(2, self.device)
            disc = ratio.make_discriminator(feature_net, x_ex, torch.ones(2, device=self.device), c_ex,
                                            hidden=dcfg.hidden).to(self.device)
            if self.fsdp:
                disc = fsdp2_shard(acc, disc)
            opt_d = adamw(disc.parameters(), dcfg.lr, t, self.device, self.default_betas)
            # the discriminator's rate stays discriminator.lr (no schedule, no warm-up)
            self.disc_ddp, self.opt_d = ctx.prepare("disc", disc, opt_d, dcfg.lr, scheduled=False)
            self.disc = acc.unwrap_model(self.disc_ddp)
            levels = [o.noise_levels for _, o in self.schedule]  # the sigma bins span every objective's levels
            self.normalizer = ratio.RatioNormalizer(sigma_min=min(lv.sigma_min for lv in levels),
                                                    sigma_max=max(lv.sigma_max for lv in levels),
                                                    ema_decay=dcfg.ema_rate).to(self.device)
            self.source = self._make_source()
            if dcfg.augment_shift > 0:
                from ..augment import Translate

                if len(self.shape) != 3:
                    raise ValueError(f"discriminator.augment_shift translates images (C, H, W); this teacher's "
                                     f"samples have shape {tuple(self.shape)}: set it to 0")
                self.augment = Translate(self.rand, dcfg.augment_shift)
        else:
            self.disc_ddp = self.opt_d = None
        # under FSDP2 these are the sharded modules themselves: calling them all-gathers their weights, so every
        # process must make the same calls (the trainer's calls are the same on every rank)
        self.gen_u, self.fake_u = acc.unwrap_model(self.gen), acc.unwrap_model(self.fake)
        if not self.fsdp:
            self.ema = EMA(self.gen_u, decays).to(self.device)
        self.pair_pool = None
        self.targets_ahead = {}  # step -> (z, c, Phi(z, c)) of the regression term, drawn ahead (regression_target)
        if self.regression_weight > 0 and cfg.objective.regression_pairs > 0:
            from ..pf_regression import FlowPairPool

            self.pair_pool = FlowPairPool(self.flow, self.raw_teacher, cfg.objective.regression_pairs, cfg.seed,
                                          os.path.join(cfg.out_dir, "regression_pairs.pt"), self.device,
                                          self.rand.rank, self.rand.world, progress=ctx.is_main and cfg.log.progress,
                                          conditioner=self.conditioner)

    # ------------------------------------------------------------------ pieces of a step
    def _make_source(self):
        cfg, kind = self.cfg, self.cfg.data.kind
        mixture = self.teacher_bundle.mixture
        if kind == "auto":
            kind = "gmm" if mixture is not None else "teacher"
        if hasattr(self.conditioner, "make_source"):  # prompts: pool latents keep their prompt; captioned images
            return self.conditioner.make_source(kind, self.teacher, self.shape, self.rand, self._pool_size(),
                                                progress=self.ctx.is_main and cfg.log.progress)
        if kind == "gmm":
            if mixture is None:
                raise ValueError("data.kind=gmm needs teacher.kind=gmm (exact mixture samples)")
            return MixtureSource(mixture, self.rand)
        if kind == "teacher":
            return TeacherPoolSource(self.teacher, self.shape, self.rand, self._pool_size(),
                                     cfg.data.sampler, cfg.data.num_steps, os.path.join(cfg.out_dir, "teacher_pool.pt"),
                                     self.num_classes, progress=self.ctx.is_main and cfg.log.progress,
                                     shared_dir=cfg.data.pool_cache)
        return DatasetSource(make_dataset(cfg.data), self.rand, self.ctx.local_batch)

    def _pool_size(self) -> int:
        """The data-free pool's size (``fdistill.config.data_pool_size``). A resumed run whose size comes from the
        budget (``data.pool_size: null``) keeps the pool it was trained on: continued to more ``train.steps`` it would
        otherwise draw a new, larger pool midway (a change of data under a half-trained student, and the time of a
        new draw). ``data.pool_size=N`` draws the pool of N asked for."""
        from ..checkpoint import resumed_state

        size = data_pool_size(self.cfg, self.shape)
        if self.cfg.data.pool_size is not None or not self.cfg.resume:
            return size
        state = resumed_state(self.cfg.resume, self.cfg.out_dir) or {}
        kept = ((state.get("job") or {}).get("source") or {}).get("pool_size")
        if kept is not None and int(kept) != size and self.ctx.is_main:
            print(f"resumed: keeping the teacher pool of {int(kept)} this run was trained on (the budget of "
                  f"train.steps={self.cfg.train.steps} asks for {size}; set data.pool_size={size} to draw that one)")
        return size if kept is None else int(kept)

    def _flow_map(self, teacher):
        """The teacher's probability-flow map ``(z, c) -> Phi(z, c)`` (MATH R1), guided like the teacher the generator
        loss reads, for the warm start and the regression term (no labels, class labels or prompts)."""
        from ..pf_regression import flow_sampler

        return flow_sampler(teacher, self.cfg, self.conditioner.null_cond, self.num_classes)

    def _fit_flow_map(self, gen, teacher):
        """Warm start: regress the generator onto the teacher's probability-flow map (``network.flow_fit_steps``)."""
        from ..pf_regression import cached_fit_flow_map

        cfg, flow = self.cfg, self.flow
        batch = cfg.network.flow_fit_batch or cfg.train.batch_size
        return cached_fit_flow_map(gen, teacher, flow, self.sigma_init, self.flow_fit_steps, batch,
                                   cfg.network.flow_fit_lr, cfg.seed, cfg.network.warm_start_cache,
                                   progress=self.ctx.is_main and cfg.log.progress,
                                   betas=flow_fit_betas(cfg.network), conditioner=self.conditioner)

    def objective_at(self, step: int):
        current = self.schedule[0][1]
        for start, obj in self.schedule:
            if step >= start:
                current = obj
        return current

    def fake_levels(self, objective):
        """The noise-level distribution (``fdistill.noise_levels``) of the fake-score DSM update: EDM's log-normal
        in the teacher's units (MATH §4) or the generator step's own (DMD2)."""
        return objective.noise_levels if self.cfg.train.fake_sigma == "generator" else self.dsm_levels

    def labels(self, step: int, stream: str):
        """The step's conditions (class labels, text embeddings or None), global batch sliced per process. The
        generator step's own were drawn already when ``regression_target`` drew its target ahead: those are taken
        (the same draw; prompts are not encoded twice)."""
        ahead = self.targets_ahead.get(step) if stream == "label/gen" else None
        if ahead is not None and ahead[1] is not None:
            return ahead[1]
        return self.conditioner.draw(self.rand, step, stream, self.ctx.local_batch)

    def generate(self, net, step: int, stream: str, cond, z=None):
        """``G(z) = D_gen(mu + sigma_init z, sigma_init)`` (MATH §0) for the step's noise ``z`` (drawn if not given)."""
        if z is None:
            z = self.rand.randn(step, stream, self.ctx.local_batch, self.shape)
        return one_step(net, z, self.sigma_init, cond, mean=self.gen_mean)

    def regression_target(self, z, step: int, cond=None) -> torch.Tensor:
        """``Phi(z, c)``, the teacher's probability-flow sample of the step's noise and conditions (MATH R1), without
        gradient; a stochastic ``data.sampler`` draws from the step's own stream, so resume stays exact. A
        deterministic one maps the next steps' noises and conditions (``pf_regression.target_chunk`` of them, each
        from its step's own streams) in the same call, and a step takes its target only if its noise and conditions
        are the ones drawn ahead: the same targets."""
        from ..pf_regression import cat_conditions

        if not self.flow.deterministic:
            return self.flow.from_noise(z, cond, self.rand.generator(step, "sampler/regression")).float()
        ahead = self.targets_ahead.pop(step, None)
        if ahead is not None and torch.equal(ahead[0], z) and (cond is None or torch.equal(ahead[1], cond)):
            return ahead[2]
        steps = range(step, max(step + 1, min(step + target_chunk(len(z), self.shape), self.cfg.train.steps)))
        zs = [z] + [self.rand.randn(s, "z/gen", len(z), self.shape) for s in steps[1:]]
        cs = [cond] + [None if cond is None else self.labels(s, "label/gen") for s in steps[1:]]
        targets = self.flow.from_noise(torch.cat(zs), cat_conditions(cs)).float().split(len(z))
        self.targets_ahead = dict(zip(steps[1:], zip(zs[1:], cs[1:], targets[1:])))
        return targets[0]

    def regression_term(self, x0, target, step: int, cond=None) -> torch.Tensor:
        """DMD's regression term (MATH R1): ``mean ||G(z) - Phi(z)||^2 / (2 sigma_data)`` for generated ``x0 = G(z)``
        and ``target = Phi(z)``. With ``objective.regression_sigma = s > 0`` the two are compared through the
        teacher's denoiser at ``sigma_r = s sigma_data`` with shared noise (MATH R1b), both under the pair's
        conditions ``cond``: the surrogate whose gradient is ``(D(G(z) + sigma_r e) - D(Phi(z) + sigma_r e)) /
        (sigma_data N)``."""
        from ..pf_regression import squared_error

        if self.regression_sigma <= 0:
            return squared_error(x0.float(), target) / (2 * self.scale.sigma_data)
        sigma_r = self.regression_sigma * self.scale.sigma_data
        b = x0.shape[0]
        e = self.rand.randn(step, "noise/regression", b, self.shape)
        both = torch.cat([x0.detach().float(), target]) + sigma_r * torch.cat([e, e])  # one teacher pass for both
        with torch.no_grad(), self.ctx.acc.autocast():  # a bf16 network teacher runs in the compute dtype
            d = self.teacher(both, torch.full((2 * b,), sigma_r, device=x0.device),
                             None if cond is None else torch.cat([cond, cond])).float()
        g = d[:b] - d[b:]
        return squared_error(x0.float(), (x0.float() - g).detach()) / (2 * self.scale.sigma_data)

    @property
    def ema_source(self):
        return self.gen_u

    # ------------------------------------------------------------------ the step and its phases
    def step(self, step: int) -> dict:
        """``train.fake_updates`` x (fake_update, disc_update), then generator_update (module docstring)."""
        objective = self.objective_at(step)
        stats = {}
        for k in range(self.cfg.train.fake_updates):
            x0, cond, fake_stats = self.fake_update(step, k, objective)
            stats.update(fake_stats)
            if self.disc is not None:
                stats.update(self.disc_update(step, k, x0, cond))
        stats.update(self.generator_update(step, objective))
        return stats

    def fake_update(self, step: int, k: int, objective) -> tuple[torch.Tensor, object, dict]:
        """The ``k``-th fake-score update of ``step``: generate without grad, one DSM update of the fake score on
        the generated batch (MATH §4). Returns the batch, its conditions and ``{"loss_fake"}``."""
        acc, rand, b = self.ctx.acc, self.rand, self.ctx.local_batch
        cond = self.labels(step, f"label/fake{k}")
        with torch.no_grad(), acc.autocast():
            x0 = self.generate(self.gen_u, step, f"z/fake{k}", cond).float()
        sigma = rand.sigmas(step, f"sigma/dsm{k}", b, self.fake_levels(objective))
        noise = rand.randn(step, f"noise/dsm{k}", b, self.shape)
        with acc.autocast():
            loss_f = objectives.fake_score_loss(self.fake, x0, cond, sigma=sigma, noise=noise,
                                                sigma_data=self.scale.sigma_data)
        self.ctx.update("fake", loss_f, self.fake, self.opt_f)
        return x0, cond, {"loss_fake": loss_f.detach()}

    def generator_update(self, step: int, objective) -> dict:
        """The generator update of ``step``: generate, the objective's loss against teacher, fake score and
        discriminator (MATH §2–§5), plus the regression term (MATH R1/R1b) when ``objective.regression_weight > 0``."""
        acc, rand, b = self.ctx.acc, self.rand, self.ctx.local_batch
        stats = {}
        with frozen(self.fake_u, self.disc):
            cond = self.labels(step, "label/gen")
            z = rand.randn(step, "z/gen", b, self.shape)
            cond_pair = gen_cond = cond
            if self.pair_pool is not None:  # the pool's pairs go through the same generator call as the step's noise
                z_pair, cond_pair, target = self.pair_pool.batch(rand, step, b)
                z = torch.cat([z, z_pair])
                gen_cond = None if cond is None else torch.cat([cond, cond_pair])
            with acc.autocast():
                x0 = self.generate(self.gen, step, "z/gen", gen_cond, z=z)
                if self.pair_pool is not None:
                    x0, x_pair = x0[:b], x0[b:]
                sigma = rand.sigmas(step, "sigma/gen", b, objective.noise_levels)
                noise = rand.randn(step, "noise/gen", b, self.shape)
                gan = {}
                # the GAN term's own levels (objective.gan_sigma_max); an objective of one's own may not have them
                gan_levels = getattr(objective, "gan_noise_levels", None)
                if gan_levels is not None:
                    gan = {"gan_sigma": rand.sigmas(step, "sigma/gan", b, gan_levels),
                           "gan_noise": rand.randn(step, "noise/gan", b, self.shape)}
                    if self.augment is not None:
                        gan["gan_transform"] = lambda x: self.augment(x, step, "gan")
                loss_g, ostats = objective(x0.float(), cond, self.teacher, self.fake_u, sigma=sigma, noise=noise,
                                           discriminator=self.disc if objective.needs_ratio else None,
                                           normalizer=self.normalizer if objective.needs_ratio else None, **gan)
            if self.regression_weight > 0:
                if self.pair_pool is None:
                    x_pair, target = x0, self.regression_target(z, step, cond)
                loss_reg = self.regression_term(x_pair, target, step, cond_pair)
                loss_g = loss_g + self.regression_weight * loss_reg
                ostats["loss_reg"] = loss_reg.detach()
            stats["grad_norm_g"] = self.ctx.update("generator", loss_g, self.gen, self.opt_g)
        stats["loss_g"] = loss_g.detach()
        stats.update(ostats)
        return stats

    def disc_update(self, step: int, k: int, x_fake, cond_fake) -> dict:
        """The ``k``-th discriminator update of ``step`` on the fake batch ``x_fake`` (from ``fake_update``) and a
        real batch: the non-saturating GAN loss of the heads (MATH F3), real and fake noised independently."""
        from .. import ratio

        acc, rand, b, dcfg = self.ctx.acc, self.rand, self.ctx.local_batch, self.cfg.discriminator
        obj = self.objective_at(step)
        x_real, cond_real = self.source.batch(step * self.cfg.train.fake_updates + k, b)
        cond_real = self.conditioner.real_condition(cond_real, cond_fake)
        if self.augment is not None:  # both alike, before the noise (fdistill.augment)
            x_real, x_fake = self.augment(x_real, step, f"real{k}"), self.augment(x_fake, step, f"disc{k}")
        levels = obj.noise_levels
        s_r, s_f = rand.sigmas(step, f"sigma/real{k}", b, levels), rand.sigmas(step, f"sigma/disc{k}", b, levels)
        n_r, n_f = rand.randn(step, f"noise/real{k}", b, self.shape), rand.randn(step, f"noise/disc{k}", b,
                                                                                   self.shape)
        bshape = (-1, *([1] * len(self.shape)))
        with frozen(self.fake_u), acc.autocast():
            l_real = self.disc_ddp(x_real + s_r.reshape(bshape) * n_r, s_r, cond_real)
            l_fake = self.disc_ddp(x_fake + s_f.reshape(bshape) * n_f, s_f, cond_fake)
            loss = ratio.discriminator_loss(l_real, l_fake)
            stats = {"loss_disc": loss.detach(), "logit_real": l_real.detach().mean(),
                     "logit_fake": l_fake.detach().mean()}
            if dcfg.r1_gamma > 0:
                r1 = ratio.r1_penalty(self.disc_ddp, x_real + s_r.reshape(bshape) * n_r, s_r, cond_real,
                                      generator=rand.generator(step, f"r1/{k}"))
                loss = loss + dcfg.r1_gamma * r1
                stats["r1"] = r1.detach()  # unweighted (loss_disc is the GAN loss alone)
        self.ctx.update("disc", loss, self.disc_ddp, self.opt_d)
        return stats

    # ------------------------------------------------------------------ state, pictures, export
    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict(),
                "normalizer": None if self.normalizer is None else self.normalizer.state_dict(),
                "source": None if self.source is None else self.source.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state["ema"])
        if self.normalizer is not None and state.get("normalizer") is not None:
            self.normalizer.load_state_dict(state["normalizer"])
        if self.source is not None and state.get("source") is not None:
            self.source.load_state_dict(state["source"])

    def describe(self, step: int) -> dict:
        """The objective and divergence in force at ``step`` (recorded with the metrics)."""
        return {"objective": self.cfg.objective.name, "divergence": self.objective_at(step).divergence.name}


def flow_fit_steps(ncfg, bundle) -> int:
    """``network.flow_fit_steps``; else 0 when ``network.generator_init`` starts the generator; else, for a mixture
    of ``K`` modes, ``network.flow_fit_per_mode x max(8, K)``; else the teacher bundle's default
    (``fdistill.teachers``): ``750 x max(8, K)`` for a mixture, 0 for networks (whose probability-flow map costs 35
    network evaluations per pair)."""
    if ncfg.flow_fit_steps is not None:
        return int(ncfg.flow_fit_steps)
    if getattr(ncfg, "generator_init", ""):
        return 0  # a trained generator starts the run (network.generator_init): no warm start
    per_mode = getattr(ncfg, "flow_fit_per_mode", None)
    if per_mode is not None:
        if bundle.mixture is None:
            from ..config import ConfigError

            raise ConfigError(f"network.flow_fit_per_mode={per_mode} counts a mixture teacher's modes; a "
                              f"{bundle.kind!r} teacher has none: set network.flow_fit_steps instead")
        from ..teachers.mixture import flow_fit_steps_for

        return flow_fit_steps_for(bundle.mixture.num_components, per_mode)
    return int(bundle.flow_fit_steps)


def flow_fit_betas(ncfg) -> tuple[float, float]:
    """The warm start's Adam betas: ``network.flow_fit_betas``, or (0.9, 0.99) (``fdistill.optim.FLOW_MAP_BETAS``,
    MATH R1; (0.9, 0.999) until 2026-12-05)."""
    return tuple(float(b) for b in (ncfg.flow_fit_betas or FLOW_MAP_BETAS))


EPSILON_SIGMA_INIT_LIMIT = 20.0  # SD1.5's table maximum (14.6) is fine in practice (DMD2)


def warn_epsilon_amplification(generator, sigma_init: float) -> None:
    """An epsilon-prediction generator computes ``G(z) = sigma_init (z - eps_hat)``: every error of ``eps_hat`` is
    multiplied by ``sigma_init``. Measured on a digits teacher: denoising RMSE 12.2 at sigma 80 against 0.47 at
    2.5 (data in [-1, 1]), and a one-step start that is pixel noise. Warn before hours go into such a run."""
    if getattr(generator, "prediction_type", None) == "epsilon" and sigma_init > EPSILON_SIGMA_INIT_LIMIT:
        import warnings

        warnings.warn(f"the generator predicts epsilon and network.sigma_init={sigma_init:g}: G(z) = sigma_init * "
                      f"(z - eps_hat) multiplies the network's error {sigma_init:g} times. Use a v-prediction or "
                      f"sample-prediction teacher (network.prediction_type for teachers trained here), or "
                      f"network.sigma_init <= {EPSILON_SIGMA_INIT_LIMIT:g} (e.g. 2.5 as SiD, or the table's "
                      f"maximum for SD-like schedules)", stacklevel=2)


METHOD = Distiller
