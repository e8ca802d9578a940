"""Stage 2: pseudo-masks for a folder of images (or a COCO image list) -> one COCO annotation file.

The stage receives the generator object (:mod:`unsolo.generators`: Free Mask by default, MaskCut, Felzenszwalb);
everything below is the same for all of them.

Design (resumable, scalable, memory flat):

* The images, sorted by id, are cut into fixed *chunks* of ``chunk_size`` images. Chunk ``c`` belongs to shard
  ``c % S`` (``--shard i/S`` for job arrays; S = 1 otherwise) and, inside a shard, to torchrun rank
  ``(c // S) % world_size``. Chunk numbering does not depend on the number of processes, so a run can be resumed
  with a different ``--nproc_per_node`` or shard count.
* Each finished chunk is written atomically to ``<out>.parts/chunk-NNNNNN.json``; on restart (after Ctrl-C,
  ``kill -9``, a pre-empted job) chunks already on disk are skipped. A ``manifest.json`` in the same folder
  records the config, backbone and image list, and a restart with different settings is refused.
* When every chunk exists, rank 0 streams them (in chunk = image-id order) into the output file: the merged
  file is byte-identical whatever the interruptions, process count or batch size were.
* Images are decoded and resized in DataLoader workers. Only images of identical resized size are batched
  together (no padding), so batched results equal one-image-at-a-time results (see ``docs/freemask.md``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from unsolo.config import from_dict, save_config, to_dict
from unsolo.data.coco import OBJECT_CATEGORIES, instance_records
from unsolo.data.images import ImageRecord, collate_list, list_images, load_image
from unsolo.data.transforms import resize_image
from unsolo.errors import UnsoloError
from unsolo.generators import FreeMask, FreeMaskResult, MaskGenerator, get_generator
from unsolo.generators.freemask import resized_size
from unsolo.modeling.backbone import ResNetBackbone, fold_frozen_bn, normalize_image
from unsolo.utils import dist
from unsolo.utils.io import atomic_write, read_json, write_json
from unsolo.utils.progress import progress

log = logging.getLogger("unsolo.freemask")

#: Test / operations hook: stop (as if interrupted) after this many chunks were written by this process.
STOP_AFTER_ENV = "UNSOLO_STOP_AFTER_CHUNKS"
MANIFEST = "manifest.json"


@dataclass
class FreeMaskRun:
    """Runtime options of the stage (what to read and write, and how fast); the algorithm is the generator."""

    input: str  # folder of images, or COCO JSON listing them
    out: str  # output COCO annotation file
    weights: str | None = None  # backbone checkpoint (DenseCL / MoCo / torchvision / detectron2 layouts)
    arch: str = "resnet101"  # official: ResNet-101
    image_root: str | None = None  # with a COCO JSON input: folder holding its file_name paths
    batch_size: int = 1  # images per backbone forward pass (only images of identical resized size are batched)
    workers: int = 2  # DataLoader workers decoding + resizing images
    device: str = "auto"  # auto | cpu | cuda | cuda:K
    amp: bool = False  # backbone in bfloat16 (CPU) / float16 (CUDA) autocast; masks may then differ slightly
    channels_last: bool = True  # NHWC convolutions (faster on CPU and tensor cores; numerically ~1e-6 apart)
    fold_bn: bool = True  # fold the frozen BatchNorms into the convolutions (~20 % faster; ~1e-5 apart)
    vis_dir: str | None = None  # write mask overlays here
    chunk_size: int = 64  # images per resumable chunk file
    shard: tuple[int, int] | None = None  # (index, count): process only this shard's chunks, do not merge
    merge_only: bool = False  # only merge existing chunks (after --shard jobs)
    keep_parts: bool = False  # keep <out>.parts/ after the merge


# --------------------------------------------------------------------------------------------- data
class ResizedImages:
    """Dataset: decode (EXIF, RGB) and resize (d2 ResizeShortestEdge, PIL bilinear) in the worker.

    Item: ``{"record", "image": uint8 (h, w, 3) resized | None if unreadable, "orig_size": (H, W),
    "original": uint8 (H, W, 3) | None}``.
    """

    def __init__(self, records: Sequence[ImageRecord], short_side: int, max_size: int, keep_original: bool = False):
        self.records = list(records)
        self.short_side, self.max_size, self.keep_original = short_side, max_size, keep_original

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        try:
            img = load_image(rec.path)
        except Exception as e:  # corrupt, truncated, not an image...
            log.warning("skipping unreadable image %s (%s)", rec.path, (str(e).splitlines() or [type(e).__name__])[0])
            return {"record": rec, "image": None, "orig_size": None, "original": None}
        H, W = img.shape[:2]
        h, w = resized_size(H, W, self.short_side, self.max_size) if self.short_side > 0 else (H, W)
        resized = resize_image(img, (h, w))
        return {"record": rec, "image": resized, "orig_size": (H, W), "original": img if self.keep_original else None}


# -------------------------------------------------------------------------------------------- model
def build_backbone(
    arch: str, weights: str | None, device: torch.device, channels_last: bool = True, fold_bn: bool = False
) -> ResNetBackbone:
    """A frozen-BN ResNet in eval mode with the checkpoint loaded (random weights only if ``weights`` is None);
    optionally BN folded into the convolutions and in channels-last layout (inference speed)."""
    from unsolo.compat.checkpoints import load_backbone_weights

    model = ResNetBackbone(arch, norm="frozen_bn")
    if weights is not None:
        load_backbone_weights(model, weights, arch=arch)
    model.eval().requires_grad_(False).to(device)
    if fold_bn:
        model = fold_frozen_bn(model)  # a folded copy; the loaded weights are not needed afterwards
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def backbone_features(model: ResNetBackbone, images: torch.Tensor, level: str = "res5") -> torch.Tensor:
    """Normalised ``(B, 3, h, w)`` images -> the ``level`` feature map ``(B, C, h/s, w/s)`` (res4: s=16, res5: 32);
    layers above ``level`` are not run."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
    x = model.layer3(model.layer2(model.layer1(x)))  # res4
    if level == "res5":
        x = model.layer4(x)
    elif level != "res4":
        raise UnsoloError(f"feature_level must be res4 or res5, got {level!r}")
    return x


