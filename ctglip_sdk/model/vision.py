"""Dense 3-D vision encoders (tiny CNN, MONAI DynUNet encoder-decoder, 3-D ViT) returning a feature grid."""

from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from ctglip_sdk.model.config import VisionConfig

__all__ = ["VisionEncoder", "TinyCNN", "DynUNetEncoder", "ViTEncoder", "build_vision"]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    # GroupNorm rather than BatchNorm: training batches are one or two studies.
    return nn.GroupNorm(math.gcd(8, channels), channels)


class VisionEncoder(nn.Module):
    """Base: ``forward(x [B, C_in, X, Y, Z]) -> features [B, out_channels, X/s, Y/s, Z/s]``.

    ``size_divisor`` is the multiple every input side must have (the preprocessing pads to it);
    ``feature_stride`` is ``s``.
    """

    feature_stride: int = 1
    size_divisor: int = 1
    out_channels: int = 1


class _ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, norm: str, stride: int = 1, kernel: int = 3) -> None:
        super().__init__(
            nn.Conv3d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2 if stride == 1 or kernel == 3 else 0,
                      bias=False),
            _norm(norm, cout),
            nn.LeakyReLU(0.01, inplace=True),
        )


class _ResBlock(nn.Module):
    def __init__(self, channels: int, norm: str, dropout: float) -> None:
        super().__init__()
        self.conv1 = _ConvNormAct(channels, channels, norm)
        self.drop = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, channels)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.norm2(self.conv2(self.drop(self.conv1(x)))))


class TinyCNN(VisionEncoder):
    """Small residual CNN with a top-down path: stages at strides 2, 4, 8, ...; deeper stages add context.

    The stem is a 2x2x2 patchifying convolution: full resolution holds most voxels, and oneDNN falls back to
    a slow kernel for 3x3x3 convolutions on 1-2 input channels, so nothing runs at full resolution. Each
    later stage is a strided convolution plus ``depth`` residual blocks. Stages deeper than
    ``feature_stride`` are upsampled and summed FPN-style into the map at ``feature_stride``.
    """

    def __init__(self, cfg: VisionConfig, in_channels: int) -> None:
        super().__init__()
        ch = cfg.channels
        self.feature_stride = cfg.feature_stride
        self.size_divisor = 2 ** len(ch)
        self.out_channels = cfg.out_channels
        self.level = int(math.log2(cfg.feature_stride)) - 1  # index into the per-stage feature list
        self.stem = _ConvNormAct(in_channels, ch[0], cfg.norm, stride=2, kernel=2)
        self.stages = nn.ModuleList()
        for i in range(1, len(ch)):
            blocks: List[nn.Module] = [_ConvNormAct(ch[i - 1], ch[i], cfg.norm, stride=2)]
            blocks += [_ResBlock(ch[i], cfg.norm, cfg.dropout) for _ in range(cfg.depth)]
            self.stages.append(nn.Sequential(*blocks))
        width = cfg.out_channels
        self.lateral = nn.ModuleList([nn.Conv3d(ch[i], width, 1) for i in range(self.level, len(ch))])
        self.fuse = _ConvNormAct(width, width, cfg.norm)
        self.head = nn.Conv3d(width, cfg.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        top = self.lateral[-1](feats[-1])
        for lvl in range(len(feats) - 2, self.level - 1, -1):
            top = F.interpolate(top, size=feats[lvl].shape[2:], mode="trilinear", align_corners=False)
            top = top + self.lateral[lvl - self.level](feats[lvl])
        return self.head(self.fuse(top))


class DynUNetEncoder(VisionEncoder):
    """nnU-Net-style encoder-decoder (MONAI ``DynUNet``) whose highest-resolution decoder map is the output.

    CT-GLIP pools the top decoder map; a full-resolution decoder spends most of its time on voxels that
    mask pooling averages away, so a patchifying stem (kernel = stride = ``feature_stride``) puts the top of
    the U at the feature stride.
    """

    def __init__(self, cfg: VisionConfig, in_channels: int) -> None:
        super().__init__()
        from monai.networks.nets import DynUNet  # lazy: MONAI import is slow

        fs = cfg.feature_stride
        ch = list(cfg.channels)
        self.feature_stride = fs
        self.size_divisor = fs * 2 ** (len(ch) - 1)
        self.out_channels = cfg.out_channels
        self.stem = _ConvNormAct(in_channels, ch[0], cfg.norm, stride=fs, kernel=fs) if fs > 1 else nn.Identity()
        strides = [1] + [2] * (len(ch) - 1)
        self.unet = DynUNet(
            spatial_dims=3, in_channels=ch[0] if fs > 1 else in_channels, out_channels=cfg.out_channels,
            kernel_size=[3] * len(ch), strides=strides, upsample_kernel_size=strides[1:], filters=ch,
            dropout=cfg.dropout or None, norm_name=("INSTANCE", {"affine": True}) if cfg.norm == "instance"
            else ("GROUP", {"num_groups": math.gcd(8, min(ch))}), res_block=cfg.depth > 1,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(self.stem(x))


class _Block(nn.Module):
    """Pre-norm transformer block on ``F.scaled_dot_product_attention`` (MONAI's needs einops, not a dependency)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(VisionEncoder):
    """3-D ViT with dense patch tokens, tokens reshaped to the feature grid.

    The learned position embedding lives on ``pos_grid`` and is resized trilinearly to each input's token
    grid, so boxes of any size are encoded without cropping to a fixed size.
    """

    def __init__(self, cfg: VisionConfig, in_channels: int) -> None:
        super().__init__()
        width = cfg.channels[0]
        p = cfg.patch_size
        self.feature_stride = p
        self.size_divisor = p
        self.out_channels = cfg.out_channels
        self.patch = nn.Conv3d(in_channels, width, p, stride=p)
        self.pos = nn.Parameter(torch.zeros(1, width, *cfg.pos_grid))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList([
_Block(width, cfg.num_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth)
        ])
        self.norm = nn.LayerNorm(width)
        self.neck = nn.Conv3d(width, cfg.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x)
        grid = t.shape[2:]
        pos = self.pos if tuple(self.pos.shape[2:]) == tuple(grid) else F.interpolate(
            self.pos, size=grid, mode="trilinear", align_corners=False)
        t = (t + pos.to(t.dtype)).flatten(2).transpose(1, 2)  # [B, N, width]
        for blk in self.blocks:
            t = blk(t)
        t = self.norm(t).transpose(1, 2).reshape(x.shape[0], -1, *grid)
        return self.neck(t)


def build_vision(cfg: VisionConfig, in_channels: int) -> VisionEncoder:
    """Build the encoder named by ``cfg.arch``."""
    if cfg.arch == "tiny":
        return TinyCNN(cfg, in_channels)
    if cfg.arch == "cnn":
        return DynUNetEncoder(cfg, in_channels)
    return ViTEncoder(cfg, in_channels)
