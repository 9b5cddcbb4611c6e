"""EDM teacher networks: DDPM++ / NCSN++ (``SongUNet``) and ADM (``DhariwalUNet``), and ``EDMDenoiser`` (MATH §0).

``SongUNet`` and ``DhariwalUNet`` are plain networks ``F(x_in, noise_labels, class_labels, augment_labels=None)``
with the constructor arguments, defaults, parameter names and outputs of the networks released with EDM
(Karras et al. 2022, NVlabs/edm), so an EDM state dict loads into them with ``strict=True``.
``EDMDenoiser`` wraps one of them with a preconditioning (``edm``, ``vp`` or ``ve``) into the package's Denoiser
``D(x, sigma, cond)``; it holds the network as ``self.model``, so its state dict keys are ``model.<EDM key>``
exactly as in EDM's ``EDMPrecond`` / ``VPPrecond`` / ``VEPrecond``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from ..denoiser import DenoiserMixin, expand_sigma, sigma_per_sample
from .edm_layers import Conv, Dense, FourierEmbedding, GroupNorm, PositionalEmbedding, UNetBlock
from .precond import coefficients, denoiser_output


def _drop_labels(labels: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Label dropout for classifier-free guidance: zero the class vector of a random fraction ``p`` of samples."""
    if not (training and p):
        return labels
    keep = torch.rand(labels.shape[0], 1, device=labels.device) >= p
    return labels * keep.to(labels.dtype)


def _labels_or_zeros(class_labels, label_dim: int, like: torch.Tensor) -> torch.Tensor:
    if class_labels is None:
        return like.new_zeros(like.shape[0], label_dim)
    return class_labels.to(like.dtype).reshape(-1, label_dim)


class _EDMUNet(nn.Module):
    """Shared forward pass: mapping network, encoder with skip stack, decoder.

    Subclasses define ``_embed(noise_labels, class_labels, augment_labels) -> emb`` (their mapping network), fill
    ``self.enc`` / ``self.dec`` (``ModuleDict``s named as in EDM) and the plans
    ``self._enc_plan`` / ``self._dec_plan``: ``(name, role, resolution)`` triples that say what each entry does.
    """

    def _encode(self, x, emb):
        """Run the encoder. Returns ``(x, skips, last_per_resolution)``."""
        skips, last, aux = [], {}, x
        for name, role, res in self._enc_plan:
            block = self.enc[name]
            if role == "aux_down":  # skip encoder: downsample the input image
                aux = block(aux)
            elif role == "aux_skip":  # skip encoder: add a projection of it
                x = skips[-1] = x + block(aux)
            elif role == "aux_residual":  # residual encoder (NCSN++): running average of a parallel path
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if role == "block" else block(x)
                skips.append(x)
            last[res] = x
        return x, skips, last

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self._embed(noise_labels, class_labels, augment_labels)
        x, skips, _ = self._encode(x, emb)
        out = None  # SongUNet output accumulator (sum of per-resolution output heads)
        head = None
        for name, role, _ in self._dec_plan:
            block = self.dec[name]
            if role == "block_cat":
                x = block(torch.cat([x, skips.pop()], dim=1), emb)
            elif role == "block":
                x = block(x, emb)
            elif role == "aux_up":
                out = block(out)
            elif role == "aux_norm":
                head = block(x)
            elif role == "aux_conv":
                head = block(F.silu(head))
                out = head if out is None else out + head
        return self._output(x, out)

    def _output(self, x, out):
        return out

    def features(self, x, noise_labels, class_labels, augment_labels=None) -> list[torch.Tensor]:
        """Encoder activations: the output of the last encoder block at each resolution (high to low), then the
        bottleneck (the two lowest-resolution decoder blocks ``in0``, ``in1``). The decoder is not run."""
        emb = self._embed(noise_labels, class_labels, augment_labels)
        x, _, last = self._encode(x, emb)
        feats = [last[res] for res in sorted(last, reverse=True)]
        for name, _, _ in self._dec_plan[:2]:
            x = self.dec[name](x, emb)
        return feats + [x]