def run_images(
    model: ResNetBackbone | None,
    images: Sequence[np.ndarray],
    orig_sizes: Sequence[tuple[int, int]],
    generator: MaskGenerator,
    device: torch.device,
    amp: bool = False,
    channels_last: bool = True,
) -> list[FreeMaskResult]:
    """``generator`` for images of one identical resized size (``uint8 (h, w, 3)`` each): one backbone forward
    pass for the batch (when the generator uses the backbone), then the generator per image."""
    if not generator.uses_backbone:
        return [generator(img, size) for img, size in zip(images, orig_sizes)]
    x = torch.from_numpy(np.stack(images)).to(device)  # (B, h, w, 3) uint8
    x = normalize_image(x.permute(0, 3, 1, 2).float())  # (B, 3, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        if amp:
            dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
            with torch.autocast(device_type=device.type, dtype=dtype):
                feats = backbone_features(model, x, generator.cfg.feature_level)
        else:
            feats = backbone_features(model, x, generator.cfg.feature_level)
        feats = feats.float().contiguous()  # (B, C, h', w')
        return [generator(f, size) for f, size in zip(feats, orig_sizes)]


# ---------------------------------------------------------------------------------------- records
def result_records(image_id: int, result: FreeMaskResult, official_bbox: bool = False) -> list[dict]:
    """COCO annotation records (no ``id``) for one image's pseudo-masks (``category_id`` 1; no ``emb`` when the
    generator has none)."""
    res = result.to("cpu")
    embs = res.embeddings.numpy() if res.embeddings.shape[-1] else None
    recs = instance_records(image_id, res.masks.numpy(), res.scores.numpy(), embs)
    if official_bbox:
        for r, box in zip(recs, res.boxes.tolist()):
            r["bbox"] = [float(v) for v in box]  # XYXY projection box, as the official script writes it
    return recs


