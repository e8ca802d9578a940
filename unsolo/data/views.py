"""Two-view augmentation of MoCo v2 / DenseCL, split so that data loading keeps up with a GPU.

The official recipe (each view independently): RandomResizedCrop(size, scale 0.2-1, ratio 3/4-4/3) ->
ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8 (the four adjustments in a random order) -> Grayscale p 0.2 ->
GaussianBlur sigma ~ U[0.1, 2] p 0.5 -> horizontal flip p 0.5 -> ImageNet normalisation.

Here it runs in two parts:

1. :class:`TwoViewDataset` (DataLoader workers): decode, then two random resized crops straight to a fixed
   ``size x size`` **uint8** array each (one Pillow resize per view, bilinear with antialiasing). Small to transfer.
2. :func:`photometric_augment` (on the training device, batched): jitter, grayscale, blur and flip with
   per-image random parameters, vectorised over the batch; then :func:`unsolo.modeling.backbone.normalize_image`.

Every random draw is seeded from ``(seed, epoch, image index)`` in the workers and from ``(seed, iteration,
rank)`` on the device, so a resumed run sees exactly the views an uninterrupted run would have seen.
Known, small deviation: the blur uses an exact Gaussian kernel (radius ``ceil(3 sigma_max)``, reflect padding)
where the official code calls Pillow's ``GaussianBlur`` (an extended-box approximation of the same sigma).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from unsolo.data.images import ImageRecord, load_image

log = logging.getLogger("unsolo.views")

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision / Pillow "L"


@dataclass
class AugmentConfig:
    """MoCo v2 augmentation (the DenseCL recipe); defaults are the official values."""

    crop_scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop area fraction range
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect-ratio range
    jitter_prob: float = 0.8  # probability of applying ColorJitter
    brightness: float = 0.4  # factor ~ U[1 - b, 1 + b]
    contrast: float = 0.4  # factor ~ U[1 - c, 1 + c]
    saturation: float = 0.4  # factor ~ U[1 - s, 1 + s]
    hue: float = 0.1  # shift ~ U[-h, h] (fraction of the hue circle)
    grayscale_prob: float = 0.2  # probability of RandomGrayscale
    blur_prob: float = 0.5  # probability of Gaussian blur
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # sigma ~ U[lo, hi] in pixels of the crop
    flip_prob: float = 0.5  # probability of a horizontal flip


# ----------------------------------------------------------------------------------------------------------------
# Worker side: decode + random resized crop to uint8
# ----------------------------------------------------------------------------------------------------------------


def random_resized_crop_box(
    rng: np.random.Generator, height: int, width: int, scale: Sequence[float], ratio: Sequence[float]
) -> tuple[int, int, int, int]:
    """A crop box ``(top, left, h, w)`` as torchvision's ``RandomResizedCrop.get_params``: 10 tries of a random
    area fraction and log-uniform aspect ratio, else a centre crop clamped to the ratio range."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def crop_resize(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crop ``box = (top, left, h, w)`` from ``uint8 (H, W, 3)`` and resize to ``(size, size, 3)`` (bilinear)."""
    top, left, h, w = box
    im = Image.fromarray(image)
    out = im.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    return np.asarray(out, dtype=np.uint8)


