"""Stage function of ``unsolo predict``: a trained SOLOv2 over a folder / COCO image list -> COCO results."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from unsolo.data.coco import instance_records, write_results
from unsolo.data.images import ImageRecord, SkipCounter, iterate_images, list_images
from unsolo.errors import UnsoloError
from unsolo.utils.dist import all_gather_object, barrier, distributed, get_rank, get_world_size
from unsolo.utils.progress import progress

log = logging.getLogger("unsolo.predict")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UnsoloError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnsoloError("--device cuda requested but CUDA is not available")
    return dev


def iter_predictions(
    records: Sequence[ImageRecord],
    predictor,
    *,
    batch_size: int = 1,
    workers: int = 2,
    skipped: SkipCounter | None = None,
    desc: str = "predict",
) -> Iterator[tuple[ImageRecord, np.ndarray, dict]]:
    """Yield ``(record, image, output)`` for every readable image, in order; ``output`` as ``Predictor`` returns it.

    Images are decoded in DataLoader workers; unreadable ones are skipped (warning, counted in ``skipped``).
    A progress bar with images/s and ETA is shown on rank 0.
    """
    bar = progress(total=len(records), desc=desc, unit="img")
    for batch in iterate_images(records, workers=workers, batch_size=batch_size, skipped=skipped):
        if batch:
            outs = predictor.predict_batch([item["image"] for item in batch])
            for item, o in zip(batch, outs):
                yield item["record"], item["image"], o
        bar.update(len(batch) if batch else batch_size)
    bar.close()


def rank_records(records: Sequence[ImageRecord]) -> list[ImageRecord]:
    """This rank's share of the images under torchrun (every ``world``-th one); all of them in one process."""
    return list(records[get_rank():: get_world_size()])


def gather_to_rank0(items: list) -> list | None:
    """Concatenate every rank's list on rank 0 (others get ``None``); the list itself in one process."""
    parts = all_gather_object(items)
    return [x for part in parts for x in part] if get_rank() == 0 else None


def build_predictor(model: str | os.PathLike, device: str, *, amp: bool = False, short_side: int = 800,
                    max_side: int = 1333, overrides: Sequence[str] = (), precision: str = "float32"):
    """Load a checkpoint (this project's or official) into a :class:`~unsolo.predictor.Predictor`.

    The network runs under autocast with ``amp`` (float16 on CUDA, bfloat16 on a CPU) or when ``precision``
    resolves to bfloat16 (``auto``: on CPUs with native bf16, :mod:`unsolo.engine.precision`); post-processing
    stays float32 either way."""
    from unsolo.compat.solo_checkpoint import load_model
    from unsolo.engine.precision import resolve_precision
    from unsolo.predictor import Predictor

    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    bf16 = not amp and resolve_precision(precision, dev) == "bfloat16"
    return Predictor(load_model(model, dev, overrides), dev, short_side=short_side, max_side=max_side, amp=amp or bf16,
                     amp_dtype=torch.bfloat16 if bf16 else None)


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
    precision: str = "float32",
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

    Each result: ``image_id``, ``file_name`` (the image's path relative to the folder, or the JSON's ``file_name``),
    ``category_id`` (1 for a class-agnostic model; for a class-aware one, the training
    label file's category id of the predicted class, from the checkpoint's ``category_ids``), ``segmentation`` (RLE at the original size),
    ``bbox`` (tight XYWH of the mask), ``score``; with ``with_embeddings`` also ``emb`` (128 floats).
    ``score_thr`` / ``update_thr`` / ``max_per_img`` override the model's inference settings
    (defaults 0.1 / 0.05 / 100; the official self-training pass uses update 0.3 and 20 per image).
    Unreadable images are skipped with a warning. ``vis``: a folder for mask overlays.
    Under ``torchrun`` the images are split over the ranks and rank 0 writes the merged file.
    """
    if batch_size < 1:
        raise UnsoloError("--batch-size must be at least 1")
    records = list_images(source, image_root)
    with distributed(str(resolve_device(device))) as dev:
        predictor = build_predictor(model, dev, amp=amp, short_side=short_side, max_side=max_side, precision=precision,
                                    overrides=list(overrides) + inference_overrides(score_thr, update_thr, max_per_img))
        skipped = SkipCounter()
        results: list[dict] = []
        class_ids = tuple(getattr(predictor.model.cfg, "category_ids", ()) or ())  # class-aware: channel -> id
        for rec, image, o in iter_predictions(rank_records(records), predictor, batch_size=batch_size, workers=workers,
                                              skipped=skipped):
            for r in instance_records(rec.image_id, o["masks"], o["scores"],
                                      o["embeddings"] if with_embeddings else None,
                                      category_ids(o["labels"], class_ids)):
                r.pop("area", None)
                r.pop("iscrowd", None)
                r["file_name"] = rec.file_name  # evaluation matches images by it, whatever ids the ground truth uses
                results.append(r)
            if vis is not None:
                from unsolo.utils.vis import save_overlay

                save_overlay(Path(vis) / (Path(rec.file_name).with_suffix("").as_posix() + ".jpg"), image,
                             o["masks"], o["scores"])
        skipped.report()
        merged = gather_to_rank0(results)
        if merged is not None:
            write_results(out, merged)
            log.info("wrote %d detections for %d images to %s", len(merged), len(records), out)
        barrier()
    return merged if merged is not None else results


def category_ids(labels, class_ids) -> list[int] | None:
    """Label-file category id of each detection for a class-aware model (``class_ids`` = the model's
    ``category_ids``); ``None`` (= category 1) for a class-agnostic model."""
    if not class_ids:
        return None
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size and int(labels.max()) >= len(class_ids):
        raise UnsoloError(f"the model predicts class channel {int(labels.max())} but its checkpoint lists only "
                            f"{len(class_ids)} category id(s)")
    return [int(class_ids[int(l)]) for l in labels]


def inference_overrides(score_thr: float | None = None, update_thr: float | None = None,
                        max_per_img: int | None = None) -> list[str]:
    """Dotted model-config overrides for the inference thresholds that are given."""
    return [f"inference.{k}={v}" for k, v in (("score_thr", score_thr), ("update_thr", update_thr),
                                             ("max_per_img", max_per_img)) if v is not None]
