"""One image reader for every stage: a folder of images, or a COCO JSON plus an image root.

* Folders are searched recursively for ``jpg, jpeg, png, bmp, webp, tif, tiff`` (case-insensitive), in sorted order.
* EXIF orientation is applied; grayscale, RGBA, palette, CMYK and 16-bit images become RGB ``uint8``.
* Decoding happens in DataLoader workers (:class:`ImageDataset`); an unreadable or corrupt image is skipped
  with a warning that names it, counted by :class:`SkipCounter`, and reported at the end: one bad file never
  aborts a long job.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps

from unsolo.errors import UnsoloError

log = logging.getLogger("unsolo.images")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Large images are legitimate here (satellite, microscopy); keep Pillow's bomb check but raise its limit.
Image.MAX_IMAGE_PIXELS = 1_000_000_000


@dataclass(frozen=True)
class ImageRecord:
    """One input image: its path, a stable integer id, and the name written to COCO ``file_name``."""

    path: Path
    image_id: int
    file_name: str


def _stable_id(rel: str) -> int:
    """A positive 31-bit id from a relative path, for folders whose file names are not integers."""
    return (zlib.crc32(rel.encode("utf-8")) & 0x7FFFFFFF) or 1


def image_id_from_name(rel: str) -> int | None:
    """COCO-style id from a file name: ``000000139.jpg`` -> 139, ``COCO_val2014_000000000042.jpg`` -> 42."""
    stem = Path(rel).stem
    last = stem.split("_")[-1]
    return int(last) if re.fullmatch(r"\d{1,18}", last) else None


def list_folder(root: str | os.PathLike) -> list[ImageRecord]:
    """Every image under ``root`` (recursive), sorted; ids from numeric names when all are unique, else hashed."""
    root = Path(root)
    if not root.exists():
        raise UnsoloError(f"input not found: {root}")
    if not root.is_dir():
        raise UnsoloError(f"input is not a folder or a COCO JSON file: {root}")
    rels = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )
    if not rels:
        raise UnsoloError(f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) found under {root}")
    numeric = [image_id_from_name(r) for r in rels]
    if all(n is not None for n in numeric) and len(set(numeric)) == len(numeric):
        ids = numeric
    else:
        ids = [_stable_id(r) for r in rels]
        seen: set[int] = set()
        for k, i in enumerate(ids):  # resolve the (rare) hash collisions deterministically
            while i in seen:
                i = (i + 1) & 0x7FFFFFFF or 1
            ids[k] = i
            seen.add(i)
    return [ImageRecord(root / r, int(i), r) for r, i in zip(rels, ids)]


def list_coco(json_path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> list[ImageRecord]:
    """The images of a COCO annotation file; ``file_name`` resolved under ``image_root`` (default: the JSON's folder)."""
    from unsolo.data.coco import load_annotation_file

    coco = load_annotation_file(json_path, "image list")
    root = Path(image_root) if image_root is not None else Path(json_path).parent
    if not root.is_dir():
        raise UnsoloError(f"image root not found: {root}")
    recs = [ImageRecord(root / img["file_name"], int(img["id"]), img["file_name"]) for img in coco["images"]]
    if not recs:
        raise UnsoloError(f"{json_path} lists no images")
    return sorted(recs, key=lambda r: r.image_id)


def list_images(source: str | os.PathLike, image_root: str | os.PathLike | None = None) -> list[ImageRecord]:
    """Images from a folder, a single image file, or a COCO JSON (``image_root`` defaults to
    ``<json dir>/images`` if it exists)."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() in IMAGE_EXTENSIONS:
        if image_root is not None:
            raise UnsoloError("--image-root is only used with a COCO JSON input")
        iid = image_id_from_name(source.name)
        return [ImageRecord(source, iid if iid is not None else _stable_id(source.name), source.name)]
    if source.suffix.lower() == ".json":
        if image_root is None:
            guess = source.parent / "images"
            image_root = guess if guess.is_dir() else source.parent
        return list_coco(source, image_root)
    if image_root is not None:
        raise UnsoloError("--image-root is only used with a COCO JSON input")
    return list_folder(source)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image as RGB ``uint8 (H, W, 3)`` with EXIF orientation applied.

    Raises ``OSError``/``ValueError`` for unreadable files (callers skip them).
    """
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(im, dtype=np.float64)
            hi = a.max() if a.size else 0
            a = a / (65535.0 if hi > 255 else 255.0) * 255.0 if hi > 0 else a
            return np.repeat(np.clip(a + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        if im.mode == "F":
            a = np.asarray(im, dtype=np.float64)
            lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 1.0)
            a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
            return np.repeat(a.astype(np.uint8)[..., None], 3, axis=2)
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))  # composite on white, like most viewers
            im = Image.alpha_composite(bg, im)
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


class SkipCounter:
    """Collects the names of images that could not be read, for the end-of-run report."""

    def __init__(self) -> None:
        self.skipped: list[str] = []

    def add(self, name: str) -> None:
        self.skipped.append(name)

    def report(self) -> None:
        if self.skipped:
            shown = ", ".join(self.skipped[:5]) + (" ..." if len(self.skipped) > 5 else "")
            log.warning("skipped %d unreadable image(s): %s", len(self.skipped), shown)


class ImageDataset:
    """Map-style dataset over :class:`ImageRecord` s: returns ``{"image": uint8 HWC, "record": ...}`` or
    ``None`` for an unreadable file (after a warning naming it); pair with :func:`collate_skip_none`."""

    def __init__(self, records: Sequence[ImageRecord]):
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict | None:
        rec = self.records[i]
        try:
            img = load_image(rec.path)
        except Exception as e:  # corrupt, truncated, not an image, permission denied...
            log.warning("skipping unreadable image %s (%s)", rec.path, str(e).splitlines()[0] if str(e) else type(e).__name__)
            return {"image": None, "record": rec}
        return {"image": img, "record": rec}


def collate_list(batch: list[dict]) -> list[dict]:
    """Collate function that keeps the items as a list (images differ in size; the model pads them). The one used
    by every loader: image decoding, Free Mask, SOLO training."""
    return batch


def iterate_images(
    records: Sequence[ImageRecord], workers: int = 2, batch_size: int = 1, skipped: SkipCounter | None = None
) -> Iterator[list[dict]]:
    """Yield lists of decoded images (``{"image", "record"}``), decoded in DataLoader workers, in order.

    Unreadable images are left out of the batches and added to ``skipped``.
    """
    from torch.utils.data import DataLoader

    loader = DataLoader(
        ImageDataset(records),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_list,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
    for batch in loader:
        good = []
        for item in batch:
            if item["image"] is None:
                if skipped is not None:
                    skipped.add(str(item["record"].file_name))
            else:
                good.append(item)
        yield good
