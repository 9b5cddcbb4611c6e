"""Build student networks from a config (the only place that knows the network architectures); teachers come from
``fdistill.teachers`` (one module per teacher kind)."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .networks import ClassifierFreeGuidance, DiffusersDenoiser, GaussianMixture, MLPDenoiser, TeacherResidual


def build_gmm_teacher(tcfg) -> GaussianMixture:
    """The analytic teacher of a ``teacher`` config section (``fdistill.teachers.mixture.build_mixture``)."""
    from .teachers.mixture import build_mixture

    return build_mixture(tcfg)


def guided(teacher: nn.Module, tcfg, null_cond=None) -> nn.Module:
    """Classifier-free guidance around the teacher when ``guidance_scale != 1``. ``null_cond``: the conditioner's
    (the empty prompt's embedding for text models); default: the null label ``num_classes``."""
    if tcfg.guidance_scale == 1.0:
        return teacher
    if null_cond is None:
        if tcfg.num_classes <= 0:
            raise ValueError("teacher.guidance_scale != 1 needs a conditional teacher (teacher.num_classes > 0)")
        null_cond = tcfg.num_classes
    return ClassifierFreeGuidance(teacher, tcfg.guidance_scale, null_cond=null_cond)


def sample_shape(denoiser: nn.Module) -> tuple:
    """Shape of one sample ``(d,)`` or ``(C, H, W)``: the Denoiser interface's ``sample_shape``."""
    shape = getattr(denoiser, "sample_shape", None)
    if shape is None:
        raise TypeError(f"cannot tell the sample shape of {type(denoiser).__name__}: a Denoiser states it as its "
                        f"`sample_shape` property (fdistill.denoiser)")
    return tuple(shape)


def build_network(ncfg, shape: tuple, num_classes: int = 0, scale=None) -> nn.Module:
    """A fresh (random) Denoiser for data of ``shape``: MLP for vectors, a diffusers UNet2DModel or an EDM SongUNet
    for images. ``scale`` (a ``fdistill.scale.DataScale``): the data scale and mean an MLP is built for (MATH §0,
    scale from the teacher); ``network.sigma_data`` overrides its ``sigma_data``."""
    sigma_data = ncfg.sigma_data or (scale.sigma_data if scale is not None else 0.5)
    if len(shape) == 1:
        if ncfg.arch != "mlp":
            raise ValueError(f"network.arch={ncfg.arch!r} is for images; vectors of shape {shape} need 'mlp'")
        mean = None if scale is None or scale.mean is None else list(scale.mean)
        return MLPDenoiser(dim=shape[0], hidden=ncfg.hidden, depth=ncfg.depth, num_classes=num_classes,
                           sigma_data=sigma_data, data_mean=mean, noise_label="relative",
                           fourier_features=ncfg.fourier_features, fourier_scale=ncfg.fourier_scale)
    c, h, _ = shape
    chans = list(ncfg.channels)
    if ncfg.arch == "unet2d":
        from diffusers import UNet2DModel

        down = ["DownBlock2D"] * len(chans)
        up = ["UpBlock2D"] * len(chans)
        if ncfg.attention:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        unet = UNet2DModel(sample_size=h, in_channels=c, out_channels=c, block_out_channels=chans,
                           down_block_types=down, up_block_types=up, layers_per_block=1,
                           norm_num_groups=min(8, chans[0]), num_class_embeds=num_classes + 1 if num_classes else None)
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        return DiffusersDenoiser(unet, torch.cumprod(1 - betas, 0), ncfg.prediction_type)
    if ncfg.arch == "songunet":
        from .networks.edm import EDMDenoiser

        mult = [ch // chans[0] for ch in chans]
        return EDMDenoiser(arch="SongUNet", img_resolution=h, img_channels=c, label_dim=num_classes,
                           sigma_data=sigma_data,
                           arch_kwargs=dict(model_channels=chans[0], channel_mult=mult, num_blocks=1,
                                            attn_resolutions=[h // 2 ** (len(chans) - 1)] if ncfg.attention else []))
    raise ValueError(f"network.arch={ncfg.arch!r} cannot build images; valid for images: ['unet2d', 'songunet']")


def fit_to_teacher(net: nn.Module, teacher: nn.Module, steps: int, batch_size: int = 512, lr: float = 1e-3,
                   seed: int = 0, progress: bool = False, sigma_data: float | None = None) -> nn.Module:
    """Warm start for an analytic teacher: regress ``net`` onto the teacher's exact denoiser at EDM's training noise
    levels (MATH §4 weighting, widened to ``p_std = 1.6``), in units of ``sigma_data`` (default: the teacher's), so that
    generator and fake score start from a network that *is* the teacher."""
    from tqdm.auto import tqdm

    from .networks.precond import edm_loss_weight
    from .noise_levels import LogNormal

    sd = float(sigma_data or teacher.sigma_data)
    levels = LogNormal(p_std=1.6, sigma_data=sd)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    shape = sample_shape(teacher)
    for i in tqdm(range(steps), desc="fit teacher", disable=not progress, leave=False):
        x0 = teacher.sample(batch_size, generator=g).float()
        sigma = levels.sample(batch_size, generator=g)
        x = x0 + sigma.reshape(-1, *([1] * len(shape))) * torch.randn(x0.shape, generator=g)
        with torch.no_grad():
            target = teacher(x.double(), sigma.double()).float()
        w = edm_loss_weight(sigma, sd).reshape(-1, *([1] * len(shape)))
        loss = (w * (net(x, sigma) - target) ** 2).mean()
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * i / steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.zero_grad(set_to_none=True)  # no gradient left behind for whoever trains the net next
    return net


def student_networks(cfg, bundle, progress: bool = False, scale=None):
    """Generator and fake-score networks for the teacher of ``bundle`` (``fdistill.teachers.TeacherBundle``): copies
    of the teacher (warm start, MATH §0), or of an MLP built for the teacher's ``scale`` and fitted to an analytic
    teacher, or random; for an analytic teacher the fake score is by default the exact teacher plus a
    zero-initialised correction (MATH R2, ``network.fake_score``)."""
    teacher, shape, num_classes = bundle.denoiser, bundle.sample_shape, bundle.num_classes
    residual = fake_score_kind(cfg.network, bundle) == "residual"
    if cfg.network.init == "random":
        gen = build_network(cfg.network, shape, num_classes, scale)
        fake = None if residual else build_network(cfg.network, shape, num_classes, scale)
    else:
        if bundle.analytic:
            torch.manual_seed(cfg.seed)
            net = build_network(cfg.network, shape, num_classes, scale)
            # the fit is the generator's start, and the fake score's unless residual: none when generator_init
            # replaces the former and the latter does not need it
            needs_fit = not (cfg.network.generator_init and residual)
            base = fit_to_teacher(net, teacher, cfg.network.fit_steps, seed=cfg.seed, progress=progress,
                                  sigma_data=net.config.sigma_data) if needs_fit else net
        else:
            base = teacher
        gen = copy.deepcopy(base).requires_grad_(True).train()
        fake = None if residual else copy.deepcopy(base).requires_grad_(True).train()
    if cfg.network.generator_init:
        from .saved_models import init_from_generator

        sigma_init = None if scale is None else sigma_init_of(cfg.network, scale)
        init_from_generator(gen, cfg.network.generator_init, sigma_init)
    if residual:
        torch.manual_seed(cfg.seed + 1)
        fake = TeacherResidual(teacher, build_network(cfg.network, shape, num_classes, scale)).train()
    return _unet_options(cfg.network, gen, fake)


def sigma_init_of(ncfg, scale) -> float:
    """The one-step generator's input noise level (MATH §0): ``network.sigma_init``, else the teacher's largest."""
    return float(ncfg.sigma_init or scale.sigma_max)


def fake_score_kind(ncfg, bundle) -> str:
    """``network.fake_score`` resolved for the teacher of ``bundle``: ``residual`` (MATH R2) needs an analytic teacher
    and is its default; a network teacher's fake score is a copy of its weights."""
    kind = ncfg.fake_score
    analytic = bundle.analytic
    if kind == "residual" and not analytic:
        raise ValueError(f"network.fake_score=residual needs an analytic teacher (teacher.kind=gmm); a "
                         f"{type(bundle.denoiser).__name__} teacher's fake score starts as a copy of its weights, which already "
                         f"represents the teacher exactly: use network.fake_score=copy or auto")
    if kind == "auto":
        return "residual" if analytic else "copy"
    return kind


def _unet_options(ncfg, gen, fake):
    """Gradient checkpointing (generator and fake score) and a LoRA generator, for diffusers UNets."""
    if ncfg.gradient_checkpointing or ncfg.lora_rank > 0:
        for net in (gen, fake):
            if not isinstance(net, DiffusersDenoiser):
                raise ValueError("network.gradient_checkpointing / network.lora_rank need diffusers UNets "
                                 f"(teacher.kind diffusers or sd); got {type(net).__name__}")
    if ncfg.gradient_checkpointing:
        for net in (gen, fake):
            net.unet.enable_gradient_checkpointing()
    if ncfg.lora_rank > 0:
        from .networks.lora import add_lora

        gen = add_lora(gen, ncfg.lora_rank, ncfg.lora_alpha, list(ncfg.lora_targets))
    return gen, fake
