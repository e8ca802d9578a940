"""Stage 1: DenseCL pre-training of a ResNet backbone on a folder of unlabeled images.

``pretrain(source, out, cfg)`` reads top to bottom: images -> model -> optimizer -> resume -> loop -> export.
Outputs in ``out``: ``config.yaml`` (resolved config), ``checkpoint.pth`` (everything needed for an exact
resume), ``log.jsonl`` (one JSON object per logged iteration), ``loss.png`` (loss curve), ``summary.json`` and
``backbone.pth`` in the public DenseCL release layout (``{"state_dict": torchvision names, "author": "DenseCL"}``),
which Free Mask (``--weights``) and SOLO training (``--backbone-weights``) load directly.

Multi-GPU: ``torchrun --nproc_per_node N -m unsolo pretrain ...``; ``batch_size`` is the *global* batch, keys
are gathered from all ranks into the queues, and BatchNorm statistics are decorrelated with MoCo's Shuffle BN
(default) or SyncBN (``bn_mode: sync``). A single process (CPU or one GPU) needs neither: with one process there
is nothing to shuffle across, so the key encoder sees the same batch in the same order as the query encoder
(as in the official code's single-GPU case the BN "cheating" shortcut is then possible in principle; on small
data we found it harmless, and ``bn_mode: sync`` is the same as plain BN in one process).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
import yaml

from unsolo.config import to_dict
from unsolo.data.images import list_images
from unsolo.engine.precision import autocast, describe, resolve_precision
from unsolo.engine.state import read_checkpoint
from unsolo.data.views import AugmentConfig, IterationBatchSampler, TwoViewDataset, collate_views, photometric_augment
from unsolo.errors import UnsoloError
from unsolo.modeling.backbone import ARCHS, normalize_image
from unsolo.modeling.densecl import DenseCL, convert_sync_bn, export_checkpoint
from unsolo.utils import dist as du
from unsolo.utils.io import atomic_write, write_json
from unsolo.utils.progress import LongJobWarning, progress

log = logging.getLogger("unsolo.pretrain")

# Fields that may differ between a run and its resumption: no effect on the result (workers, logging), or a
# deliberate change of plan (more epochs extend the cosine schedule; amp).
RESUMABLE_CHANGES = ("workers", "log_period", "checkpoint_period", "epochs", "amp", "precision")


@dataclass
class PretrainConfig:
    """DenseCL pre-training; defaults are the official ImageNet 200-epoch recipe (``densecl_imagenet_200ep.py``)."""

    #: names these options had before the training engine shared them with `unsolo train` (still accepted, with a
    #: one-line deprecation warning, by every resolver)
    RENAMED_OPTIONS: ClassVar[dict[str, str]] = {"checkpoint_every": "checkpoint_period", "log_every": "log_period"}

    arch: str = "resnet50"  # backbone: resnet18/34/50/101 (the FreeSOLO release uses a DenseCL resnet101)
    epochs: int = 200  # passes over the images (drop-last batches)
    batch_size: int = 256  # GLOBAL batch over all processes (official: 32 per GPU x 8 GPUs)
    size: int = 224  # side of the square random-resized crops (C5 grid = size / 32)
    base_lr: float = 0.03  # SGD learning rate for a batch of 256; scaled linearly: lr = base_lr * batch / 256
    sgd_momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # on every parameter (official: no exclusions)
    schedule_step: Literal["epoch", "iter"] = "epoch"  # cosine to 0 updated per epoch (official, mmcv) or per iteration
    feat_dim: int = 128  # embedding size of the global and dense heads
    hidden_dim: int | None = None  # hidden width of both heads (None: C5 channels, 2048 for R-50)
    queue_len: int = 65536  # negatives per queue; a multiple of batch_size
    key_momentum: float = 0.999  # EMA momentum of the key encoder
    temperature: float = 0.2  # InfoNCE temperature
    loss_lambda: float = 0.5  # weight of the dense loss: (1 - lambda) * global + lambda * dense
    lambda_warmup_iters: int = 0  # lambda = 0 for the first N iterations (DenseCLWarmupHook; off in the official configs)
    bn_mode: Literal["shuffle", "sync"] = "shuffle"  # multi-GPU BatchNorm: MoCo Shuffle BN (official) or SyncBN
    amp: bool = True  # float16 mixed precision on CUDA (ignored on CPU)
    precision: Literal["auto", "float32", "bfloat16"] = "auto"  # CPU: auto = bfloat16 autocast for the encoders
    #   where the CPU has native bf16 (AMX / AVX512-BF16), float32 elsewhere; the losses stay float32 (as under amp)
    workers: int = 4  # DataLoader processes per rank (decode + random resized crop)
    seed: int = 0  # seeds crops, augmentations and the image order: runs are reproducible and resumable exactly
    checkpoint_period: int = 1000  # iterations between checkpoints (also at the end and when stopped)
    log_period: int = 10  # iterations between log.jsonl lines
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # MoCo v2 augmentation


def learning_rate(cfg: PretrainConfig, iteration: int, iters_per_epoch: int) -> float:
    """Cosine annealing from ``base_lr * batch / 256`` to 0 over the run, stepped per epoch or per iteration."""
    peak = cfg.base_lr * cfg.batch_size / 256.0
    total = cfg.epochs * iters_per_epoch
    if cfg.schedule_step == "epoch":
        frac = (iteration // iters_per_epoch) / cfg.epochs
    else:
        frac = iteration / max(1, total)
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(1.0, frac)))


def dense_lambda(cfg: PretrainConfig, iteration: int) -> float:
    """The dense-loss weight at ``iteration`` (0 during the optional warm-up)."""
    return 0.0 if iteration < cfg.lambda_warmup_iters else cfg.loss_lambda


def _check_config(cfg: PretrainConfig, num_images: int, world: int) -> None:
    if cfg.arch not in ARCHS:
        raise UnsoloError(f"unknown backbone {cfg.arch!r}; choose one of {', '.join(ARCHS)}")
    if cfg.size < 32:
        raise UnsoloError(f"crop size {cfg.size} is too small: the C5 map needs at least 32 px (use >= 64)")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise UnsoloError("epochs and batch_size must be positive")
    if cfg.batch_size % world != 0:
        raise UnsoloError(f"batch size {cfg.batch_size} is the global batch and must divide by the {world} processes")
    if cfg.queue_len % cfg.batch_size != 0:
        raise UnsoloError(
            f"queue length {cfg.queue_len} must be a multiple of the global batch size {cfg.batch_size} "
            f"(e.g. --set queue_len={max(1, cfg.queue_len // cfg.batch_size) * cfg.batch_size})"
        )
    if num_images < cfg.batch_size:
        raise UnsoloError(
            f"only {num_images} images for a batch of {cfg.batch_size} (batches drop the remainder); "
            f"lower --batch-size (and queue_len to a multiple of it)"
        )
    if not 0.0 <= cfg.loss_lambda <= 1.0:
        raise UnsoloError(f"loss_lambda must lie in [0, 1], got {cfg.loss_lambda}")


def build_model(cfg: PretrainConfig) -> DenseCL:
    return DenseCL(
        cfg.arch,
        feat_dim=cfg.feat_dim,
        hidden_dim=cfg.hidden_dim,
        queue_len=cfg.queue_len,
        momentum=cfg.key_momentum,
        temperature=cfg.temperature,
        shuffle_bn=cfg.bn_mode == "shuffle",
    )


def _save_torch(path: Path, obj) -> None:
    atomic_write(path, lambda f: torch.save(obj, f), mode="wb")


def _plot_losses(log_path: Path, png_path: Path) -> None:
    """Loss curve (total, global, dense) from ``log.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    it = [r["iter"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for key, label in (("loss", "total"), ("loss_global", "global"), ("loss_dense", "dense")):
        ax.plot(it, [r[key] for r in rows], label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("InfoNCE loss")
    ax.set_title("DenseCL pre-training")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(png_path, lambda f: f.write(buf.getvalue()), mode="wb")


def _truncate_log(log_path: Path, upto_iter: int) -> None:
    """On resume, drop log lines written after the checkpoint (they will be written again)."""
    if not log_path.is_file():
        return
    keep = [line for line in log_path.read_text().splitlines() if line.strip() and json.loads(line)["iter"] <= upto_iter]
    atomic_write(log_path, lambda f: f.write("".join(line + "\n" for line in keep)))


def _params_checksum(model: DenseCL) -> float:
    """Sum over parameters of both encoders and the queues (float64): equal on every rank when in sync."""
    tensors = list(model.encoder_q.parameters()) + list(model.encoder_k.parameters()) + [model.queue, model.queue2]
    return float(sum(t.detach().double().sum() for t in tensors))


def pretrain(
    source: str | os.PathLike,
    out: str | os.PathLike,
    cfg: PretrainConfig | None = None,
    *,
    image_root: str | os.PathLike | None = None,
    device: str = "auto",
    stop_after: int | None = None,
) -> dict:
    """Pre-train a ResNet with DenseCL on the images of ``source`` (a folder, or a COCO JSON + ``image_root``).

    Resumes from ``out/checkpoint.pth`` when it exists (same config required, except the fields in
    :data:`RESUMABLE_CHANGES`). ``stop_after``: stop once this many iterations (in total) are done, leaving a
    checkpoint to resume from (for time-limited jobs). Returns a summary dict (also ``out/summary.json``).
    """
    cfg = cfg or PretrainConfig()
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UnsoloError(f"--device {device} requested but CUDA is not available; use --device cpu")
    with du.distributed(device) as dev:
        return _pretrain(source, Path(out), cfg, image_root, dev, stop_after)


def _pretrain(source, out: Path, cfg: PretrainConfig, image_root, dev: torch.device, stop_after: int | None) -> dict:
    rank, world = du.get_rank(), du.get_world_size()
    main = rank == 0

    # ---------------------------------------------------------------- images and config
    records = list_images(source, image_root)
    _check_config(cfg, len(records), world)
    if cfg.queue_len > len(records) and main:
        log.warning(
            "the queues (%d keys) are longer than the data set (%d images): each image appears about %d times "
            "among its own negatives, which hurts more and more as the encoder settles; consider queue_len <= %d",
            cfg.queue_len, len(records), cfg.queue_len // len(records), len(records),
        )
    iters_per_epoch = len(records) // cfg.batch_size
    total_iters = cfg.epochs * iters_per_epoch
    if cfg.bn_mode == "sync" and world > 1 and dev.type != "cuda":
        raise UnsoloError("bn_mode=sync needs CUDA devices (SyncBatchNorm); use the default bn_mode=shuffle on CPU")
    use_amp = cfg.amp and dev.type == "cuda"
    precision = "float16" if use_amp else resolve_precision(cfg.precision, dev)
    if main:
        log.info(describe(precision, dev) if not use_amp else "precision: float16 autocast on CUDA (--amp)")
    ckpt_path, log_path = out / "checkpoint.pth", out / "log.jsonl"

    # ---------------------------------------------------------------- model and optimizer
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg)
    if cfg.bn_mode == "sync" and world > 1:
        model = convert_sync_bn(model)
    model.to(dev)
    params = [p for p in model.encoder_q.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=learning_rate(cfg, 0, iters_per_epoch), momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    # ---------------------------------------------------------------- resume
    start = 0
    if ckpt_path.is_file():
        ckpt = read_checkpoint(ckpt_path, "delete it to start over")
        saved = ckpt.get("config", {})
        now = to_dict(cfg)
        diff = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
        if diff:
            raise UnsoloError(
                f"{ckpt_path} was written with a different config ({', '.join(diff)}); "
                f"use another --out folder or delete the checkpoint to start over"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start = int(ckpt["iteration"])
        if main:
            log.info("resuming from %s at iteration %d / %d", ckpt_path, start, total_iters)
    end = total_iters if stop_after is None else min(total_iters, max(start, stop_after))
    if main:
        out.mkdir(parents=True, exist_ok=True)
        from unsolo.config import save_config

        save_config(cfg, out / "config.yaml")
        _truncate_log(log_path, start)
    du.barrier()

    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    def save_checkpoint(iteration: int) -> None:
        if main:
            _save_torch(
                ckpt_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "iteration": iteration,
                    "config": to_dict(cfg),
                },
            )

    # ---------------------------------------------------------------- data
    from torch.utils.data import DataLoader

    sampler = IterationBatchSampler(len(records), cfg.batch_size, cfg.seed, start, end, rank, world)
    loader = DataLoader(
        TwoViewDataset(records, cfg.size, cfg.augment, cfg.seed),
        batch_sampler=sampler,
        num_workers=cfg.workers,
        collate_fn=collate_views,
        pin_memory=dev.type == "cuda",
        prefetch_factor=4 if cfg.workers > 0 else None,
        persistent_workers=False,
    )
    gen = torch.Generator(device=dev)
    skipped: set[str] = set()

    # ---------------------------------------------------------------- loop
    model.train()
    bar = progress(total=end, initial=start, desc="pretrain", unit="it")
    long_job = LongJobWarning("pre-training", end, dev, "--preset small_r18 (the CPU preset), --epochs N or "
                              "--stop-after ITERS", log, start)
    log_file = open(log_path, "a") if main else None
    t_last, n_last = time.perf_counter(), 0
    iteration = start
    in_step = False  # True between the forward and the optimizer step: no consistent state to save then
    try:
        for batch in loader:
            for name in batch["skipped"]:
                if name not in skipped:
                    skipped.add(name)
                    log.warning("skipping unreadable image %s", name)
            if batch["views"] is None:
                raise UnsoloError(f"none of the {len(records)} images under {source} could be read")

            lr = learning_rate(cfg, iteration, iters_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            lam = dense_lambda(cfg, iteration)

            in_step = True
            views = batch["views"].to(dev, non_blocking=True)  # (N, 2, 3, S, S) uint8
            n = views.shape[0]
            gen.manual_seed(cfg.seed * 1_000_003 + iteration * 1009 + rank)
            images = normalize_image(photometric_augment(views.flatten(0, 1), cfg.augment, gen))  # (2N, 3, S, S)
            images = images.view(n, 2, *images.shape[1:])
            with torch.autocast(device_type=dev.type, dtype=torch.float16) if use_amp else autocast(dev, precision):
                losses = ddp_model(images[:, 0], images[:, 1], loss_lambda=lam, generator=gen)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise UnsoloError(
                    f"non-finite loss at iteration {iteration} (lr {lr:.4g}); lower --set base_lr or disable --amp"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            iteration += 1
            in_step = False
            n_last += n * world
            bar.update(1)
            if main:
                long_job.step(iteration)

            if main and (iteration % cfg.log_period == 0 or iteration == end):
                now = time.perf_counter()
                row = {
                    "iter": iteration,
                    "epoch": iteration / iters_per_epoch,
                    "lr": lr,
                    "lambda": lam,
                    "loss": float(loss.detach()),
                    "loss_global": float(losses["loss_global"]),
                    "loss_dense": float(losses["loss_dense"]),
                    "images_per_s": n_last / max(now - t_last, 1e-9),
                    "precision": precision,
                }
                t_last, n_last = now, 0
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()
                bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.3g}")
            if iteration % cfg.checkpoint_period == 0 and iteration < end:
                save_checkpoint(iteration)
    except KeyboardInterrupt:
        if not in_step and iteration > start:
            save_checkpoint(iteration)  # a consistent state: the next run resumes exactly here
        raise
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    if iteration > start:
        save_checkpoint(iteration)

    # ---------------------------------------------------------------- export
    checksums = du.all_gather_object(_params_checksum(model))
    summary = {
        "iterations": iteration,
        "total_iterations": total_iters,
        "finished": iteration >= total_iters,
        "images": len(records),
        "skipped_images": sorted(skipped),
        "world_size": world,
        "precision": precision,
        "rank_checksums": checksums,
        "backbone": str(out / "backbone.pth"),
        "checkpoint": str(ckpt_path),
    }
    if world > 1 and len(set(checksums)) > 1:
        raise UnsoloError(f"ranks diverged (parameter checksums {checksums}); please report this as a bug")
    if main:
        _save_torch(out / "backbone.pth", export_checkpoint(model.backbone_state_dict()))
        if log_path.is_file():
            _plot_losses(log_path, out / "loss.png")
        write_json(out / "summary.json", summary, indent=2)
        if skipped:
            log.warning("skipped %d unreadable image(s) in total", len(skipped))
    du.barrier()
    return summary
