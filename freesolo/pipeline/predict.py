"""Stage function of ``freesolo predict``: a trained SOLOv2 over a folder / COCO image list -> COCO results."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import torch

from freesolo.data.coco import instance_records, write_results
from freesolo.data.images import SkipCounter, iterate_images, list_images
from freesolo.errors import FreesoloError
from freesolo.utils.progress import progress

log = logging.getLogger("freesolo.predict")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise FreesoloError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FreesoloError("--device cuda requested but CUDA is not available")
    return dev


def predict(
    source: str | os.PathLike,
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    vis: str | os.PathLike | None = None,
    batch_size: int = 1,
    device: str = "auto",
    amp: bool = False,
    score_thr: float | None = None,
    update_thr: float | None = None,
    max_per_img: int | None = None,
    short_side: int = 800,
    max_side: int = 1333,
    with_embeddings: bool = False,
    workers: int = 2,
    overrides: Sequence[str] = (),
) -> list[dict]:
    """Run the model on every image of ``source`` (folder or COCO JSON) and write a COCO results list to ``out``.

    Each result: ``image_id``, ``category_id`` 1 (class-agnostic), ``segmentation`` (RLE at the original size),
    ``bbox`` (tight XYWH of the mask), ``score``; with ``with_embeddings`` also ``emb`` (128 floats).
    ``score_thr`` / ``update_thr`` / ``max_per_img`` override the model's inference settings
    (defaults 0.1 / 0.05 / 100; the official self-training pass uses update 0.3 and 20 per image).
    Unreadable images are skipped with a warning. ``vis``: a folder for mask overlays.
    """
    from freesolo.predictor import Predictor

    if batch_size < 1:
        raise FreesoloError("--batch-size must be at least 1")
    records = list_images(source, image_root)
    dev = resolve_device(device)
    ov = list(overrides)
    for key, value in (("score_thr", score_thr), ("update_thr", update_thr), ("max_per_img", max_per_img)):
        if value is not None:
            ov.append(f"inference.{key}={value}")
    from freesolo.modeling.solov2 import load_model

    predictor = Predictor(load_model(model, dev, ov), dev, short_side=short_side, max_side=max_side, amp=amp)
    skipped = SkipCounter()
    results: list[dict] = []
    bar = progress(total=len(records), desc="predict", unit="img")
    for batch in iterate_images(records, workers=workers, batch_size=batch_size, skipped=skipped):
        if batch:
            outs = predictor.predict_batch([item["image"] for item in batch])
            for item, o in zip(batch, outs):
                rec = item["record"]
                for r in instance_records(rec.image_id, o["masks"], o["scores"],
                                          o["embeddings"] if with_embeddings else None):
                    r.pop("area", None)
                    r.pop("iscrowd", None)
                    results.append(r)
                if vis is not None:
                    from freesolo.utils.vis import save_overlay

                    save_overlay(Path(vis) / (Path(rec.file_name).with_suffix("").as_posix() + ".jpg"), item["image"],
                                 o["masks"], o["scores"])
        bar.update(len(batch))
    bar.close()
    skipped.report()
    write_results(out, results)
    log.info("wrote %d detections for %d images to %s", len(results), len(records) - len(skipped.skipped), out)
    return results
