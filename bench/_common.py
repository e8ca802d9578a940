"""What the bench scripts share, importable as ``from _common import ...`` (a script's own folder is on
``sys.path`` when it runs as ``python bench/X.py``; the package itself is installed, ``pip install -e .``).

* :func:`make_shapes_dataset`: a small pseudo-labelled training set (coloured shapes on noisy backgrounds, RLE masks
  with scores and 128-d embeddings), the same generator as the training tests' ``tests/solo_train_fixtures.py``
  (a copy: the same images and labels for the same arguments, so the figures of ``bench/bench_train.py`` stay
  comparable; benchmarks do not import from ``tests/``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from unsolo.data.coco import instance_records, make_annotation_file, write_annotation_file


def shapes_image(rng: np.random.Generator, height: int, width: int, n_objects: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB ``uint8 (H, W, 3)`` image with ``n_objects`` filled rectangles/ellipses and their ``bool (N, H, W)`` masks."""
    img = (rng.normal(0, 8, (height, width, 3)) + rng.integers(40, 90, 3)).clip(0, 255)
    yy, xx = np.mgrid[:height, :width]
    masks = []
    for k in range(n_objects):
        h = int(rng.integers(height // 5, height // 2))
        w = int(rng.integers(width // 5, width // 2))
        y0 = int(rng.integers(0, height - h))
        x0 = int(rng.integers(0, width - w))
        if k % 2 == 0:
            m = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
        else:
            cy, cx = y0 + h / 2, x0 + w / 2
            m = ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1
        img[m] = rng.integers(150, 255, 3)
        for prev in masks:  # later objects occlude earlier ones
            prev &= ~m
        masks.append(m)
    return img.astype(np.uint8), np.stack(masks) if masks else np.zeros((0, height, width), bool)


def make_shapes_dataset(
    root: Path,
    n_images: int = 4,
    sizes: tuple[tuple[int, int], ...] = ((96, 128), (128, 96)),
    objects: tuple[int, ...] = (2, 3),
    seed: int = 0,
    with_emb: bool = True,
    empty_images: int = 0,
) -> tuple[Path, Path]:
    """Write ``root/images/*.png`` and ``root/labels.json`` (pseudo-label format: RLE, score, emb, category 1).

    ``empty_images`` extra images are listed in the JSON without annotations.
    Returns ``(image_folder, labels_json)``.
    """
    rng = np.random.default_rng(seed)
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n_images + empty_images):
        h, w = sizes[i % len(sizes)]
        n = objects[i % len(objects)] if i < n_images else 0
        img, masks = shapes_image(rng, h, w, n)
        name = f"{i + 1:06d}.png"
        Image.fromarray(img).save(folder / name)
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        if n:
            embs = rng.normal(size=(n, 128)).astype(np.float32) if with_emb else None
            anns += instance_records(i + 1, masks, scores=rng.uniform(0.7, 1.0, n), embeddings=embs)
    labels = root / "labels.json"
    write_annotation_file(labels, make_annotation_file(images, anns))
    return folder, labels
