"""Feature Pyramid Network as detectron2 builds it for FreeSOLO (``build_resnet_fpn_backbone``).

Lateral 1x1 and output 3x3 convolutions with bias and no norm (``FPN.NORM=""``), top-down nearest x2
upsampling with sum, and ``P6 = max_pool(P5, kernel 1, stride 2)`` (``LastLevelMaxPool``). Convolutions are
initialised with ``c2_xavier_fill`` (kaiming-uniform with a=1, bias 0).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def c2_xavier_fill(module: nn.Conv2d) -> None:
    """Caffe2's XavierFill as detectron2 implements it: kaiming-uniform (a=1) weights, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


class FPN(nn.Module):
    """C2..C5 -> P2..P6 with ``out_channels`` each (strides 4, 8, 16, 32, 64).

    Module names ``lateral{2..5}`` / ``output{2..5}`` correspond to detectron2's ``fpn_lateral{k}`` /
    ``fpn_output{k}`` (see :mod:`unsolo.compat.official`).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError("FPN expects the channels of C2..C5")
        self.out_channels = out_channels
        for level, c in zip(range(2, 6), in_channels):
            lateral = nn.Conv2d(c, out_channels, kernel_size=1)
            output = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"lateral{level}", lateral)
            self.add_module(f"output{level}", output)

    def forward(self, feats: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        prev = self.lateral5(feats["res5"])  # (B, C, H/32, W/32)
        outs = [self.output5(prev)]
        for level in (4, 3, 2):
            top_down = F.interpolate(prev, scale_factor=2.0, mode="nearest")
            prev = getattr(self, f"lateral{level}")(feats[f"res{level}"]) + top_down
            outs.insert(0, getattr(self, f"output{level}")(prev))
        outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2, padding=0))  # P6
        return outs  # [P2, P3, P4, P5, P6]
