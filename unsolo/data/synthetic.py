"""Synthetic scenes with exact instance ground truth, for tests, demos and CPU-scale experiments.

Every scene is a textured background with a few textured shapes painted over it, later shapes occluding earlier
ones. The ground truth is the *visible* part of each shape, so it is exactly what a segmenter can see.

* Six shape families, one COCO category each (:data:`CATEGORIES`): ellipse, rectangle, triangle, star, ring, blob.
* Every object gets its own procedural texture (stripes, checks, smooth noise, flat colour with grain, gradient)
  with random colours, scales and orientations; with probability :attr:`SceneConfig.camouflage_prob` its colours
  are drawn close to the background under it, so colour alone does not separate it.
* Backgrounds: a linear gradient, large-scale smooth colour noise, a large pattern (blobs or soft stripes),
  medium-scale textured clutter patches under a soft stencil, plus fine grain. Objects are shaded (a brightness
  ramp across each). Trivial grouping (thresholds, colour clustering) therefore does not solve the task.
* Object sizes are log-uniform over :attr:`SceneConfig.scale_range` (radius as a fraction of the short side),
  which spans small, medium and large objects in the COCO sense (areas < 32^2, < 96^2, above): at 256 px about
  40 / 50 / 10 % of the objects; at 128 px large ones cannot occur in absolute COCO terms (see docs/synthetic.md).
* An object whose visible area falls below :attr:`SceneConfig.min_visible_area` pixels or
  :attr:`SceneConfig.min_visible_fraction` of its full area is not painted at all (no unlabeled fragments).

Everything is vectorised numpy on coordinate grids restricted to each shape's bounding window. Generation is
deterministic: image ``i`` of a set with seed ``s`` uses ``numpy.random.default_rng([s, i])``, so the set does
not depend on the order or the number of workers, and PNGs are written without timestamps (same seed, same bytes).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from io import BytesIO
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
from PIL import Image

from unsolo.data.coco import instance_records, make_annotation_file, write_annotation_file
from unsolo.data.textures import (BACKGROUNDS, PHOTOS, TEXTURES, near_colour, photo_background,  # noqa: F401
                                  random_colour, render_background, render_texture, smooth_noise)
from unsolo.errors import UnsoloError
from unsolo.utils.io import atomic_write
from unsolo.utils.progress import progress

#: One COCO category per shape family (ids 1..6, in this order).
FAMILIES: tuple[str, ...] = ("ellipse", "rectangle", "triangle", "star", "ring", "blob")
CATEGORIES: list[dict] = [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(FAMILIES)]

#: Smallest image side accepted by :func:`generate` and the CLI.
MIN_SIZE = 32


@dataclass
class SceneConfig:
    """Parameters of the scene distribution (defaults: the distribution used for all documented figures)."""

    min_objects: int = 2  # objects drawn per image (before dropping hidden ones), inclusive lower bound
    max_objects: int = 6  # inclusive upper bound
    scale_range: tuple[float, float] = (0.05, 0.5)  # object radius / short image side, sampled log-uniformly
    min_visible_area: int = 16  # pixels; a less visible object is not painted and not annotated
    min_visible_fraction: float = 0.2  # visible / full area below which an object is not painted
    camouflage_prob: float = 0.3  # probability that an object's colours are drawn near the local background
    camouflage_delta: float = 40.0  # max per-channel distance (0-255) of a camouflaged colour from the background
    max_shading: float = 0.35  # objects get a brightness ramp of up to +-35 % across their box
    grain_std: float = 6.0  # std of the per-pixel sensor noise added to the whole image (0-255)
    aspect_jitter: float = 0.0  # log aspect ratio drawn in [-a, a]; 0 keeps images square (height = width = size)
    background: str = "procedural"  # "procedural": gradients, noise and textures; "photo": a random crop of a
    #                                 photograph shipped with scikit-image (PHOTOS), rescaled; objects stay synthetic


# ------------------------------------------------------------------------------------------ helpers
def _polygon_inside(x: np.ndarray, y: np.ndarray, vx: np.ndarray, vy: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test for pixel centres ``(x, y)`` (broadcastable) and vertices ``(vx, vy)``."""
    inside = np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=bool)
    n = len(vx)
    for k in range(n):
        x0, y0, x1, y1 = vx[k], vy[k], vx[(k + 1) % n], vy[(k + 1) % n]
        if y0 == y1:
            continue
        crosses = (y0 > y) != (y1 > y)
        xint = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < xint)
    return inside