class TwoViewDataset:
    """Items are ``(index, epoch)`` pairs; returns ``{"views": uint8 (2, 3, size, size), "skipped": [names]}``.

    An unreadable image is replaced by the next readable one (so every batch keeps its size, which the queues
    need); its name travels back in ``"skipped"`` so that the main process can warn once and count it.
    """

    def __init__(self, records: Sequence[ImageRecord], size: int, aug: AugmentConfig, seed: int = 0):
        self.records = list(records)
        self.size = size
        self.aug = aug
        self.seed = seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, epoch = key
        skipped: list[str] = []
        n = len(self.records)
        for step in range(n):
            rec = self.records[(index + step) % n]
            try:
                image = load_image(rec.path)
                if image.shape[0] < 1 or image.shape[1] < 1:
                    raise ValueError("empty image")
                break
            except Exception:  # corrupt, truncated, not an image: skip it, tell the main process
                skipped.append(str(rec.file_name))
        else:
            return {"views": None, "skipped": skipped}
        rng = np.random.default_rng([self.seed, epoch, index])
        h, w = image.shape[:2]
        views = []
        for _ in range(2):
            box = random_resized_crop_box(rng, h, w, self.aug.crop_scale, self.aug.crop_ratio)
            views.append(crop_resize(image, box, self.size).transpose(2, 0, 1))  # (3, S, S)
        return {"views": torch.from_numpy(np.stack(views)), "skipped": skipped}


def collate_views(batch: list[dict]) -> dict:
    """Stack views to ``uint8 (B, 2, 3, S, S)``; gather skipped names. ``views`` is None if nothing was readable."""
    skipped = [name for item in batch for name in item["skipped"]]
    if any(item["views"] is None for item in batch):
        return {"views": None, "skipped": skipped}
    return {"views": torch.stack([item["views"] for item in batch]), "skipped": skipped}


class IterationBatchSampler:
    """Yields one rank's share of every global batch from iteration ``start`` to ``total`` (exclusive).

    Each epoch is a permutation of the images drawn from ``(seed, epoch)``; batches are cut from it with
    drop-last; global batch ``t`` of the epoch is split into ``world`` consecutive slices, one per rank. Items are
    ``(index, epoch)`` pairs for :class:`TwoViewDataset`. Deterministic, so resuming at any iteration is exact.
    """

    def __init__(self, num_images: int, global_batch: int, seed: int, start: int, total: int, rank: int = 0, world: int = 1):
        self.n, self.b, self.seed = num_images, global_batch, seed
        self.start, self.total, self.rank, self.world = start, total, rank, world
        self.per_epoch = num_images // global_batch
        self.local = global_batch // world

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm, perm_epoch = None, -1
        for it in range(self.start, self.total):
            epoch, t = divmod(it, self.per_epoch)
            if epoch != perm_epoch:
                g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                perm, perm_epoch = torch.randperm(self.n, generator=g).tolist(), epoch
            lo = t * self.b + self.rank * self.local
            yield [(i, epoch) for i in perm[lo : lo + self.local]]


# ----------------------------------------------------------------------------------------------------------------
# Device side: batched photometric augmentation (per-image parameters)
# ----------------------------------------------------------------------------------------------------------------


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in [0, 1] -> ``(B, 1, H, W)`` luma."""
    r, g, b = x.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(f * a + (1 - f) * b, 0, 1)`` with a per-image factor ``(B,)``."""
    f = _per_image(factor)
    return (f * a + (1.0 - f) * b).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale intensities by a per-image factor (blend with black)."""
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean luma (a constant image), per-image factor."""
    mean = rgb_to_gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean.expand_as(x), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's luma (grayscale version), per-image factor."""
    return _blend(x, rgb_to_gray(x).expand_as(x), factor)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of the circle; 0 for grays)."""
    maxc, imax = x.max(dim=1, keepdim=True)  # (B, 1, H, W)
    cr = maxc - x.min(dim=1, keepdim=True).values
    s = cr / maxc.clamp(min=1e-12)
    diff = x.roll(-1, dims=1) - x.roll(-2, dims=1)  # (g - b, b - r, r - g)
    h = (torch.gather(diff, 1, imax) + 2.0 * imax.to(x.dtype) * cr) / cr.clamp(min=1e-12)  # sector offset 0/2/4
    h = torch.remainder(h / 6.0, 1.0)
    return torch.cat([h, s, maxc], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`: channel ``c = v - v s clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6 h) mod 6``
    with ``n = 5, 3, 1`` for r, g, b (the closed form of the six-sector table)."""
    h, s, v = x[:, 0:1], x[:, 1:2], x[:, 2:3]  # (B, 1, H, W) each
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h, 6.0)  # (B, 3, H, W)
    return v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by a per-image ``shift`` in [-0.5, 0.5] (fraction of the circle)."""
    hsv = rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + shift.view(-1, 1, 1), 1.0)
    return hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], dim=1))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-image ``sigma (B,)``; kernel ``2 * radius + 1``, reflect padding."""
    bsz, c, h, w = x.shape
    offs = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)  # (k,)
    kern = torch.exp(-0.5 * (offs[None, :] / sigma[:, None].to(x.dtype)) ** 2)  # (B, k)
    kern = kern / kern.sum(dim=1, keepdim=True)
    kern = kern.repeat_interleave(c, dim=0)  # (B*C, k)
    pad = min(radius, h - 1, w - 1)
    if pad < radius:  # tiny images: clip the kernel so reflect padding stays valid
        kern = kern[:, radius - pad : radius + pad + 1]
        kern = kern / kern.sum(dim=1, keepdim=True)
    y = x.reshape(1, bsz * c, h, w)
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), kern[:, None, None, :], groups=bsz * c)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), kern[:, None, :, None], groups=bsz * c)
    return y.reshape(bsz, c, h, w)


