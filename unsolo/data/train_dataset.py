"""Training data for self-supervised SOLO: pseudo-labels (COCO JSON, RLE) + images -> weak and strong views.

Loading follows the official ``load_coco_json`` + ``DatasetMapperTwoCropSeparate`` (spec section 6.1):

* the extra per-annotation keys ``emb`` (128 floats; zeros when absent = unknown) and ``score`` are kept;
* ``iscrowd=1`` annotations are dropped, and images left without annotations are filtered out
  (``FILTER_EMPTY_ANNOTATIONS``);
* category ids are mapped to contiguous class indices (sorted ids; pseudo-labels: id 1 -> class 0);
* instances whose mask (or box) is empty after resizing are removed (``filter_empty_instances``);
* ``usemask`` (few-label splits of ``unsolo split-labels --mode masks``): an annotation with ``"usemask": 0`` is
  box-supervised: its mask is never decoded, the filled box of its ``bbox`` (XYWH) takes its place, and the
  instance carries ``usemask`` False to the loss. Absent = 1.

**Boxes** (deliberate fix of the official quirk Q1, switchable): with ``box_source="mask"`` (default) every box
is the tight box of its transformed mask. The official loader instead reads ``bbox`` as XYWH, while the official
Free Mask writes XYXY, which inflates boxes by their top-left corner; ``box_source="json"`` reproduces that
reading (``bbox`` taken as XYWH, scaled, flipped and clipped) for parity with the official code.

Decoding and augmentation run in DataLoader workers. An unreadable image, or one whose size differs from the
JSON's, is reported once with a warning and replaced by the next readable image of the list, so a batch keeps its
size (and DDP ranks stay in step); training never aborts on a bad file.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from unsolo.data.coco import annotations_by_image, decode_segmentation, load_annotation_file, mask_to_xywh
from unsolo.data.images import list_images, load_image
from unsolo.data.transforms import (
    StrongAugConfig,
    draw_weak_params,
    masks_to_boxes,
    resize_image,
    resize_masks,
    strong_view,
    transform_boxes,
)
from unsolo.errors import UnsoloError

log = logging.getLogger("unsolo.train_data")


@dataclass
class TrainImage:
    """One training image and its pseudo-labels (annotations kept as JSON dicts, decoded in the workers)."""

    path: Path
    image_id: int
    file_name: str
    height: int
    width: int
    annotations: list[dict]


def spans_image(bbox_xywh, height: int, width: int, frac: float) -> bool:
    """Whether an XYWH box covers more than ``frac`` of the image along both axes (a label that says "the whole
    image": under the box-projection losses it asks for nothing but a mask that touches every row and column)."""
    _, _, w, h = (list(bbox_xywh or [0, 0, 0, 0]) + [0, 0, 0, 0])[:4]
    return float(w) > frac * width and float(h) > frac * height


def load_training_set(
    images: str | os.PathLike, labels: str | os.PathLike, image_root: str | os.PathLike | None = None,
    max_label_span: float | None = None,
) -> tuple[list[TrainImage], dict[int, int]]:
    """Join a pseudo-label file with the images it describes.

    Args:
        images: the image folder (or a COCO JSON listing the images, with ``image_root``), read with
            :func:`unsolo.data.images.list_images`. Images are matched to the label file by ``file_name``
            (relative path), falling back to the image id.
        labels: COCO JSON of pseudo-labels (Free Mask or self-training output).
        max_label_span: drop the labels whose box (``bbox``, else the mask's box) covers more than this fraction of
            the image along both axes; ``None`` keeps every label (official).

    Returns:
        ``(items, category_map)``: the images that have at least one non-crowd annotation, in the label file's
        order, and the map from category id to contiguous class index.
    """
    coco = load_annotation_file(labels, "pseudo-label file")
    listed = list_images(images, image_root)
    by_name = {r.file_name: r for r in listed}
    by_id = {r.image_id: r for r in listed}
    cat_ids = sorted({int(c["id"]) for c in coco.get("categories") or []} | {int(a.get("category_id", 1)) for a in coco["annotations"]})
    category_map = {cid: k for k, cid in enumerate(cat_ids)}
    anns = annotations_by_image(coco)
    items: list[TrainImage] = []
    missing = 0
    empty = 0
    spanning = 0
    for img in coco["images"]:
        iid = int(img["id"])
        kept = [_slim(a) for a in anns.get(iid, []) if not a.get("iscrowd", 0)
                and ("segmentation" in a or (not int(a.get("usemask", 1)) and "bbox" in a))]
        if max_label_span is not None and kept:
            h, w = int(img["height"]), int(img["width"])
            wide = [spans_image(a.get("bbox") or mask_to_xywh(decode_segmentation(a["segmentation"], h, w)), h, w,
                                max_label_span) for a in kept]
            spanning += sum(wide)
            kept = [a for a, x in zip(kept, wide) if not x]
        if not kept:
            empty += 1
            continue
        rec = by_name.get(img.get("file_name", "")) or by_id.get(iid)
        if rec is None:
            missing += 1
            continue
        items.append(TrainImage(rec.path, iid, rec.file_name, int(img["height"]), int(img["width"]), kept))
    if spanning:
        log.info("%d label(s) whose box spans more than %.0f %% of the image along both axes left out "
                 "(data.max_label_span)", spanning, 100 * max_label_span)
    if missing:
        log.warning("%d labelled image(s) of %s were not found under %s and are left out", missing, labels, images)
    if empty:
        log.info("%d image(s) without annotations left out (FILTER_EMPTY_ANNOTATIONS)", empty)
    if not items:
        raise UnsoloError(
            f"no training images: none of the {len(coco['images'])} images of {labels} has annotations "
            f"and an image file under {images}"
        )
    return items, category_map


class PseudoLabelDataset:
    """Map-style dataset indexed by ``(index, sample_seed)`` pairs from :class:`~unsolo.data.samplers.GroupedBatchSampler`.

    Each item is a dict::

        "weak":      uint8 (3, H, W)   RGB, resized + flipped
        "strong":    uint8 (3, H, W)   the strong photometric view (None when it is made on the device)
        "instances": {"masks": bool (N, H, W), "boxes": float32 (N, 4) XYXY, "labels": int64 (N,),
                      "embs": float32 (N, emb_dim), "scores": float32 (N,), "usemask": bool (N,)}
        "orig_size": (H0, W0); "image_id": int; "file_name": str; "seed": int (the sample's seed)
    """

    def __init__(
        self,
        items: list[TrainImage],
        category_map: dict[int, int],
        min_sizes: tuple[int, ...] = (640, 672, 704, 736, 768, 800),
        max_size: int = 1333,
        flip_prob: float = 0.5,
        strong: StrongAugConfig | None = None,
        strong_in_workers: bool = True,
        box_source: Literal["mask", "json"] = "mask",
        emb_dim: int = 128,
    ):
        self.category_map = category_map
        self.min_sizes, self.max_size, self.flip_prob = tuple(min_sizes), max_size, flip_prob
        self.strong = strong or StrongAugConfig()
        self.strong_in_workers = strong_in_workers
        if box_source not in ("mask", "json"):
            raise UnsoloError(f"box_source must be 'mask' or 'json', got {box_source!r}")
        self.box_source = box_source
        self.emb_dim = emb_dim
        for it in items:
            for a in it.annotations:
                if a.get("emb") is not None and len(a["emb"]) != emb_dim:
                    raise UnsoloError(
                        f"an annotation of {it.file_name} has a {len(a['emb'])}-d 'emb'; the model expects {emb_dim}"
                    )
        self._warned: set[int] = set()
        # Items are pickled into one byte buffer (detectron2's trick): DataLoader workers share it copy-on-write
        # instead of touching millions of Python objects' reference counts (memory growing with every worker).
        blobs = [pickle.dumps(it, protocol=pickle.HIGHEST_PROTOCOL) for it in items]
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        self._sizes = np.asarray([(it.height, it.width) for it in items], dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self._ends)

    def item(self, i: int) -> TrainImage:
        """The :class:`TrainImage` at index ``i``."""
        start = int(self._ends[i - 1]) if i > 0 else 0
        return pickle.loads(self._buffer[start : int(self._ends[i])].tobytes())

    def sizes(self) -> list[tuple[int, int]]:
        """``(height, width)`` of every image (from the label file), for aspect-ratio grouping."""
        return [(int(h), int(w)) for h, w in self._sizes]

    def __getitem__(self, key: tuple[int, int] | int) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, index_seed(key))
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            try:
                return self.load(i, seed)
            except (OSError, ValueError, SyntaxError) as e:
                if i not in self._warned:
                    self._warned.add(i)
                    log.warning("skipping unreadable training image %s (%s)", self.item(i).path, _first_line(e))
        raise UnsoloError("no training image could be read")

    # ------------------------------------------------------------------------------------------------
    def decode(self, i: int) -> tuple[np.ndarray, dict, TrainImage]:
        """Image ``uint8 (H0, W0, 3)``, original-size instances (masks ``bool (N, H0, W0)``, JSON boxes XYXY), item."""
        it = self.item(i)
        image = load_image(it.path)
        if image.shape[:2] != (it.height, it.width):
            raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} but the label file says {it.width}x{it.height}")
        n = len(it.annotations)
        masks = np.zeros((n, it.height, it.width), dtype=bool)
        embs = np.zeros((n, self.emb_dim), dtype=np.float32)
        scores = np.ones((n,), dtype=np.float32)
        labels = np.zeros((n,), dtype=np.int64)
        json_boxes = np.zeros((n, 4), dtype=np.float32)
        usemask = np.ones((n,), dtype=bool)
        for k, a in enumerate(it.annotations):
            usemask[k] = bool(int(a.get("usemask", 1)))
            if usemask[k]:
                masks[k] = decode_segmentation(a["segmentation"], it.height, it.width).astype(bool)
            else:  # box-supervised: the filled box (pixel edges of the XYWH bbox), the mask is not used
                bx, by, bw, bh = (list(a.get("bbox") or [0, 0, 0, 0]) + [0, 0, 0, 0])[:4]
                x0, y0 = max(int(np.floor(bx)), 0), max(int(np.floor(by)), 0)
                x1, y1 = min(int(np.ceil(bx + bw)), it.width), min(int(np.ceil(by + bh)), it.height)
                masks[k, y0:y1, x0:x1] = True
            if a.get("emb") is not None:
                embs[k] = np.asarray(a["emb"], dtype=np.float32).reshape(-1)  # length checked in __init__
            scores[k] = float(a.get("score", 1.0))
            labels[k] = self.category_map.get(int(a.get("category_id", 1)), 0)
            x, y, w, h = (list(a.get("bbox") or [0, 0, 0, 0]) + [0, 0, 0, 0])[:4]
            json_boxes[k] = (x, y, x + w, y + h)  # read as XYWH, as the official loader does
        inst = {
            "masks": torch.from_numpy(masks),
            "json_boxes": torch.from_numpy(json_boxes),
            "labels": torch.from_numpy(labels),
            "embs": torch.from_numpy(embs),
            "scores": torch.from_numpy(scores),
            "usemask": torch.from_numpy(usemask),
        }
        return image, inst, it

    def load(self, i: int, seed: int) -> dict:
        image, inst, it = self.decode(i)
        g = torch.Generator().manual_seed(seed)
        h0, w0 = image.shape[:2]
        p = draw_weak_params(h0, w0, self.min_sizes, self.max_size, self.flip_prob, g)

        # ---- weak view: resize (image bilinear, masks nearest), flip
        img = resize_image(image, p.size)  # (h, w, 3)
        masks = resize_masks(inst["masks"], p.size)  # (N, h, w)
        weak = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()  # (3, h, w)
        if p.flip:
            weak = weak.flip(-1)
            masks = masks.flip(-1)
        if self.box_source == "mask":
            boxes = masks_to_boxes(masks)
        else:
            boxes = transform_boxes(inst["json_boxes"], (h0, w0), p.size, p.flip)

        # ---- filter_empty_instances: empty masks or empty boxes
        nonempty = masks.flatten(1).any(dim=1) & ((boxes[:, 2] - boxes[:, 0]) > 1e-5) & ((boxes[:, 3] - boxes[:, 1]) > 1e-5)
        instances = {
            "masks": masks[nonempty].contiguous(),
            "boxes": boxes[nonempty],
            "labels": inst["labels"][nonempty],
            "embs": inst["embs"][nonempty],
            "scores": inst["scores"][nonempty],
            "usemask": inst["usemask"][nonempty],
        }

        # ---- strong view: same geometry and instances, photometric changes only
        strong = strong_view(weak, self.strong, g) if self.strong_in_workers else None
        return {
            "weak": weak,
            "strong": strong,
            "instances": instances,
            "orig_size": (h0, w0),
            "image_id": it.image_id,
            "file_name": it.file_name,
            "seed": seed,
        }


def _slim(ann: dict) -> dict:
    """The keys training reads, with ``emb`` as a float32 array (a JSON list of floats costs ~8x the memory)."""
    out = {k: ann[k] for k in ("segmentation", "bbox", "category_id", "score", "usemask") if k in ann}
    if ann.get("emb") is not None:
        out["emb"] = np.asarray(ann["emb"], dtype=np.float32).reshape(-1)
    return out


def index_seed(index: int) -> int:
    from unsolo.data.samplers import mix_seed

    return mix_seed(index)


def _first_line(e: Exception) -> str:
    s = str(e)
    return s.splitlines()[0] if s else type(e).__name__