def shape_mask(rng: np.random.Generator, family: str, h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    """Binary mask ``bool (h, w)`` of one shape of ``family`` centred at ``(cy, cx)`` with bounding radius ``r``."""
    mask = np.zeros((h, w), dtype=bool)
    y0, y1 = max(0, int(math.floor(cy - r)) - 1), min(h, int(math.ceil(cy + r)) + 2)
    x0, x1 = max(0, int(math.floor(cx - r)) - 1), min(w, int(math.ceil(cx + r)) + 2)
    if y0 >= y1 or x0 >= x1:
        return mask
    y = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5 - cy  # (hy, 1) pixel centres relative to the centre
    x = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5 - cx  # (1, wx)
    a = rng.uniform(0, 2 * np.pi)
    ca, sa = math.cos(a), math.sin(a)
    u = ca * x + sa * y  # (hy, wx) rotated coordinates
    v = -sa * x + ca * y
    if family == "ellipse":
        ry = r * rng.uniform(0.35, 1.0)
        m = (u / r) ** 2 + (v / ry) ** 2 <= 1.0
    elif family == "rectangle":
        hx, hy = r * rng.uniform(0.5, 0.75), r * rng.uniform(0.2, 0.7)
        m = (np.abs(u) <= hx) & (np.abs(v) <= hy)
    elif family == "triangle":
        ang = np.sort(rng.uniform(0, 2 * np.pi, 3))
        while np.min(np.diff(np.r_[ang, ang[0] + 2 * np.pi])) < 0.6:  # avoid needle triangles
            ang = np.sort(rng.uniform(0, 2 * np.pi, 3))
        m = _polygon_inside(u, v, r * np.cos(ang), r * np.sin(ang))
    elif family == "star":
        n = int(rng.integers(4, 8))
        inner = rng.uniform(0.35, 0.6)
        ang = np.arange(2 * n) * (np.pi / n)
        rad = np.where(np.arange(2 * n) % 2 == 0, r, r * inner)
        m = _polygon_inside(u, v, rad * np.cos(ang), rad * np.sin(ang))
    elif family == "ring":
        ry = r * rng.uniform(0.6, 1.0)
        inner = rng.uniform(0.35, 0.65)
        q = (u / r) ** 2 + (v / ry) ** 2
        m = (q <= 1.0) & (q >= inner**2)
    elif family == "blob":
        rho = np.hypot(u, v)
        phi = np.arctan2(v, u)
        bound = np.ones_like(phi)
        for k in range(2, 6):
            bound = bound + rng.uniform(0.0, 0.35 / (k - 1)) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
        bound = bound / (1.0 + sum(0.35 / (k - 1) for k in range(2, 6)))  # stays within radius r
        m = rho <= r * np.clip(bound, 0.25, 1.0)
    else:
        raise ValueError(f"unknown shape family {family!r}")
    mask[y0:y1, x0:x1] = m
    return mask


# --------------------------------------------------------------------------------------------- scene
def render_scene(
    rng: np.random.Generator, size: int | tuple[int, int], config: SceneConfig | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one scene.

    Args:
        rng: the scene's random generator (all randomness comes from it).
        size: ``S`` (square ``S x S`` unless ``config.aspect_jitter`` > 0, then width ``S``) or ``(H, W)``.
        config: scene distribution (:class:`SceneConfig` defaults when ``None``).

    Returns:
        ``image`` uint8 ``(H, W, 3)`` RGB; ``masks`` bool ``(N, H, W)``, the visible, pairwise disjoint, non-empty
        part of each object, bottom to top; ``category_ids`` int64 ``(N,)`` in 1..6 (see :data:`CATEGORIES`).
    """
    cfg = config or SceneConfig()
    if isinstance(size, (tuple, list)):
        h, w = int(size[0]), int(size[1])
    else:
        w = int(size)
        h = int(round(w * math.exp(rng.uniform(-cfg.aspect_jitter, cfg.aspect_jitter)))) if cfg.aspect_jitter > 0 else w
        h = max(MIN_SIZE, h)
    if cfg.background == "photo":
        bg = photo_background(rng, h, w, cfg.grain_std)
    else:
        bg = render_background(rng, h, w, cfg.grain_std)
    short = min(h, w)
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    lo, hi = np.log(cfg.scale_range[0]), np.log(cfg.scale_range[1])
    objects = []  # (family index, full mask, centre, radius), bottom to top
    for _ in range(n):
        fam = int(rng.integers(len(FAMILIES)))
        r = float(np.exp(rng.uniform(lo, hi))) * short
        cy, cx = rng.uniform(0.05 * h, 0.95 * h), rng.uniform(0.05 * w, 0.95 * w)
        full = shape_mask(rng, FAMILIES[fam], h, w, cy, cx, r)
        objects.append((fam, full, cy, cx, r))
    # Visibility, top to bottom: a hidden object is not painted, so it cannot leave unlabeled fragments.
    occupied = np.zeros((h, w), dtype=bool)
    kept: list[tuple[int, np.ndarray, np.ndarray, float, float, float]] = []
    for fam, full, cy, cx, r in reversed(objects):
        area = int(full.sum())
        visible = full & ~occupied
        va = int(visible.sum())
        if area == 0 or va < cfg.min_visible_area or va < cfg.min_visible_fraction * area:
            continue
        occupied |= full
        kept.append((fam, full, visible, cy, cx, r))
    kept.reverse()  # bottom to top again
    img = bg
    for fam, full, _, cy, cx, r in kept:
        ys, xs = np.nonzero(full.any(axis=1))[0], np.nonzero(full.any(axis=0))[0]
        y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        if rng.random() < cfg.camouflage_prob:
            local = bg[int(np.clip(cy, 0, h - 1)), int(np.clip(cx, 0, w - 1))].astype(np.float64)
            c0, c1 = near_colour(rng, local, cfg.camouflage_delta), near_colour(rng, local, cfg.camouflage_delta)
        else:
            c0 = random_colour(rng)
            c1 = near_colour(rng, c0, 120.0) if rng.random() < 0.5 else random_colour(rng)
        kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
        tex = render_texture(rng, kind, y1 - y0, x1 - x0, c0, c1, r)  # (hy, wx, 3)
        # shading: a linear brightness ramp across the object, as under directional light
        a = rng.uniform(0, 2 * np.pi)
        ramp = (math.cos(a) * np.linspace(-1, 1, x1 - x0, dtype=np.float32)[None, :]
                + math.sin(a) * np.linspace(-1, 1, y1 - y0, dtype=np.float32)[:, None])
        tex = tex * (1.0 + rng.uniform(0.0, cfg.max_shading) * ramp[..., None]).astype(np.float32)
        region = img[y0:y1, x0:x1]
        m = full[y0:y1, x0:x1]
        region[m] = tex[m]
    img = img + rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(cfg.grain_std)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if kept:
        masks = np.stack([k[2] for k in kept])
        cats = np.array([k[0] + 1 for k in kept], dtype=np.int64)
    else:
        masks = np.zeros((0, h, w), dtype=bool)
        cats = np.zeros((0,), dtype=np.int64)
    return image, masks, cats


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index`` (1-based) of the set with ``seed``: independent of order and workers."""
    return np.random.default_rng([int(seed), int(index)])


def png_bytes(image: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG encoding of an RGB uint8 image without timestamps or other metadata (deterministic bytes)."""
    buf = BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def file_name(index: int) -> str:
    return f"{index:06d}.png"


def _make_one(job: tuple[str, int, int, int, SceneConfig]) -> tuple[dict, list[dict]]:
    images_dir, index, size, seed, cfg = job
    image, masks, cats = render_scene(scene_rng(seed, index), size, cfg)
    data = png_bytes(image)
    # atomic for readers; no fsync per image (they are regenerated bit-exactly from the seed)
    atomic_write(Path(images_dir) / file_name(index), lambda f: f.write(data), mode="wb", fsync=False)
    rec = {"id": index, "file_name": file_name(index), "height": int(image.shape[0]), "width": int(image.shape[1])}
    return rec, instance_records(index, masks, category_ids=cats.tolist())


def run_jobs(make_one, jobs: list, workers: int | None) -> tuple[list[dict], list[dict]]:
    """``make_one(job) -> (image record, annotation records)`` for every job, in order, in ``workers`` processes
    (0: this one), with a progress bar; the image records and all annotation records."""
    images: list[dict] = []
    anns: list[dict] = []
    bar = progress(total=len(jobs), desc="synth", unit="img")
    try:
        if workers and workers > 0:
            # fork where the platform has it (numpy-only workers start at once); spawn elsewhere
            method = "fork" if "fork" in get_all_start_methods() else "spawn"
            with get_context(method).Pool(workers) as pool:
                results = list(_tick(pool.imap(make_one, jobs, chunksize=8), bar))
        else:
            results = list(_tick(map(make_one, jobs), bar))
    finally:
        bar.close()
    for rec, recs in results:
        images.append(rec)
        anns.extend(recs)
    return images, anns


def _tick(results, bar):
    for r in results:
        bar.update(1)
        yield r


def generate(
    out: str | os.PathLike,
    num_images: int,
    size: int = 128,
    seed: int = 0,
    workers: int = 0,
    config: SceneConfig | None = None,
) -> dict:
    """Write ``out/images/000001.png ...`` and ``out/annotations.json`` (COCO, compressed RLE); return the COCO dict.

    Args:
        out: output folder (created; existing files of the same names are replaced atomically).
        num_images: number of images (>= 1). Image ``i`` (1-based) has id ``i``.
        size: width ``S`` (>= 32); square images unless ``config.aspect_jitter`` > 0.
        seed: base seed; image ``i`` uses :func:`scene_rng` ``(seed, i)``.
        workers: processes (0 = in this process).
        config: scene distribution (:class:`SceneConfig` defaults when ``None``).
    """
    cfg = config or SceneConfig()
    if int(num_images) < 1:
        raise UnsoloError(f"--num-images must be at least 1 (got {num_images})")
    if int(size) < MIN_SIZE:
        raise UnsoloError(f"--size must be at least {MIN_SIZE} pixels (got {size})")
    if cfg.min_objects < 0 or cfg.max_objects < cfg.min_objects:
        raise UnsoloError(f"need 0 <= min_objects <= max_objects (got {cfg.min_objects}, {cfg.max_objects})")
    if not (0 < cfg.scale_range[0] <= cfg.scale_range[1]):
        raise UnsoloError(f"scale_range must be 0 < low <= high (got {cfg.scale_range})")
    if cfg.aspect_jitter < 0:
        raise UnsoloError(f"aspect jitter must be >= 0 (got {cfg.aspect_jitter})")
    if cfg.background not in BACKGROUNDS:
        raise UnsoloError(f"background must be one of {', '.join(BACKGROUNDS)} (got {cfg.background!r})")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UnsoloError(f"output {out} exists and is not a folder")
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(str(images_dir), i, int(size), int(seed), cfg) for i in range(1, int(num_images) + 1)]
    images, anns = run_jobs(_make_one, jobs, workers)
    info = {"description": "unsolo synthetic scenes", "seed": int(seed), "size": int(size),
            "aspect_jitter": float(cfg.aspect_jitter), "background": cfg.background}
    coco = make_annotation_file(images, anns, CATEGORIES, info=info)
    write_annotation_file(out / "annotations.json", coco)
    return coco