class SongUNet(_EDMUNet):
    """DDPM++ (``embedding_type='positional'``, ``encoder_type='standard'``, ``resample_filter=[1,1]``) and
    NCSN++ (``'fourier'``, ``channel_mult_noise=2``, ``'residual'``, ``[1,3,3,1]``) of Song et al. (2021), with the
    constructor of EDM's ``SongUNet``.

    Every resolution ``img_resolution >> level`` has ``num_blocks`` residual blocks (self-attention at
    ``attn_resolutions``); the decoder mirrors the encoder with concatenated skips and one more block per level.
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[int] = (1, 1),
    ):
        for arg, value, valid in [("embedding_type", embedding_type, ("fourier", "positional")),
                                  ("encoder_type", encoder_type, ("standard", "skip", "residual")),
                                  ("decoder_type", decoder_type, ("standard", "skip"))]:
            if value not in valid:
                raise ValueError(f"unknown {arg} {value!r}; valid: {list(valid)}")
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        blk = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                   resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                   init=init, init_zero=init_zero, init_attn=init_attn)
        attn_resolutions = set(attn_resolutions)

        # Mapping network: noise embedding (+ class, + augmentation) -> two dense layers.
        self.map_noise = PositionalEmbedding(noise_channels, endpoint=True) if embedding_type == "positional" \
            else FourierEmbedding(noise_channels)
        self.map_label = Dense(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Dense(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Dense(noise_channels, emb_channels, **init)
        self.map_layer1 = Dense(emb_channels, emb_channels, **init)

        # Encoder.
        self.enc, self._enc_plan = nn.ModuleDict(), []

        def add_enc(name, role, res, module):
            self.enc[name] = module
            self._enc_plan.append((name, role, res))

        c, c_aux = in_channels, in_channels
        skip_channels = []
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            tag = f"{res}x{res}"
            if level == 0:
                add_enc(f"{tag}_conv", "conv", res, Conv(c, model_channels, kernel=3, **init))
                c = model_channels
            else:
                add_enc(f"{tag}_down", "block", res, UNetBlock(c, c, down=True, **blk))
                if encoder_type == "skip":
                    add_enc(f"{tag}_aux_down", "aux_down", res,
                            Conv(c_aux, c_aux, kernel=0, down=True, resample_filter=resample_filter))
                    add_enc(f"{tag}_aux_skip", "aux_skip", res, Conv(c_aux, c, kernel=1, **init))
                elif encoder_type == "residual":
                    add_enc(f"{tag}_aux_residual", "aux_residual", res,
                            Conv(c_aux, c, kernel=3, down=True, resample_filter=resample_filter,
                                 fused_resample=True, **init))
                    c_aux = c
            skip_channels.append(c)
            for i in range(num_blocks):
                c_out = model_channels * mult
                add_enc(f"{tag}_block{i}", "block", res,
                        UNetBlock(c, c_out, attention=res in attn_resolutions, **blk))
                c = c_out
                skip_channels.append(c)

        # Decoder.
        self.dec, self._dec_plan = nn.ModuleDict(), []

        def add_dec(name, role, res, module):
            self.dec[name] = module
            self._dec_plan.append((name, role, res))

        last_level = len(channel_mult) - 1
        for level in reversed(range(len(channel_mult))):
            res = img_resolution >> level
            tag = f"{res}x{res}"
            if level == last_level:
                add_dec(f"{tag}_in0", "block", res, UNetBlock(c, c, attention=True, **blk))
                add_dec(f"{tag}_in1", "block", res, UNetBlock(c, c, **blk))
            else:
                add_dec(f"{tag}_up", "block", res, UNetBlock(c, c, up=True, **blk))
            for i in range(num_blocks + 1):
                c_out = model_channels * channel_mult[level]
                attn = i == num_blocks and res in attn_resolutions
                add_dec(f"{tag}_block{i}", "block_cat", res,
                        UNetBlock(c + skip_channels.pop(), c_out, attention=attn, **blk))
                c = c_out
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < last_level:
                    add_dec(f"{tag}_aux_up", "aux_up", res,
                            Conv(out_channels, out_channels, kernel=0, up=True, resample_filter=resample_filter))
                add_dec(f"{tag}_aux_norm", "aux_norm", res, GroupNorm(c, eps=1e-6))
                add_dec(f"{tag}_aux_conv", "aux_conv", res, Conv(c, out_channels, kernel=3, **init_zero))

    def _embed(self, noise_labels, class_labels, augment_labels):
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # [cos, sin] -> [sin, cos]
        if self.map_label is not None:
            labels = _labels_or_zeros(class_labels, self.map_label.in_features, emb)
            labels = _drop_labels(labels, self.label_dropout, self.training)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        return F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))


class DhariwalUNet(_EDMUNet):
    """ADM (Dhariwal & Nichol 2021) with the constructor of EDM's ``DhariwalUNet`` (its ImageNet-64 teacher).

    Scale-shift conditioning, 64 channels per attention head, attention at ``attn_resolutions``.
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (32, 16, 8),
        dropout: float = 0.10,
        label_dropout: float = 0,
    ):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        blk = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero)
        attn_resolutions = set(attn_resolutions)

        # Mapping network.
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Dense(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Dense(model_channels, emb_channels, **init)
        self.map_layer1 = Dense(emb_channels, emb_channels, **init)
        self.map_label = Dense(label_dim, emb_channels, bias=False, init_mode="kaiming_normal",
                               init_weight=math.sqrt(label_dim)) if label_dim else None

        # Encoder.
        self.enc, self._enc_plan = nn.ModuleDict(), []
        c = in_channels
        skip_channels = []
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            tag = f"{res}x{res}"
            if level == 0:
                self.enc[f"{tag}_conv"] = Conv(c, model_channels * mult, kernel=3, **init)
                self._enc_plan.append((f"{tag}_conv", "conv", res))
                c = model_channels * mult
            else:
                self.enc[f"{tag}_down"] = UNetBlock(c, c, down=True, **blk)
                self._enc_plan.append((f"{tag}_down", "block", res))
            skip_channels.append(c)
            for i in range(num_blocks):
                c_out = model_channels * mult
                self.enc[f"{tag}_block{i}"] = UNetBlock(c, c_out, attention=res in attn_resolutions, **blk)
                self._enc_plan.append((f"{tag}_block{i}", "block", res))
                c = c_out
                skip_channels.append(c)

        # Decoder.
        self.dec, self._dec_plan = nn.ModuleDict(), []
        for level in reversed(range(len(channel_mult))):
            res = img_resolution >> level
            tag = f"{res}x{res}"
            if level == len(channel_mult) - 1:
                self.dec[f"{tag}_in0"] = UNetBlock(c, c, attention=True, **blk)
                self.dec[f"{tag}_in1"] = UNetBlock(c, c, **blk)
                self._dec_plan += [(f"{tag}_in0", "block", res), (f"{tag}_in1", "block", res)]
            else:
                self.dec[f"{tag}_up"] = UNetBlock(c, c, up=True, **blk)
                self._dec_plan.append((f"{tag}_up", "block", res))
            for i in range(num_blocks + 1):
                c_out = model_channels * channel_mult[level]
                self.dec[f"{tag}_block{i}"] = UNetBlock(c + skip_channels.pop(), c_out,
                                                        attention=res in attn_resolutions, **blk)
                self._dec_plan.append((f"{tag}_block{i}", "block_cat", res))
                c = c_out
        self.out_norm = GroupNorm(c)
        self.out_conv = Conv(c, out_channels, kernel=3, **init_zero)

    def _embed(self, noise_labels, class_labels, augment_labels):
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            labels = _labels_or_zeros(class_labels, self.map_label.in_features, emb)
            emb = emb + self.map_label(_drop_labels(labels, self.label_dropout, self.training))
        return F.silu(emb)

    def _output(self, x, out):
        return self.out_conv(F.silu(self.out_norm(x)))


ARCHITECTURES = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}
PRECONDS = ("edm", "vp", "ve")


