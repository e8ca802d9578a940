"""SOLOv2's heads (spec section 3): the instance head (category, dynamic-kernel and embedding predictions on
``S x S`` grids, one set per FPN level) and the mask head (unified mask features at stride 4).

The module names equal the official ones (``ins_head.cate_tower.0.weight`` ...), so official checkpoints load into
them without renaming; so do the initialisations (normal std 0.01, category bias from the prior probability).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unsolo.modeling.layers import GroupNorm32


def coord_features(x: torch.Tensor) -> torch.Tensor:
    """CoordConv channels ``(B, 2, H, W)``: x then y, each ``linspace(-1, 1)``."""
    b, _, h, w = x.shape
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    y, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, y])[None].expand(b, -1, -1, -1)


def _conv_norm_relu(cin: int, cout: int, kernel: int, norm: str) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=norm == "none")]
    if norm == "gn":
        layers.append(GroupNorm32(32, cout))  # float32 statistics under autocast
    layers.append(nn.ReLU(inplace=False))
    return layers


class SOLOv2InsHead(nn.Module):
    """Category, kernel and embedding predictions per level on ``S x S`` grids.

    Input: five ``(B, C, Hl, Wl)`` maps. Output: lists over levels of ``cate (B, K, S, S)`` logits,
    ``kernel (B, D, S, S)`` and ``emb (B, E, S, S)``.
    """

    def __init__(self, in_channels: int, channels: int, num_convs: int, num_classes: int, num_kernels: int,
                 num_embs: int, grids: Sequence[int], norm: str = "gn", prior_prob: float = 0.01):
        super().__init__()
        self.grids = tuple(grids)
        for name, cin in (("cate", in_channels), ("kernel", in_channels + 2)):
            tower: list[nn.Module] = []
            for i in range(num_convs):
                tower += _conv_norm_relu(cin if i == 0 else channels, channels, 3, norm)
            self.add_module(f"{name}_tower", nn.Sequential(*tower))
        self.cate_pred = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.kernel_pred = nn.Conv2d(channels, num_kernels, 3, padding=1)
        self.emb_pred = nn.Conv2d(channels, num_embs, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
        nn.init.constant_(self.cate_pred.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: Sequence[torch.Tensor]):
        cates, kernels, embs = [], [], []
        for feat, s in zip(feats, self.grids):
            x = torch.cat([feat, coord_features(feat)], 1)  # (B, C+2, Hl, Wl)
            x = F.interpolate(x, size=s, mode="bilinear", align_corners=False)  # (B, C+2, S, S)
            kernel_feat = self.kernel_tower(x)
            cate_feat = self.cate_tower(x[:, :-2])
            kernels.append(self.kernel_pred(kernel_feat))  # (B, D, S, S)
            cates.append(self.cate_pred(cate_feat))  # (B, K, S, S)
            embs.append(self.emb_pred(cate_feat))  # (B, E, S, S)
        return cates, kernels, embs


class SOLOv2MaskHead(nn.Module):
    """Unified mask features ``(B, D, Hp/4, Wp/4)`` (non-negative) from P2-P5."""

    def __init__(self, in_channels: int, channels: int, out_channels: int, num_levels: int = 4, norm: str = "gn"):
        super().__init__()
        self.convs_all_levels = nn.ModuleList()
        for i in range(num_levels):
            level = nn.Sequential()
            if i == 0:
                level.add_module("conv0", nn.Sequential(*_conv_norm_relu(in_channels, channels, 3, norm)))
            for j in range(i):
                cin = (in_channels + 2 if i == num_levels - 1 else in_channels) if j == 0 else channels
                level.add_module(f"conv{j}", nn.Sequential(*_conv_norm_relu(cin, channels, 3, norm)))
                level.add_module(f"upsample{j}", nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.convs_all_levels.append(level)
        self.conv_pred = nn.Sequential(*_conv_norm_relu(channels, out_channels, 1, norm))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        total = self.convs_all_levels[0](feats[0])  # (B, Cm, Hp/4, Wp/4)
        last = len(self.convs_all_levels) - 1
        for i in range(1, len(self.convs_all_levels)):
            x = feats[i]
            if i == last:
                x = torch.cat([x, coord_features(x)], 1)
            total = total + self.convs_all_levels[i](x)  # not in place (official issue #3)
        return self.conv_pred(total)
