"""Training augmentations of self-supervised SOLO: the weak (geometric) view and the strong (photometric) view.

Official behaviour (FreeSOLO ``DatasetMapperTwoCropSeparate``, spec section 6.2):

* **weak view**: detectron2 ``ResizeShortestEdge`` (short side drawn uniformly from a list, long side capped,
  PIL bilinear for the image, nearest for the masks) and a horizontal flip with probability 0.5. No crop.
* **strong view**: the weak image (same geometry, same instances) with ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8,
  RandomGrayscale p 0.2, Gaussian blur sigma ~ U[0.1, 2] p 0.5, then three RandomErasing with Gaussian-noise
  fill on the [0, 1] image.

Every random draw comes from an explicit ``torch.Generator`` (one per sample, seeded by the batch sampler), so
an augmented batch depends only on the run seed and the iteration: resumed runs see the same data, whatever
the number of DataLoader workers. :func:`strong_view` works on CPU (in the workers) and on the training device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image


# ------------------------------------------------------------------------------------------ geometry
def shortest_edge_size(height: int, width: int, short: int = 800, max_size: int = 1333) -> tuple[int, int]:
    """Output ``(new_h, new_w)`` of detectron2 ``ResizeShortestEdge``: short side -> ``short``, long side <= ``max_size``.

    The one implementation of this rule: training views, Free Mask and the predictor all resize through it
    (defaults: detectron2 ``MIN_SIZE_TEST`` 800 / ``MAX_SIZE_TEST`` 1333).
    """
    scale = short / min(height, width)
    new_h, new_w = (short, scale * width) if height < width else (scale * height, short)
    if max(new_h, new_w) > max_size:
        s = max_size / max(new_h, new_w)
        new_h, new_w = new_h * s, new_w * s
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB ``uint8 (H, W, 3)`` -> ``uint8 (h, w, 3)`` with PIL bilinear (as detectron2's ``ResizeTransform``)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binary ``(N, H, W)`` -> ``bool (N, h, w)`` with nearest sampling at pixel centres (PIL ``NEAREST``)."""
    if masks.shape[-2:] == size:
        return masks.bool()
    if masks.shape[0] == 0:
        return torch.zeros((0, *size), dtype=torch.bool)
    out = F.interpolate(masks[:, None].to(torch.uint8), size=size, mode="nearest-exact")
    return out[:, 0].bool()


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight ``float32 (N, 4)`` XYXY boxes (pixel edges: ``x1 = last column + 1``) of ``bool (N, H, W)`` masks.

    An empty mask gets ``[0, 0, 0, 0]`` (area 0: target assignment skips it). Same convention as detectron2's
    ``BitMasks.get_bounding_boxes``.
    """
    n, h, w = masks.shape
    boxes = torch.zeros((n, 4), dtype=torch.float32, device=masks.device)
    if n == 0:
        return boxes
    rows = masks.any(dim=2)  # (N, H)
    cols = masks.any(dim=1)  # (N, W)
    nonempty = rows.any(dim=1)  # (N,)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ar_h, h).amin(dim=1)
    y1 = torch.where(rows, ar_h, -1).amax(dim=1) + 1
    x0 = torch.where(cols, ar_w, w).amin(dim=1)
    x1 = torch.where(cols, ar_w, -1).amax(dim=1) + 1
    boxes[:] = torch.stack([x0, y0, x1, y1], dim=1).float()
    boxes[~nonempty] = 0.0
    return boxes


def transform_boxes(boxes: torch.Tensor, in_size: tuple[int, int], out_size: tuple[int, int], flip: bool) -> torch.Tensor:
    """Scale XYXY boxes from ``in_size`` to ``out_size`` ((H, W) each), flip horizontally if asked, clip to the image."""
    (h, w), (nh, nw) = in_size, out_size
    b = boxes.clone().float()
    b[:, 0::2] *= nw / w
    b[:, 1::2] *= nh / h
    if flip:
        b = torch.stack([nw - b[:, 2], b[:, 1], nw - b[:, 0], b[:, 3]], dim=1)
    b[:, 0::2] = b[:, 0::2].clamp(0, nw)
    b[:, 1::2] = b[:, 1::2].clamp(0, nh)
    return b


@dataclass
class WeakParams:
    """The geometry drawn for one sample."""

    size: tuple[int, int]  # (h, w) after resizing
    flip: bool


def draw_weak_params(
    height: int, width: int, min_sizes: tuple[int, ...], max_size: int, flip_prob: float, generator: torch.Generator
) -> WeakParams:
    """Draw the short side uniformly from ``min_sizes`` and a horizontal flip with probability ``flip_prob``."""
    short = min_sizes[int(torch.randint(len(min_sizes), (1,), generator=generator))]
    flip = bool(torch.rand((), generator=generator) < flip_prob)
    return WeakParams(shortest_edge_size(height, width, short, max_size), flip)


# ---------------------------------------------------------------------------------------- photometry
#: One torchvision ``RandomErasing(p, scale, ratio, value="random")``:
#: ``(p, area_lo, area_hi, ratio_lo, ratio_hi)`` with the erased area as a fraction of the image area and the
#: aspect ratio h/w drawn log-uniformly.
ErasingSpec = tuple[float, float, float, float, float]


@dataclass
class StrongAugConfig:
    """Photometric strong view (official ``build_strong_augmentation``); defaults are the official values."""

    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_prob: float = 0.8  # probability of applying the colour jitter (RandomApply)
    grayscale_prob: float = 0.2  # RandomGrayscale (3 output channels)
    blur_prob: float = 0.5  # probability of the Gaussian blur
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # sigma ~ U[lo, hi] in pixels
    erasing: list[tuple[float, float, float, float, float]] = field(
        default_factory=lambda: [(0.7, 0.05, 0.2, 0.3, 3.3), (0.5, 0.02, 0.2, 0.1, 6.0), (0.3, 0.02, 0.2, 0.05, 8.0)]
    )  # RandomErasing (p, area_lo, area_hi, ratio_lo, ratio_hi), applied in order, Gaussian-noise fill


def _uniform(lo: float, hi: float, g: torch.Generator) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=g))


def color_jitter(image: torch.Tensor, strength: tuple[float, float, float, float], g: torch.Generator) -> torch.Tensor:
    """torchvision ``ColorJitter``: the four adjustments in a random order, factors drawn around 1 (hue around 0)."""
    b, c, s, hue = strength
    factors = {
        0: _uniform(max(0.0, 1 - b), 1 + b, g) if b > 0 else None,
        1: _uniform(max(0.0, 1 - c), 1 + c, g) if c > 0 else None,
        2: _uniform(max(0.0, 1 - s), 1 + s, g) if s > 0 else None,
        3: _uniform(-hue, hue, g) if hue > 0 else None,
    }
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for k in torch.randperm(4, generator=g).tolist():
        if factors[k] is not None:
            image = ops[k](image, factors[k])
    return image


def random_erase(image: torch.Tensor, spec: ErasingSpec, g: torch.Generator) -> torch.Tensor:
    """torchvision ``RandomErasing(value="random")`` on a float ``(3, H, W)`` image in [0, 1] (10 tries to fit)."""
    p, area_lo, area_hi, ratio_lo, ratio_hi = spec
    if not float(torch.rand((), generator=g)) < p:
        return image
    _, h, w = image.shape
    area = h * w
    log_ratio = (math.log(ratio_lo), math.log(ratio_hi))
    for _ in range(10):
        erase_area = area * _uniform(area_lo, area_hi, g)
        aspect = math.exp(_uniform(log_ratio[0], log_ratio[1], g))
        eh = int(round(math.sqrt(erase_area * aspect)))
        ew = int(round(math.sqrt(erase_area / aspect)))
        if not (eh < h and ew < w):
            continue
        i = int(torch.randint(0, h - eh + 1, (1,), generator=g))
        j = int(torch.randint(0, w - ew + 1, (1,), generator=g))
        noise = torch.randn((3, eh, ew), generator=g, device=g.device).to(image.device, image.dtype)
        image = image.clone()
        image[:, i : i + eh, j : j + ew] = noise
        return image
    return image


def strong_view(image: torch.Tensor, cfg: StrongAugConfig, generator: torch.Generator) -> torch.Tensor:
    """Strong photometric view of an RGB ``uint8 (3, H, W)`` image (CPU or CUDA); returns ``uint8 (3, H, W)``.

    ``generator`` is a CPU generator whatever the image's device: every draw (parameters, erasing noise) is made
    on the CPU, so a sample's strong view does not depend on where it is computed and needs no device sync;
    the noise is copied to the device. Deviations from the official PIL pipeline (named):
    the blur is torchvision's Gaussian kernel (size ``2*ceil(3 sigma)+1``) instead of PIL's box-filter
    approximation; erased pixels outside [0, 1] are clamped when converting back to ``uint8`` (the official
    ``ToPILImage`` lets them wrap around).
    """
    x = image
    if float(torch.rand((), generator=generator)) < cfg.jitter_prob:
        x = color_jitter(x, cfg.jitter, generator)
    if float(torch.rand((), generator=generator)) < cfg.grayscale_prob:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if float(torch.rand((), generator=generator)) < cfg.blur_prob:
        sigma = _uniform(cfg.blur_sigma[0], cfg.blur_sigma[1], generator)
        k = 2 * math.ceil(3 * sigma) + 1
        x = TF.gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])
    xf = x.float() / 255.0  # (3, H, W) in [0, 1]
    for spec in cfg.erasing:
        xf = random_erase(xf, spec, generator)
    return (xf.clamp(0, 1) * 255.0).round().to(torch.uint8)
