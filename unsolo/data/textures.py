"""Textures and backgrounds of the synthetic scenes (:mod:`unsolo.data.synthetic`): smooth noise, procedural
object textures, procedural backgrounds and crops of the photographs that scikit-image ships. Pure numpy functions
of a ``numpy.random.Generator``: the same draws give the same pixels."""

from __future__ import annotations

import functools
import math

import numpy as np

#: object textures of the procedural scenes
TEXTURES: tuple[str, ...] = ("stripes", "checks", "noise", "grain", "gradient")


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, channels: int = 1) -> np.ndarray:
    """Bilinearly interpolated random lattice: values in [0, 1], shape ``(h, w, channels)``.

    ``cells`` is the number of lattice cells along the longer side (larger = finer pattern).
    """
    gy = max(2, int(round(cells * h / max(h, w))) + 1)
    gx = max(2, int(round(cells * w / max(h, w))) + 1)
    grid = rng.random((gy, gx, channels), dtype=np.float32)  # (gy, gx, C)
    wy = _interp_matrix(h, gy)  # (h, gy)
    wx = _interp_matrix(w, gx)  # (w, gx)
    rows = np.tensordot(wy, grid, axes=(1, 0))  # (h, gx, C)
    out = rows.transpose(0, 2, 1) @ wx.T  # (h, C, w)
    return out.transpose(0, 2, 1)  # (h, w, C)


def _interp_matrix(n: int, g: int) -> np.ndarray:
    """``(n, g)`` linear-interpolation weights from ``g`` lattice points spread over ``n`` pixels."""
    pos = np.linspace(0.0, g - 1.0, n)
    lo = np.minimum(np.floor(pos).astype(np.int64), g - 2)
    frac = pos - lo
    m = np.zeros((n, g), dtype=np.float32)
    m[np.arange(n), lo] = 1.0 - frac
    m[np.arange(n), lo + 1] = frac
    return m


def random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 255.0, 3)


def near_colour(rng: np.random.Generator, colour: np.ndarray, delta: float) -> np.ndarray:
    return np.clip(colour + rng.uniform(-delta, delta, 3), 0.0, 255.0)


# ---------------------------------------------------------------------------------------- background
def render_background(rng: np.random.Generator, h: int, w: int, grain_std: float = 6.0) -> np.ndarray:
    """Textured background ``float32 (h, w, 3)`` in [0, 255]: gradient + smooth colour noise + a large pattern."""
    yy = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    theta = rng.uniform(0, 2 * np.pi)
    t = (np.cos(theta) * xx + np.sin(theta) * yy) * 0.5 + 0.5  # (h, w) in [0, 1]
    c0, c1 = random_colour(rng), random_colour(rng)
    img = (c0 + (c1 - c0) * t[..., None]).astype(np.float32)  # (h, w, 3)
    # large-scale colour variation
    amp = rng.uniform(20.0, 70.0)
    img = img + amp * (smooth_noise(rng, h, w, int(rng.integers(2, 6)), 3) - 0.5)
    # a large pattern: soft blobs of another colour, or broad stripes
    c2 = random_colour(rng)
    if rng.random() < 0.5:
        level = smooth_noise(rng, h, w, int(rng.integers(3, 8)))[..., 0]
        thr = rng.uniform(0.4, 0.6)
        alpha = np.clip((level - thr) * rng.uniform(8.0, 30.0), 0.0, 1.0) * rng.uniform(0.3, 0.8)
    else:
        phi = rng.uniform(0, 2 * np.pi)
        period = rng.uniform(0.3, 1.0)  # in units of half the image
        s = np.sin((np.cos(phi) * xx + np.sin(phi) * yy) * (2 * np.pi / period) + rng.uniform(0, 2 * np.pi))
        alpha = (0.5 + 0.5 * s) * rng.uniform(0.2, 0.6)
    img = img + (c2 - img) * alpha[..., None]
    # medium-scale clutter: textured patches (same texture kinds as objects) under a soft random stencil
    if rng.random() < 0.7:
        kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
        c3 = random_colour(rng)
        tex = render_texture(rng, kind, h, w, c3, near_colour(rng, c3, 100.0), rng.uniform(0.1, 0.3) * min(h, w))
        level = smooth_noise(rng, h, w, int(rng.integers(3, 7)))[..., 0]
        beta = np.clip((level - rng.uniform(0.45, 0.65)) * 10.0, 0.0, 1.0) * rng.uniform(0.3, 0.7)
        img = img + (tex - img) * beta[..., None]
    img = img + rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(grain_std * rng.uniform(0.5, 1.5))
    return img.astype(np.float32)


