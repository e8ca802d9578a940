"""Real-object scenes: photographed RGBA cut-outs pasted onto crops of photographs, with exact visible masks.

The second kind of synthetic scene of ``unsolo synth`` (``--objects DIR --backgrounds DIR``), closer to what users
have than the procedural shapes of :mod:`unsolo.data.synthetic`: real objects (many colours, parts, textures) on
real, cluttered backgrounds.

* **Inputs.** Cut-outs: every ``.png`` under the ``--objects`` folders (recursive, sorted), with an alpha channel
  (RGBA, LA, or a palette/grey/RGB image with a transparent colour) that has both transparent and opaque pixels.
  Photographs: every image under the ``--backgrounds`` folders (:func:`unsolo.data.images.list_folder`). Every file
  is decoded once up front; an unreadable file or a cut-out without usable alpha is skipped with a warning.
* **Ground truth.** A cut-out's object is where its (resized) alpha is >= :data:`ALPHA_THRESHOLD` (128 of 255).
  Objects are pasted bottom to top with their soft alpha; the mask of an object is its thresholded alpha minus
  the thresholded alpha of every later object, i.e. exactly the visible part. An object whose visible area is
  below ``min_visible_area`` pixels or ``min_visible_fraction`` of its in-frame area is neither pasted nor
  annotated (no unlabeled fragments). One category, ``object`` (class-agnostic); each annotation also names the
  cut-out it shows (``"object"``).
* **Split.** A cut-out is held out when ``sha256(lower-case file name)`` read as a fraction in [0, 1) is below
  ``heldout_fraction`` (:func:`is_heldout`): the rule depends on the file's base name only, so it does not
  change with the folders given, and same-named files (the same object twice) fall on the same side. Held-out
  scenes never show a cut-out of the training scenes. Backgrounds are not split.
* **Determinism.** Image ``i`` uses ``numpy.random.default_rng([seed, stream, i])`` with stream 0 / 1 / 2 for the
  ``all`` / ``train`` / ``heldout`` object split (so a training and a held-out set made with the same seed do not
  share crops and layouts); it depends only on that and on the sorted lists of cut-outs and photographs, not on
  the workers. PNGs are written atomically without metadata (same inputs and seed, same bytes).
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
from PIL import Image

from unsolo.data.coco import OBJECT_CATEGORIES, instance_records, make_annotation_file, write_annotation_file
from unsolo.data.images import list_folder, load_image
from unsolo.data.synthetic import MIN_SIZE, file_name, png_bytes, run_jobs
from unsolo.errors import UnsoloError
from unsolo.utils.io import atomic_write

log = logging.getLogger("unsolo.synth")

#: alpha (0-255) from which a cut-out pixel belongs to its object's mask
ALPHA_THRESHOLD = 128
SPLITS: tuple[str, ...] = ("all", "train", "heldout")
_STREAM = {"all": 0, "train": 1, "heldout": 2}
CATEGORIES: list[dict] = OBJECT_CATEGORIES
_MAX_WARNINGS = 8  # skipped files named one by one; the rest are counted


@dataclass(frozen=True)
class ObjectSceneConfig:
    """Parameters of the real-object scene distribution (defaults: the documented benchmark)."""

    min_objects: int = 2  # cut-outs drawn per scene (before dropping hidden ones), inclusive
    max_objects: int = 5
    scale_range: tuple[float, float] = (0.2, 0.6)  # long side of the object's box / scene side, log-uniform
    crop_range: tuple[float, float] = (0.3, 1.0)  # background crop side / the photograph's short side, uniform
    min_visible_area: int = 64  # pixels; a less visible object is not pasted and not annotated
    min_visible_fraction: float = 0.2  # visible / in-frame area below which an object is not pasted
    flip_prob: float = 0.5  # horizontal flip of each cut-out and of the background crop
    grain_std: float = 2.0  # Gaussian sensor grain over the composed image (0-255)


@dataclass(frozen=True)
class Source:
    """One input file: ``path`` on disk, ``name`` = its folder's name + the path below it (``animals/birds/owl.png``)."""

    path: str
    name: str


