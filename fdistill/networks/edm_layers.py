"""Building blocks of the EDM U-Nets (DDPM++, NCSN++ and ADM), parameter-compatible with NVlabs/edm checkpoints.

Every layer keeps the attribute and buffer names of the released networks (``weight``, ``bias``,
``resample_filter``, ``freqs``, ``norm0`` ... ``proj``) so that their state dicts load with ``strict=True``.
Weights are cast to the activation dtype on use, so a float32 network can run on float16/bfloat16 activations
(what EDM's ``use_fp16`` does) and a network converted to bfloat16 runs as it is.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

INIT_MODES = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal")


def draw_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """Random initial values with the variance of the named scheme (uniform draws span ``[-a, a]``)."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (2 * torch.rand(*shape) - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (2 * torch.rand(*shape) - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init mode {mode!r}; valid: {list(INIT_MODES)}")


def _cast(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.to(like.dtype)


class Dense(nn.Module):
    """``y = x W^T + b`` with EDM's initialisation options (``init_weight`` / ``init_bias`` scale the draws)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_mode: str = "kaiming_normal",
                 init_weight: float = 1.0, init_bias: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        draw = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(draw_init([out_features, in_features], **draw) * init_weight)
        self.bias = nn.Parameter(draw_init([out_features], **draw) * init_bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), _cast(self.bias, x))


def resample_kernel(taps: Sequence[float]) -> torch.Tensor:
    """Separable 2-D low-pass kernel ``(1, 1, k, k)`` from 1-D taps, normalised to sum 1.

    ``[1, 1]`` is a box filter (DDPM++, ADM), ``[1, 3, 3, 1]`` a bilinear one (NCSN++).
    """
    f = torch.as_tensor(list(taps), dtype=torch.float32)
    return (torch.outer(f, f) / f.sum() ** 2)[None, None]


class Conv(nn.Module):
    """3x3 / 1x1 convolution with optional 2x up- or downsampling by a fixed low-pass filter.

    ``kernel=0`` makes a pure resampler (no weight). With ``fused_resample`` the convolution and the filter are
    applied back to back at the padded resolution (the order EDM's NCSN++ residual encoder uses).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[float] = (1, 1), fused_resample: bool = False,
                 init_mode: str = "kaiming_normal", init_weight: float = 1.0, init_bias: float = 0.0):
        if up and down:
            raise ValueError("a convolution resamples up or down, not both")
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        draw = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = nn.Parameter(
            draw_init([out_channels, in_channels, kernel, kernel], **draw) * init_weight
        ) if kernel else None
        self.bias = nn.Parameter(draw_init([out_channels], **draw) * init_bias) \
            if kernel and bias else None
        self.register_buffer("resample_filter", resample_kernel(resample_filter) if up or down else None)

    def _upsample(self, x, f, padding):
        kernel = (4 * f).expand(x.shape[1], 1, -1, -1)
        return F.conv_transpose2d(x, kernel, stride=2, padding=padding, groups=x.shape[1])

    def _downsample(self, x, f, padding):
        return F.conv2d(x, f.expand(x.shape[1], 1, -1, -1), stride=2, padding=padding, groups=x.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b, f = _cast(self.weight, x), _cast(self.bias, x), _cast(self.resample_filter, x)
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and w is not None and self.up:
            x = F.conv2d(self._upsample(x, f, w_pad + f_pad), w)
        elif self.fused_resample and w is not None and self.down:
            x = self._downsample(F.conv2d(x, w, padding=w_pad + f_pad), f, 0)
        else:
            if self.up:
                x = self._upsample(x, f, f_pad)
            if self.down:
                x = self._downsample(x, f, f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        return x if b is None else x + b.reshape(1, -1, 1, 1)


class GroupNorm(nn.Module):
    """Group normalisation with at most ``num_groups`` groups and at least ``min_channels_per_group`` per group."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = max(1, min(num_groups, num_channels // min_channels_per_group))
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def self_attention(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Multi-head self-attention over the pixels of ``qkv`` ``(B, 3C, H, W)`` -> ``(B, C, H, W)``.

    Channel layout of the released checkpoints: per head, ``C/heads`` groups of the three entries (q, k, v).
    Logits ``q.k / sqrt(C/heads)``; the softmax runs in float32 whatever the activation dtype.
    """
    b, c3, h, w = qkv.shape
    c = c3 // 3
    d = c // num_heads
    # (B, heads, HW, C/heads), contiguous: the 4-D layout PyTorch's fused (flash / memory-efficient) SDPA kernels take
    q, k, v = (t.reshape(b, num_heads, d, h * w).transpose(2, 3).contiguous()
               for t in qkv.reshape(b * num_heads, d, 3, h * w).unbind(2))
    if qkv.dtype == torch.float32 or qkv.device.type == "cuda":
        out = F.scaled_dot_product_attention(q, k, v)
    else:  # half precision on CPU: explicit float32 softmax
        logits = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(d)
        out = logits.softmax(dim=-1).to(v.dtype) @ v
    return out.transpose(2, 3).reshape(b, c, h, w)


class UNetBlock(nn.Module):
    """Residual block of the EDM U-Nets: norm-SiLU-conv, noise/class embedding (additive or scale-shift),
    norm-SiLU-dropout-conv, skip connection, then optional self-attention. Optionally resamples 2x."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, num_heads: int | None = None, channels_per_head: int = 64,
                 dropout: float = 0.0, skip_scale: float = 1.0, eps: float = 1e-5,
                 resample_filter: Sequence[float] = (1, 1), resample_proj: bool = False, adaptive_scale: bool = True,
                 init: dict | None = None, init_zero: dict | None = None, init_attn: dict | None = None):
        super().__init__()
        init = dict(init or {})
        init_zero = dict(init_weight=0) if init_zero is None else dict(init_zero)
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        if attention:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        else:
            self.num_heads = 0
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale

        resample = dict(up=up, down=down, resample_filter=resample_filter)
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv(in_channels, out_channels, kernel=3, **resample, **init)
        self.affine = Dense(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            project = resample_proj or out_channels != in_channels
            self.skip = Conv(in_channels, out_channels, kernel=1 if project else 0, **resample, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv(out_channels, out_channels * 3, kernel=1, **(init if init_attn is None else init_attn))
            self.proj = Conv(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.skip is None else self.skip(x)
        h = self.conv0(F.silu(self.norm0(x)))
        mod = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = mod.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(h + mod))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        h = (h + shortcut) * self.skip_scale
        if self.num_heads:
            a = self_attention(self.qkv(self.norm2(h)), self.num_heads)
            h = (self.proj(a) + h) * self.skip_scale
        return h


class PositionalEmbedding(nn.Module):
    """Transformer sinusoidal embedding ``[cos(x w_i), sin(x w_i)]``.

    ``w_i = max_positions^(-i / (n/2 - endpoint))`` for ``i < n/2``.
    """

    def __init__(self, num_channels: int, max_positions: int = 10_000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        i = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        ang = torch.outer(x, (1 / self.max_positions) ** i.to(x.dtype))
        return torch.cat([ang.cos(), ang.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features ``[cos(2 pi x f_i), sin(2 pi x f_i)]``, ``f_i ~ N(0, scale^2)`` stored as a buffer."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ang = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([ang.cos(), ang.sin()], dim=1)