# ------------------------------------------------------------------------------------------ chunks
def parts_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parts")


def chunk_path(parts: Path, index: int) -> Path:
    return parts / f"chunk-{index:06d}.json"


def chunk_owner(index: int, shards: int, world: int) -> tuple[int, int]:
    """(shard, rank) that processes chunk ``index``."""
    return index % shards, (index // shards) % world


def _manifest(run: FreeMaskRun, generator: MaskGenerator, records: Sequence[ImageRecord]) -> dict:
    h = hashlib.sha1()
    for r in records:
        h.update(f"{r.image_id}\t{r.file_name}\n".encode())
    w = Path(run.weights) if run.weights else None
    return {
        "generator": generator.name,
        "config": to_dict(generator.cfg),
        "arch": run.arch,
        "weights": {"name": w.name, "bytes": w.stat().st_size} if w else None,
        "chunk_size": run.chunk_size,
        "images": len(records),
        "image_list_sha1": h.hexdigest(),
    }


def _check_manifest(parts: Path, manifest: dict) -> None:
    path = parts / MANIFEST
    if path.is_file():
        old = read_json(path, "chunk manifest")
        if old != manifest:
            diff = sorted(k for k in manifest if old.get(k) != manifest[k])
            raise UnsoloError(
                f"{parts} holds chunks of a run with different settings ({', '.join(diff) or 'format'}); "
                "use the same options to resume, or delete that folder to start over"
            )
    else:
        write_json(path, manifest, indent=1)


def merge_chunks(out: str | os.PathLike, chunk_paths: Sequence[Path], categories: list[dict] | None = None) -> dict:
    """Stream chunk files (in order) into one COCO file, atomically; annotation ids numbered from 1.

    Memory holds one chunk at a time. Returns counts ``{"images", "annotations", "skipped": [names]}``.
    """
    counts = {"images": 0, "annotations": 0, "skipped": []}

    def write(f):
        f.write('{"images": [')
        first = True
        for p in chunk_paths:
            part = read_json(p, "chunk file")
            counts["skipped"].extend(part.get("skipped", []))
            for img in part["images"]:
                f.write(("" if first else ", ") + json.dumps(img))
                first = False
                counts["images"] += 1
        f.write('], "annotations": [')
        first, ann_id = True, 0
        for p in chunk_paths:
            for a in read_json(p, "chunk file")["annotations"]:
                ann_id += 1
                a["id"] = ann_id
                f.write(("" if first else ", ") + json.dumps(a))
                first = False
        counts["annotations"] = ann_id
        f.write('], "categories": ' + json.dumps(categories or OBJECT_CATEGORIES) + "}")

    atomic_write(out, write)
    return counts


def config_path(out: str | os.PathLike) -> Path:
    """Where the resolved config is saved: ``pseudo.json`` -> ``pseudo.config.yaml``."""
    out = Path(out)
    return out.with_name(out.stem + ".config.yaml")


# --------------------------------------------------------------------------------------------- stage
def run_freemask(run: FreeMaskRun, generator: MaskGenerator | None = None) -> dict:
    """Run ``generator`` (Free Mask with the official settings by default; build one with
    :func:`unsolo.generators.build_generator`) over ``run.input`` and write ``run.out`` (see the module docstring).
    Returns a summary dict."""
    gen = generator if generator is not None else FreeMask()
    if not isinstance(gen, MaskGenerator):
        raise TypeError(f"run_freemask takes a generator such as FreeMask(cfg), not a {type(gen).__name__}")
    if run.batch_size < 1 or run.chunk_size < 1 or run.workers < 0:
        raise UnsoloError("--batch-size and --chunk-size must be >= 1, --workers >= 0")
    if not run.merge_only and run.weights is None and gen.uses_backbone:
        raise UnsoloError(f"--weights is required for {gen.name} (a DenseCL, MoCo or torchvision ResNet checkpoint)")
    if run.device.startswith("cuda") and not torch.cuda.is_available():
        raise UnsoloError(f"--device {run.device}: no CUDA device is available (use --device cpu)")
    if run.weights is not None and not Path(run.weights).is_file():
        raise UnsoloError(f"weights file not found: {run.weights}")
    shard_i, shards = run.shard or (0, 1)
    if not (0 <= shard_i < shards):
        raise UnsoloError(f"--shard {shard_i}/{shards}: the index must be in 0..{shards - 1}")
    if Path(run.out).suffix.lower() != ".json":
        raise UnsoloError(f"--out must be a .json file, got {run.out}")

    records = sorted(list_images(run.input, run.image_root), key=lambda r: r.image_id)
    parts = parts_dir(run.out)
    if run.merge_only and (parts / MANIFEST).is_file():  # merge with the chunking the shards used
        known = read_json(parts / MANIFEST, "chunk manifest")
        if known.get("images") != len(records):
            raise UnsoloError(f"{parts} was computed for {known.get('images')} images, the input now has {len(records)}")
        run = dataclasses.replace(run, chunk_size=int(known["chunk_size"]))
    n_chunks = math.ceil(len(records) / run.chunk_size)
    t0 = time.time()
    with dist.distributed(run.device) as device:
        rank, world = dist.get_rank(), dist.get_world_size()
        # the manifest is written by computing runs only; a --merge without --weights checks nothing
        manifest = _manifest(run, gen, records) if run.weights or not gen.uses_backbone else None
        if rank == 0 and manifest is not None:
            if not run.merge_only:
                parts.mkdir(parents=True, exist_ok=True)
            if parts.is_dir():
                _check_manifest(parts, manifest)
        dist.barrier()
        if manifest is not None and rank != 0 and parts.is_dir():
            _check_manifest(parts, manifest)

        mine = [c for c in range(n_chunks) if chunk_owner(c, shards, world) == (shard_i, rank)]
        todo = [] if run.merge_only else [c for c in mine if not chunk_path(parts, c).is_file()]
        processed = 0
        if todo:
            processed = _process_chunks(run, gen, records, todo, parts, device)
        dist.barrier()

        summary: dict = {"out": str(run.out), "images": len(records), "chunks": n_chunks, "processed_images": processed}
        if run.shard is not None and not run.merge_only:
            done = sum(chunk_path(parts, c).is_file() for c in range(n_chunks))
            summary.update(shard=f"{shard_i}/{shards}", chunks_done=done)
            if rank == 0:
                log.info("shard %d/%d done; %d of %d chunks exist; merge with --merge (or run without --shard)", shard_i, shards, done, n_chunks)
            return summary
        if rank == 0:
            missing = [c for c in range(n_chunks) if not chunk_path(parts, c).is_file()]
            if missing:
                raise UnsoloError(
                    f"cannot merge: {len(missing)} of {n_chunks} chunks are missing in {parts} (e.g. chunk {missing[0]}); "
                    "run the remaining shards, or run without --merge/--shard to compute them"
                )
            cfg = gen.cfg
            if (parts / MANIFEST).is_file():  # the config the chunks were computed with (matters for --merge)
                known = read_json(parts / MANIFEST, "chunk manifest")
                cfg = from_dict(get_generator(known.get("generator", "freemask")).config_class, known["config"])
            counts = merge_chunks(run.out, [chunk_path(parts, c) for c in range(n_chunks)])
            save_config(cfg, config_path(run.out))
            if counts["skipped"]:
                shown = ", ".join(counts["skipped"][:5]) + (" ..." if len(counts["skipped"]) > 5 else "")
                log.warning("skipped %d unreadable image(s): %s", len(counts["skipped"]), shown)
            if not run.keep_parts:
                shutil.rmtree(parts, ignore_errors=True)
            summary.update(
                images_with_masks=counts["images"],
                annotations=counts["annotations"],
                skipped=len(counts["skipped"]),
                seconds=round(time.time() - t0, 2),
                config=str(config_path(run.out)),
            )
            log.info(
                "wrote %s: %d of %d images with masks, %d masks", run.out, counts["images"], len(records), counts["annotations"]
            )
        dist.barrier()
    return summary


def _process_chunks(
    run: FreeMaskRun, generator: MaskGenerator, records: Sequence[ImageRecord], todo: list[int], parts: Path, device: torch.device
) -> int:
    """Compute and write the chunk files ``todo`` (this rank's missing chunks). Returns the images processed."""
    from torch.utils.data import DataLoader

    stop_after = int(os.environ.get(STOP_AFTER_ENV, "0") or 0)
    model = build_backbone(run.arch, run.weights, device, run.channels_last, run.fold_bn) \
        if generator.uses_backbone else None
    spans = OrderedDict((c, records[c * run.chunk_size : (c + 1) * run.chunk_size]) for c in todo)
    flat = [r for recs in spans.values() for r in recs]
    loader = DataLoader(
        ResizedImages(flat, generator.cfg.short_side, generator.cfg.max_size, keep_original=run.vis_dir is not None),
        batch_size=1,
        shuffle=False,
        num_workers=run.workers,
        collate_fn=collate_list,
        prefetch_factor=4 if run.workers > 0 else None,
    )
    bar = progress(total=len(flat), desc="freemask", unit="img")
    items = iter(loader)
    written = 0
    try:
        for c, recs in spans.items():
            chunk = [next(items)[0] for _ in recs]
            _write_chunk(run, generator, model, device, chunk, chunk_path(parts, c), bar)
            written += 1
            if stop_after and written >= stop_after:
                raise KeyboardInterrupt(f"{STOP_AFTER_ENV}={stop_after} reached")
    finally:
        bar.close()
    return len(flat)


def _write_chunk(run, generator: MaskGenerator, model, device, chunk: list[dict], path: Path, bar) -> None:
    """The generator on one chunk's images (batched by identical resized size) -> atomic chunk file."""
    good = [it for it in chunk if it["image"] is not None]
    skipped = [str(it["record"].file_name) for it in chunk if it["image"] is None]
    bar.update(len(skipped))
    groups: dict[tuple, list[dict]] = OrderedDict()
    for it in good:
        groups.setdefault(it["image"].shape, []).append(it)
    results: dict[int, FreeMaskResult] = {}
    for same in groups.values():
        for k in range(0, len(same), run.batch_size):
            batch = same[k : k + run.batch_size]
            outs = run_images(model, [b["image"] for b in batch], [b["orig_size"] for b in batch], generator, device, run.amp,
                              run.channels_last)
            for b, res in zip(batch, outs):
                results[b["record"].image_id] = res.to("cpu")
            bar.update(len(batch))
    images, anns = [], []
    for it in sorted(good, key=lambda it: it["record"].image_id):
        rec, res = it["record"], results[it["record"].image_id]
        if run.vis_dir is not None:
            from unsolo.utils.vis import save_overlay

            save_overlay(Path(run.vis_dir) / (Path(rec.file_name).with_suffix("").as_posix() + ".jpg"), it["original"], res.masks.numpy(), res.scores.numpy())
        if len(res) == 0:
            continue  # as the official script: an image without a surviving mask is left out of "images"
        H, W = it["orig_size"]
        images.append({"id": rec.image_id, "file_name": rec.file_name, "height": int(H), "width": int(W)})
        anns.extend(result_records(rec.image_id, res, getattr(generator.cfg, "official_bbox", False)))
    write_json(path, {"images": images, "annotations": anns, "skipped": skipped})