# -------------------------------------------------------------------------------------------- inputs
def list_sources(roots: Sequence[str | os.PathLike], extensions: tuple[str, ...], exclude: Sequence[str] = (),
                 what: str = "files") -> list[Source]:
    """Files with ``extensions`` under every root (recursive), sorted by name, duplicates (same file) once.

    ``exclude``: shell patterns (``fnmatch``, ``*`` also crosses ``/``) matched against :attr:`Source.name`.
    """
    found: dict[str, Source] = {}
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise UnsoloError(f"{what} folder not found: {root}" if not root.exists() else f"not a folder: {root}")
        for p in root.rglob("*"):
            if p.suffix.lower() not in extensions or p.name.startswith(".") or not p.is_file():
                continue
            name = PurePosixPath(root.resolve().name, p.relative_to(root).as_posix()).as_posix()
            if any(fnmatch.fnmatch(name, pat) for pat in exclude):
                continue
            found.setdefault(str(p.resolve()), Source(str(p), name))
    if not found:
        kinds = "/".join(e[1:] for e in extensions)
        raise UnsoloError(f"no {what} ({kinds}) found under {', '.join(str(r) for r in roots)}"
                          + (" after --exclude" if exclude else ""))
    return sorted(found.values(), key=lambda s: (s.name, s.path))


def read_cutout(path: str | os.PathLike) -> np.ndarray:
    """A cut-out as ``uint8 (h, w, 4)`` RGBA, cropped to the box of its object (alpha >= :data:`ALPHA_THRESHOLD`).

    Raises ``ValueError`` (with the reason) for an image without usable alpha, ``OSError`` for an unreadable one.
    """
    with Image.open(path) as im:
        im.load()
        has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
        if not has_alpha:
            raise ValueError(f"no alpha channel (mode {im.mode})")
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)
    obj = rgba[..., 3] >= ALPHA_THRESHOLD
    if not obj.any():
        raise ValueError(f"no pixel with alpha >= {ALPHA_THRESHOLD} (nothing to paste)")
    if obj.all():
        raise ValueError("alpha is opaque everywhere (not a cut-out)")
    ys, xs = np.nonzero(obj.any(axis=1))[0], np.nonzero(obj.any(axis=0))[0]
    return np.ascontiguousarray(rgba[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1])


def _check(sources: list[Source], reader, what: str) -> list[Source]:
    """The sources that ``reader`` decodes; a warning for each of the others (at most :data:`_MAX_WARNINGS`)."""
    good, bad = [], []
    for s in sources:
        try:
            reader(s.path)
            good.append(s)
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises SyntaxError for some broken headers
            bad.append((s, e))
    for s, e in bad[:_MAX_WARNINGS]:
        log.warning("skipping %s %s: %s", what, s.path, e)
    if len(bad) > _MAX_WARNINGS:
        log.warning("skipping %d more %ss (unreadable or without usable alpha)", len(bad) - _MAX_WARNINGS, what)
    if not good:
        s, e = bad[0]
        raise UnsoloError(f"none of the {len(bad)} {what} files is usable (first: {s.path}: {e})")
    return good


def find_cutouts(roots: Sequence[str | os.PathLike], exclude: Sequence[str] = ()) -> list[Source]:
    """Every usable cut-out (``.png`` with alpha) under ``roots``, sorted; bad files skipped with a warning."""
    return _check(list_sources(roots, (".png",), exclude, "cut-out"), read_cutout, "cut-out")


def find_photos(roots: Sequence[str | os.PathLike], exclude: Sequence[str] = ()) -> list[Source]:
    """Every readable photograph under ``roots`` (the image kinds of :func:`list_folder`), sorted."""
    for r in roots:
        list_folder(r)  # the usual one-line errors: not found, not a folder, no images
    exts = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
    return _check(list_sources(roots, exts, exclude, "background"), load_image, "background")