def photometric_augment(images: torch.Tensor, aug: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """MoCo v2 photometric part on a batch: ``uint8 (B, 3, H, W)`` -> ``float (B, 3, H, W)`` RGB 0-255.

    Per image: with probability ``jitter_prob`` brightness, contrast, saturation and hue adjustments in a random
    order (factors drawn as torchvision's ColorJitter); grayscale with ``grayscale_prob``; Gaussian blur with
    ``blur_prob`` and sigma ~ U[blur_sigma]; horizontal flip with ``flip_prob``. Output is not normalised.
    """
    x = images.float().div_(255.0)  # (B, 3, H, W) in [0, 1]
    bsz, dev = x.shape[0], x.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=dev)

    def uniform(lo, hi):
        return lo + (hi - lo) * rand(bsz)

    # ColorJitter, applied with probability jitter_prob, its four ops in a per-image random order
    jitter = rand(bsz) < aug.jitter_prob
    factors = {
        0: uniform(max(0.0, 1 - aug.brightness), 1 + aug.brightness),
        1: uniform(max(0.0, 1 - aug.contrast), 1 + aug.contrast),
        2: uniform(max(0.0, 1 - aug.saturation), 1 + aug.saturation),
        3: uniform(-aug.hue, aug.hue),
    }
    order = torch.argsort(rand(bsz, 4), dim=1)  # (B, 4): a random permutation of the ops per image
    ops = {0: adjust_brightness, 1: adjust_contrast, 2: adjust_saturation, 3: adjust_hue}
    enabled = {0: aug.brightness > 0, 1: aug.contrast > 0, 2: aug.saturation > 0, 3: aug.hue > 0}
    for slot in range(4):
        for op, fn in ops.items():
            sel = (jitter & (order[:, slot] == op)).nonzero().flatten()
            if enabled[op] and sel.numel():
                x[sel] = fn(x[sel], factors[op][sel])

    # RandomGrayscale
    gray = rand(bsz) < aug.grayscale_prob
    if bool(gray.any()):
        x = torch.where(_per_image(gray), rgb_to_gray(x).expand_as(x), x)

    # GaussianBlur
    blur = rand(bsz) < aug.blur_prob
    sigma = uniform(aug.blur_sigma[0], aug.blur_sigma[1])
    sel = blur.nonzero().flatten()
    if sel.numel():
        radius = max(1, int(math.ceil(3.0 * aug.blur_sigma[1])))
        x[sel] = gaussian_blur(x[sel], sigma[sel], radius)

    # Horizontal flip
    flip = rand(bsz) < aug.flip_prob
    x = torch.where(_per_image(flip), x.flip(-1), x)
    return x.mul_(255.0)
