"""ResNet backbones (torchvision definitions) returning C2-C5, with frozen BatchNorm.

FreeSOLO (Free Mask and SOLOv2) uses detectron2's ResNet with ``FrozenBN``: BatchNorm uses its stored
statistics and fixed affine parameters, in training as in inference, while every convolution trains
(``FREEZE_AT: 0``). The stride sits on the 3x3 convolution (torchvision / "pytorch" style), as in DenseCL, so
a DenseCL or torchvision state dict loads by name.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")

#: Channels of C2..C5 per architecture.
OUT_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
}

#: ImageNet statistics x 255, RGB order (FreeSOLO's PIXEL_MEAN / PIXEL_STD).
PIXEL_MEAN = (123.675, 116.280, 103.530)
PIXEL_STD = (58.395, 57.120, 57.375)


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without ``avgpool``/``fc``; ``forward`` returns ``{"res2".."res5"}``.

    Args:
        arch: one of :data:`ARCHS`.
        norm: ``"frozen_bn"`` (FreeSOLO: fixed statistics and affine) or ``"bn"`` (trainable, for DenseCL).

    Input: ``float32 (B, 3, H, W)``, already normalised. Output strides 4, 8, 16, 32.
    Parameter names equal torchvision's (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...).
    """

    def __init__(self, arch: str = "resnet50", norm: Literal["frozen_bn", "bn"] = "frozen_bn"):
        super().__init__()
        if arch not in ARCHS:
            from unsolo.errors import UnsoloError

            raise UnsoloError(f"unknown backbone {arch!r}; choose one of {', '.join(ARCHS)}")
        norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
        net = getattr(torchvision.models, arch)(weights=None, norm_layer=norm_layer)
        self.arch = arch
        self.out_channels = OUT_CHANNELS[arch]
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)  # (B, C2, H/4, W/4)
        c3 = self.layer2(c2)  # (B, C3, H/8, W/8)
        c4 = self.layer3(c3)  # (B, C4, H/16, W/16)
        c5 = self.layer4(c4)  # (B, C5, H/32, W/32)
        return {"res2": c2, "res3": c3, "res4": c4, "res5": c5}


#: The backbone's stages in order, by module names: FREEZE_AT = k freezes the first k.
STAGES = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))


def freeze_stages(backbone: ResNetBackbone, freeze_at: int) -> ResNetBackbone:
    """detectron2's ``FREEZE_AT``: the parameters of the first ``freeze_at`` stages (1 = the stem, 2 = stem + res2,
    ..., 5 = every stage) stop training (``requires_grad=False``; the optimizer never sees them, and autograd stops
    before them, which saves their backward pass). Returns ``backbone``."""
    if not 0 <= freeze_at <= len(STAGES):
        from unsolo.errors import UnsoloError

        raise UnsoloError(f"freeze_at must be between 0 and {len(STAGES)}, got {freeze_at}")
    for names in STAGES[:freeze_at]:
        for name in names:
            getattr(backbone, name).requires_grad_(False)
    return backbone


def fold_frozen_bn(module: nn.Module) -> nn.Module:
    """A copy of ``module`` for inference where every ``FrozenBatchNorm2d`` that directly follows a ``Conv2d`` is
    folded into it (``w' = w * s``, ``b' = b * s + t`` with the BN's fixed scale ``s`` and shift ``t``) and replaced
    by ``nn.Identity``: one pass over each activation less, same function up to float rounding (~1e-6 relative).

    Pairs are found in torchvision's ResNet layout: ``conv1``/``bn1``, ``convK``/``bnK`` in blocks and
    ``downsample = Sequential(conv, bn)``. The original module is left untouched.
    """
    out = copy.deepcopy(module)
    for m in out.modules():
        pairs = [(f"conv{i}", f"bn{i}") for i in range(1, 4)]
        if isinstance(m, nn.Sequential):
            pairs += [(str(i), str(i + 1)) for i in range(len(m) - 1)]
        for conv_name, bn_name in pairs:
            conv, bn = getattr(m, conv_name, None), getattr(m, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, FrozenBatchNorm2d):
                setattr(m, conv_name, _fold(conv, bn))
                setattr(m, bn_name, nn.Identity())
    return out


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> nn.Conv2d:
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()  # (C,) as FrozenBatchNorm2d computes it
    shift = bn.bias - bn.running_mean * scale
    fused = nn.utils.skip_init(nn.Conv2d, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                               conv.padding, conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                               device=conv.weight.device, dtype=conv.weight.dtype)  # no random init: overwritten
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias * scale + shift if conv.bias is not None else shift
    fused.bias.copy_(bias)
    return fused.requires_grad_(False)


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """RGB 0-255 ``(B, 3, H, W)`` (any float dtype) -> ImageNet-normalised float."""
    mean = image.new_tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = image.new_tensor(PIXEL_STD).view(1, 3, 1, 1)
    return (image - mean) / std