class EDMDenoiser(DenoiserMixin, ModelMixin, ConfigMixin):
    """An EDM network with its preconditioning, as a Denoiser ``D(x, sigma, cond)`` (MATH §0).

    Args:
        arch: ``"SongUNet"`` (DDPM++ / NCSN++) or ``"DhariwalUNet"`` (ADM).
        arch_kwargs: the network's other EDM constructor arguments (``model_channels``, ``channel_mult``,
            ``embedding_type``, ``dropout``, ``augment_dim``, ...).
        precond: ``"edm"`` (EDMPrecond), ``"vp"`` (VPPrecond) or ``"ve"`` (VEPrecond).
        sigma_data: ``sigma_d`` of the EDM preconditioning.
        img_resolution, img_channels, label_dim: image size, channels, number of classes (0 = unconditional).
        precond_kwargs: the preconditioning's other EDM arguments (``beta_d``, ``beta_min``, ``M``, ``epsilon_t`` of
            VP; ``sigma_min`` / ``sigma_max``), used by the VP coefficients and by ``sigma_min`` / ``sigma_max``.

    ``cond`` is ``None`` (all-zero class vector: EDM's unconditional input, and the null label of models trained
    with ``label_dropout``), integer labels ``(B,)`` (label ``label_dim`` also means "no class"), or float class
    vectors ``(B, label_dim)`` (one-hot or mixtures).
    """

    @register_to_config
    def __init__(self, arch: str = "SongUNet", arch_kwargs: dict | None = None, precond: str = "edm",
                 sigma_data: float = 0.5, img_resolution: int = 32, img_channels: int = 3, label_dim: int = 0,
                 precond_kwargs: dict | None = None):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown arch {arch!r}; valid: {sorted(ARCHITECTURES)}")
        if precond not in PRECONDS:
            raise ValueError(f"unknown precond {precond!r}; valid: {list(PRECONDS)}")
        self.model = ARCHITECTURES[arch](img_resolution=img_resolution, in_channels=img_channels,
                                         out_channels=img_channels, label_dim=label_dim, **(arch_kwargs or {}))

    # ------------------------------------------------------------------ preconditioning (MATH §0)
    @property
    def sample_shape(self) -> tuple:
        """Shape of one sample (the Denoiser interface): ``(img_channels, img_resolution, img_resolution)``."""
        c = self.config
        return (int(c.img_channels), int(c.img_resolution), int(c.img_resolution))

    def coefficients(self, sigma: torch.Tensor):
        """``c_skip, c_out, c_in, c_noise`` of the configured preconditioning."""
        extra = self.config.precond_kwargs or {}
        return coefficients(self.config.precond, sigma, self.config.sigma_data,
                            **{k: extra[k] for k in ("beta_d", "beta_min", "M") if k in extra})

    @property
    def sigma_min(self) -> float:
        """Lowest supported noise level: EDM's ``net.sigma_min`` (0.002, EDM's sampler range, when unset)."""
        extra = self.config.precond_kwargs or {}
        if "sigma_min" in extra:
            return float(extra["sigma_min"])
        if self.config.precond == "vp":  # VPPrecond: sigma(epsilon_t)
            t, bd, bm = extra.get("epsilon_t", 1e-5), extra.get("beta_d", 19.9), extra.get("beta_min", 0.1)
            return math.sqrt(math.expm1(0.5 * bd * t**2 + bm * t))
        return 0.002

    @property
    def sigma_max(self) -> float:
        """Highest supported noise level: EDM's ``net.sigma_max`` (80, EDM's sampler range, when unset)."""
        extra = self.config.precond_kwargs or {}
        if "sigma_max" in extra:
            return float(extra["sigma_max"])
        if self.config.precond == "vp":  # VPPrecond: sigma(1)
            bd, bm = extra.get("beta_d", 19.9), extra.get("beta_min", 0.1)
            return math.sqrt(math.expm1(0.5 * bd + bm))
        return 80.0

    def class_vectors(self, cond, batch: int, device, dtype) -> torch.Tensor | None:
        """The network's class input ``(B, label_dim)`` from ``cond`` (``None`` for unconditional networks)."""
        n = self.config.label_dim
        if n == 0:
            return None
        if cond is None:
            return torch.zeros(batch, n, device=device, dtype=dtype)
        cond = torch.as_tensor(cond, device=device)
        if cond.is_floating_point() and cond.ndim >= 1 and cond.shape[-1] == n:
            vec = cond.to(dtype).reshape(-1, n)
        elif not cond.is_floating_point() and cond.ndim <= 1:
            labels = cond.long().reshape(-1)
            if (labels < 0).any() or (labels > n).any():
                raise ValueError(f"class labels must lie in [0, {n}] ({n} = no class), got {labels.tolist()}")
            vec = F.one_hot(labels, n + 1)[:, :n].to(dtype)
        else:
            raise ValueError(f"cond must be integer labels (B,) or class vectors (B, {n}); "
                             f"got {tuple(cond.shape)} of {cond.dtype}")
        return vec.expand(batch, n) if vec.shape[0] == 1 else vec

    def _network_inputs(self, x, sigma, cond):
        s = expand_sigma(sigma, x)
        c_skip, c_out, c_in, _ = self.coefficients(s)
        c_noise = self.coefficients(sigma_per_sample(sigma, x))[3]
        dtype = next(self.model.parameters()).dtype
        labels = self.class_vectors(cond, x.shape[0], x.device, dtype)
        # The mapping network runs in at least float32 (as EDM's does under use_fp16).
        c_noise = c_noise.to(torch.promote_types(dtype, torch.float32))
        return (c_in * x).to(dtype), c_noise, labels, c_skip, c_out

    def forward(self, x, sigma, cond=None, augment_labels=None):
        x_in, c_noise, labels, c_skip, c_out = self._network_inputs(x, sigma, cond)
        return denoiser_output(x, c_skip, c_out, self.model(x_in, c_noise, labels, augment_labels))

    def features(self, x, sigma, cond=None, augment_labels=None) -> list[torch.Tensor]:
        """Encoder activations at the preconditioned input (discriminator taps, MATH §3): the last encoder block of
        each resolution, high to low, then the bottleneck. Only the encoder and bottleneck run."""
        x_in, c_noise, labels, _, _ = self._network_inputs(x, sigma, cond)
        return self.model.features(x_in, c_noise, labels, augment_labels)