# -------------------------------------------------------------------------------------------- shapes
def render_texture(
    rng: np.random.Generator, kind: str, h: int, w: int, c0: np.ndarray, c1: np.ndarray, r: float
) -> np.ndarray:
    """Texture ``float32 (h, w, 3)`` of ``kind`` mixing colours ``c0``/``c1``, scaled to an object of radius ``r``."""
    c0, c1 = np.asarray(c0, dtype=np.float32), np.asarray(c1, dtype=np.float32)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    if kind in ("stripes", "checks"):
        period = max(3.0, r * rng.uniform(0.15, 0.6))
        a = rng.uniform(0, np.pi)
        u = (math.cos(a) * xx + math.sin(a) * yy) * (2 * np.pi / period)
        if kind == "stripes":
            t = np.sin(u + rng.uniform(0, 2 * np.pi))
            t = np.clip(t * rng.uniform(1.0, 6.0), -1, 1) * 0.5 + 0.5  # soft to square wave
        else:
            v = (-math.sin(a) * xx + math.cos(a) * yy) * (2 * np.pi / period)
            t = ((np.sin(u) > 0) ^ (np.sin(v) > 0)).astype(np.float32)
        tex = c0 + (c1 - c0) * t[..., None]
    elif kind == "noise":
        cells = int(np.clip(max(h, w) / max(2.0, r * rng.uniform(0.2, 0.6)), 2, 64))
        t = smooth_noise(rng, h, w, cells)
        tex = c0 + (c1 - c0) * t
    elif kind == "grain":
        tex = c0.astype(np.float32) + rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(rng.uniform(4.0, 18.0))
    elif kind == "gradient":
        a = rng.uniform(0, 2 * np.pi)
        t = np.clip(((math.cos(a) * xx + math.sin(a) * yy) - (math.cos(a) * w + math.sin(a) * h) / 2) / (2 * r) + 0.5, 0, 1)
        tex = c0 + (c1 - c0) * t[..., None]
    else:
        raise ValueError(f"unknown texture {kind!r}")
    return np.asarray(tex, dtype=np.float32)


#: photographs shipped inside scikit-image (``skimage.data``; no download), used as backgrounds by
#: ``background="photo"``: natural scenes, textures and microscopy, colour and grey (grey ones are stacked to RGB)
PHOTOS: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                           "retina", "camera", "coins", "moon", "grass", "gravel", "brick", "clock")
BACKGROUNDS: tuple[str, ...] = ("procedural", "photo")


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A scikit-image photograph as ``uint8 (H, W, 3)`` (cached per process)."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def photo_background(rng: np.random.Generator, h: int, w: int, grain_std: float = 6.0) -> np.ndarray:
    """``float32 (h, w, 3)``: a random crop of a random photograph of :data:`PHOTOS` (side 30-100 % of the photo's
    short side, the image's aspect ratio), resized bilinearly, flipped at random, with sensor grain."""
    from PIL import Image

    photo = _photo(PHOTOS[int(rng.integers(len(PHOTOS)))])
    ph, pw = photo.shape[:2]
    side = rng.uniform(0.3, 1.0) * min(ph, pw)
    ch, cw = (side, side * w / h) if w <= h else (side * h / w, side)
    ch, cw = max(1, min(ph, int(round(ch)))), max(1, min(pw, int(round(cw))))
    y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = Image.fromarray(photo[y0 : y0 + ch, x0 : x0 + cw]).resize((w, h), Image.BILINEAR)
    img = np.asarray(crop, dtype=np.float32)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = img + rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(grain_std * rng.uniform(0.5, 1.5))
    return np.ascontiguousarray(img, dtype=np.float32)