def heldout_score(name: str) -> float:
    """``sha256`` of the lower-case base name of ``name``, as a fraction in [0, 1): stable across runs and machines."""
    digest = hashlib.sha256(PurePosixPath(name).name.lower().encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_heldout(name: str, fraction: float) -> bool:
    """Whether the cut-out ``name`` belongs to the held-out objects (see the module's docstring)."""
    return heldout_score(name) < fraction


def split_sources(sources: Sequence[Source], split: str, fraction: float) -> list[Source]:
    """The cut-outs of ``split`` (``all``, ``train`` or ``heldout``) for a held-out ``fraction`` in (0, 1)."""
    if split not in SPLITS:
        raise UnsoloError(f"--object-split must be one of {', '.join(SPLITS)} (got {split!r})")
    if split == "all":
        return list(sources)
    if not 0.0 < fraction < 1.0:
        raise UnsoloError(f"--heldout-fraction must be in (0, 1) (got {fraction})")
    out = [s for s in sources if is_heldout(s.name, fraction) == (split == "heldout")]
    if not out:
        raise UnsoloError(f"no cut-out of the {len(sources)} falls in the {split} split "
                          f"(--heldout-fraction {fraction}); give more cut-outs or another fraction")
    return out


# ------------------------------------------------------------------------------------------ rendering
def crop_photo(rng: np.random.Generator, photo: np.ndarray, h: int, w: int,
               crop_range: tuple[float, float] = (0.3, 1.0), flip_prob: float = 0.5) -> np.ndarray:
    """``float32 (h, w, 3)``: a random crop of ``photo`` (side ``crop_range`` of its short side, the scene's aspect
    ratio), resized bilinearly, flipped horizontally with probability ``flip_prob``."""
    ph, pw = photo.shape[:2]
    side = rng.uniform(crop_range[0], crop_range[1]) * min(ph, pw)
    ch, cw = (side, side * w / h) if w <= h else (side * h / w, side)
    ch, cw = max(1, min(ph, int(round(ch)))), max(1, min(pw, int(round(cw))))
    y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = np.asarray(Image.fromarray(photo[y0 : y0 + ch, x0 : x0 + cw]).resize((w, h), Image.BILINEAR), np.float32)
    if rng.random() < flip_prob:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def resize_cutout(cutout: np.ndarray, long_side: float, flip: bool = False) -> np.ndarray:
    """``uint8 (h, w, 4)``: ``cutout`` scaled so that its long side is ``long_side`` px (premultiplied-alpha
    bilinear resampling, Pillow's RGBA rule), mirrored when ``flip``."""
    ch, cw = cutout.shape[:2]
    f = float(long_side) / max(ch, cw)
    size = (max(1, int(round(cw * f))), max(1, int(round(ch * f))))
    out = np.asarray(Image.fromarray(cutout, "RGBA").resize(size, Image.BILINEAR), dtype=np.uint8)
    return np.ascontiguousarray(out[:, ::-1] if flip else out)


def compose(background: np.ndarray, layers: Sequence[tuple[np.ndarray, int, int]], min_visible_area: int = 64,
            min_visible_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Paste RGBA ``layers`` ``(cutout uint8 (h, w, 4), top, left)``, bottom to top, over ``background``.

    Returns ``image`` float32 ``(H, W, 3)``, ``masks`` bool ``(N, H, W)`` (the visible part of each kept layer:
    alpha >= :data:`ALPHA_THRESHOLD` and not covered by a later kept layer's, pairwise disjoint) and the indices
    of the kept layers, bottom to top. Layers may lie partly outside the frame. A layer whose visible area is
    below ``min_visible_area`` or ``min_visible_fraction`` of its in-frame area is not pasted.
    """
    H, W = background.shape[:2]
    windows, fulls = [], []
    for cut, top, left in layers:
        h, w = cut.shape[:2]
        y0, y1, x0, x1 = max(0, top), min(H, top + h), max(0, left), min(W, left + w)
        full = np.zeros((H, W), dtype=bool)
        if y0 < y1 and x0 < x1:
            full[y0:y1, x0:x1] = cut[y0 - top : y1 - top, x0 - left : x1 - left, 3] >= ALPHA_THRESHOLD
        windows.append((y0, y1, x0, x1))
        fulls.append(full)
    occupied = np.zeros((H, W), dtype=bool)
    kept: list[tuple[int, np.ndarray]] = []
    for k in reversed(range(len(layers))):  # visibility, top to bottom
        area = int(fulls[k].sum())
        visible = fulls[k] & ~occupied
        va = int(visible.sum())
        if area == 0 or va < min_visible_area or va < min_visible_fraction * area:
            continue
        occupied |= fulls[k]
        kept.append((k, visible))
    kept.reverse()
    img = np.array(background, dtype=np.float32, copy=True)
    for k, _ in kept:
        cut, top, left = layers[k]
        y0, y1, x0, x1 = windows[k]
        part = cut[y0 - top : y1 - top, x0 - left : x1 - left].astype(np.float32)
        a = part[..., 3:4] / 255.0
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1.0 - a) + part[..., :3] * a
    masks = np.stack([v for _, v in kept]) if kept else np.zeros((0, H, W), dtype=bool)
    return img, masks, [k for k, _ in kept]


@functools.lru_cache(maxsize=None)
def _cutout(path: str) -> np.ndarray:
    return read_cutout(path)


@functools.lru_cache(maxsize=None)
def _photo(path: str) -> np.ndarray:
    return load_image(path)


def render_object_scene(rng: np.random.Generator, size: int, objects: Sequence[str], photos: Sequence[str],
                        config: ObjectSceneConfig | None = None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Render one ``size x size`` scene from the cut-out files ``objects`` and the photographs ``photos``.

    Returns ``image`` uint8 ``(S, S, 3)``, ``masks`` bool ``(N, S, S)`` (visible parts, bottom to top) and, per
    mask, the index in ``objects`` of the cut-out it shows. All randomness comes from ``rng``.
    """
    cfg = config or ObjectSceneConfig()
    h = w = int(size)
    bg = crop_photo(rng, _photo(photos[int(rng.integers(len(photos)))]), h, w, cfg.crop_range, cfg.flip_prob)
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    lo, hi = math.log(cfg.scale_range[0]), math.log(cfg.scale_range[1])
    layers, which = [], []
    for _ in range(n):
        k = int(rng.integers(len(objects)))
        long_side = math.exp(rng.uniform(lo, hi)) * min(h, w)
        cut = resize_cutout(_cutout(objects[k]), long_side, flip=bool(rng.random() < cfg.flip_prob))
        ch, cw = cut.shape[:2]
        cy, cx = rng.uniform(0.1 * h, 0.9 * h), rng.uniform(0.1 * w, 0.9 * w)  # box centre
        layers.append((cut, int(round(cy - ch / 2)), int(round(cx - cw / 2))))
        which.append(k)
    img, masks, kept = compose(bg, layers, cfg.min_visible_area, cfg.min_visible_fraction)
    if cfg.grain_std > 0:
        img = img + rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(cfg.grain_std)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), masks, [which[k] for k in kept]


def object_scene_rng(seed: int, index: int, split: str = "all") -> np.random.Generator:
    """The generator of image ``index`` (1-based) of the set with ``seed`` and object ``split``."""
    return np.random.default_rng([int(seed), _STREAM[split], int(index)])


# ------------------------------------------------------------------------------------------- writing
def _make_one(job) -> tuple[dict, list[dict]]:
    images_dir, index, size, seed, split, objects, names, photos, cfg = job
    image, masks, which = render_object_scene(object_scene_rng(seed, index, split), size, objects, photos, cfg)
    data = png_bytes(image)
    atomic_write(Path(images_dir) / file_name(index), lambda f: f.write(data), mode="wb", fsync=False)
    rec = {"id": index, "file_name": file_name(index), "height": int(image.shape[0]), "width": int(image.shape[1])}
    anns = instance_records(index, masks)
    for a, k in zip(anns, which):
        a["object"] = names[k]
    return rec, anns


def generate_object_scenes(
    out: str | os.PathLike,
    num_images: int,
    objects: Sequence[str | os.PathLike],
    backgrounds: Sequence[str | os.PathLike],
    size: int = 192,
    seed: int = 0,
    split: str = "all",
    heldout_fraction: float = 0.2,
    exclude: Sequence[str] = (),
    workers: int = 0,
    config: ObjectSceneConfig | None = None,
) -> dict:
    """Write ``out/images/000001.png ...`` and ``out/annotations.json`` (COCO, compressed RLE); return the COCO dict.

    ``objects`` / ``backgrounds``: folders of cut-outs / photographs; ``exclude``: patterns of cut-out names to
    leave out (:func:`list_sources`); ``split``/``heldout_fraction``: the object split (:func:`split_sources`).
    """
    cfg = config or ObjectSceneConfig()
    if int(num_images) < 1:
        raise UnsoloError(f"--num-images must be at least 1 (got {num_images})")
    if int(size) < MIN_SIZE:
        raise UnsoloError(f"--size must be at least {MIN_SIZE} pixels (got {size})")
    if cfg.min_objects < 0 or cfg.max_objects < cfg.min_objects:
        raise UnsoloError(f"need 0 <= --min-objects <= --max-objects (got {cfg.min_objects}, {cfg.max_objects})")
    if not 0 < cfg.scale_range[0] <= cfg.scale_range[1]:
        raise UnsoloError(f"--scale-range must be 0 < low <= high (got {cfg.scale_range[0]} {cfg.scale_range[1]})")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UnsoloError(f"output {out} exists and is not a folder")
    cutouts = split_sources(find_cutouts(objects, exclude), split, heldout_fraction)
    photos = find_photos(backgrounds)
    log.info("%d cut-outs (%s split), %d background photographs", len(cutouts), split, len(photos))
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    paths, names = tuple(s.path for s in cutouts), tuple(s.name for s in cutouts)
    photo_paths = tuple(s.path for s in photos)
    jobs = [(str(images_dir), i, int(size), int(seed), split, paths, names, photo_paths, cfg)
            for i in range(1, int(num_images) + 1)]
    images, anns = run_jobs(_make_one, jobs, workers)
    info = {"description": "unsolo real-object scenes", "seed": int(seed), "size": int(size), "split": split,
            "heldout_fraction": float(heldout_fraction), "alpha_threshold": ALPHA_THRESHOLD,
            "objects": list(names), "backgrounds": [s.name for s in photos]}
    coco = make_annotation_file(images, anns, CATEGORIES, info=info)
    write_annotation_file(out / "annotations.json", coco)
    return coco
