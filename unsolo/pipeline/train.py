"""Self-supervised SOLO training (``unsolo train``): one explicit loop, top to bottom.

Phases: config + output folder -> data -> model (+ backbone weights) -> optimizer and schedule -> resume ->
loop (batch -> strong view + copy-paste on the device -> losses -> step -> log -> checkpoint) -> final model.

Official recipe (``freesolo_30k.yaml`` + detectron2 defaults, spec section 7): SGD momentum 0.9, base LR 0.001
for 16 images per iteration (scaled linearly with the batch), linear warm-up over 1000 iterations from 1 %,
constant afterwards (``WarmupMultiStepLR`` without steps), weight decay 1e-4 and none on normalisation layers,
30k iterations, a checkpoint every 5000. Each iteration feeds every image twice: its strong view (which received
objects by copy-paste) and its weak view.

Distributed: launch with ``torchrun`` (DDP, ``broadcast_buffers=False`` as official); without it, one process.
Resuming is exact: the data stream, augmentations and copy-paste draws are functions of (seed, rank, iteration),
and the checkpoint holds model, optimizer, scaler, iteration and RNG states.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unsolo.compat.checkpoints import load_backbone_weights
from unsolo.compat.solo_checkpoint import save_checkpoint
from unsolo.config import save_config, to_dict
from unsolo.data.copy_paste import copy_paste_batch
from unsolo.data.images import collate_list
from unsolo.data.samplers import GroupedBatchSampler, aspect_groups, mix_seed
from unsolo.data.train_dataset import PseudoLabelDataset, load_training_set
from unsolo.data.transforms import strong_view
from unsolo.engine import budget as time_budget
from unsolo.engine.logs import plot_loss_curves, reduce_losses, replica_checksums, tensorboard_writer
from unsolo.engine.precision import autocast, check_precision, describe, resolve_precision
from unsolo.engine.schedule import build_optimizer, fit_schedule, learning_rate, lr_schedule, param_groups  # noqa: F401
from unsolo.engine.state import (checkpoint_name, find_resume_checkpoint, read_checkpoint, rng_states,  # noqa: F401
                                 set_rng_states, truncate_metrics)
from unsolo.errors import UnsoloError
from unsolo.modeling.solov2 import build_model
from unsolo.pipeline.train_config import DataConfig, SolverConfig, TrainConfig, resolve_train_config  # noqa: F401
from unsolo.utils import dist as dist_utils
from unsolo.utils.collapse import CollapseMonitor
from unsolo.utils.io import atomic_write
from unsolo.utils.progress import LongJobWarning, progress

log = logging.getLogger("unsolo.train")

# ============================================================================================== train
def train(
    cfg: TrainConfig,
    images: str | Path,
    labels: str | Path,
    out: str | Path,
    *,
    image_root: str | Path | None = None,
    device: str = "auto",
    resume: bool = True,
) -> dict:
    """Train self-supervised SOLO on pseudo-labels; returns a summary (final checkpoint, iterations, images/s).

    Args:
        cfg: the resolved :class:`TrainConfig`.
        images: image folder (or COCO JSON listing images); ``labels``: pseudo-label COCO JSON (RLE masks).
        out: run folder: ``config.yaml``, ``metrics.jsonl``, ``model_NNNNNNN.pth``, ``last_checkpoint``,
            ``model_final.pth``, ``loss_curves.png``.
        device: ``auto``, ``cpu``, ``cuda`` (with torchrun each rank takes its local GPU).
        resume: continue from ``out/last_checkpoint`` when it exists.
    """
    with dist_utils.distributed(device) as dev:
        return _train(cfg, Path(images), Path(labels), Path(out), image_root, dev, resume)


def _train(cfg: TrainConfig, images: Path, labels: Path, out: Path, image_root, dev: torch.device, resume: bool) -> dict:
    sv = cfg.solver
    rank, world = dist_utils.get_rank(), dist_utils.get_world_size()
    main = rank == 0
    if sv.ims_per_batch < 1:
        raise UnsoloError(f"batch size must be >= 1 (got {sv.ims_per_batch})")
    if sv.ims_per_batch % world:
        raise UnsoloError(f"batch size {sv.ims_per_batch} is not divisible by the {world} processes")
    per_gpu = sv.ims_per_batch // world
    use_amp = cfg.amp and dev.type == "cuda"
    if cfg.amp and not use_amp:
        log.warning("--amp needs a CUDA device; training in float32 on %s", dev)
    if sv.max_iter < 1:
        raise UnsoloError("solver.max_iter must be >= 1")
    check_precision(sv.precision)
    budget_s = time_budget.check_budget(sv.max_time)
    precision = cfg.amp_dtype if use_amp else resolve_precision(sv.precision, dev)
    if cfg.data.max_label_span is not None and not 0 < cfg.data.max_label_span <= 1:
        raise UnsoloError(f"data.max_label_span must be in (0, 1] or null, got {cfg.data.max_label_span}")
    torch.manual_seed(cfg.seed)  # same initialisation on every rank
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)

    # ------------------------------------------------------------------------------------- output folder
    out.mkdir(parents=True, exist_ok=True)
    metrics_path, curves_path = out / "metrics.jsonl", out / "loss_curves.png"
    if not use_amp:  # config.yaml and the checkpoints record what the network ran in (the caller's cfg is kept)
        cfg = copy.deepcopy(cfg)
        cfg.solver.precision = precision
        sv = cfg.solver
    if main:
        save_config(cfg, out / "config.yaml")
        log.info(describe(precision, dev) if not use_amp else f"precision: {precision} autocast on CUDA (--amp)")

    # ------------------------------------------------------------------------------------------- data
    items, category_map = load_training_set(images, labels, image_root, cfg.data.max_label_span)
    if cfg.data.class_agnostic:
        category_map = {cid: 0 for cid in category_map}
    elif len(category_map) > cfg.model.num_classes:
        raise UnsoloError(f"{labels} has {len(category_map)} categories but the model has {cfg.model.num_classes} "
                            "class channel(s); keep data.class_agnostic=true or raise model.num_classes")
    else:  # class-aware: the checkpoint records each channel's category id, so predictions map back to them
        cfg.model.category_ids = tuple(sorted(category_map, key=category_map.get))
        if main:
            save_config(cfg, out / "config.yaml")
    dataset = PseudoLabelDataset(
        items,
        category_map,
        min_sizes=cfg.data.min_sizes,
        max_size=cfg.data.max_size,
        flip_prob=cfg.data.flip_prob,
        strong=cfg.data.strong,
        strong_in_workers=cfg.data.two_views and not cfg.data.strong_on_device,
        box_source=cfg.data.box_source,
        emb_dim=cfg.model.num_embs,
    )
    if main:
        log.info("training on %d images with pseudo-labels (%d instances), %d per process x %d process(es)",
                 len(items), sum(len(it.annotations) for it in items), per_gpu, world)
    del items  # the dataset holds them, serialised

    # ------------------------------------------------------------------------------------------ model
    model = build_model(cfg.model)
    if cfg.init_checkpoint:
        from unsolo.compat.official import transfer_weights

        transfer_weights(model, cfg.init_checkpoint, cfg.init_exclude)
        model.get_buffer("_iter").zero_()  # a new run: the pairwise warm-up starts again
    if cfg.backbone_weights:
        load_backbone_weights(model.backbone, cfg.backbone_weights)
    elif main and not cfg.init_checkpoint:
        log.warning("no --backbone-weights: the backbone starts from random weights (the method expects DenseCL weights)")
    model.to(dev).train()
    if cfg.channels_last if cfg.channels_last is not None else dev.type == "cpu":
        model.to(memory_format=torch.channels_last)  # 4-d weights NHWC; activations follow (before the optimizer)

    # ------------------------------------------------------------------------------ optimizer + schedule
    peak_lr = learning_rate(sv, sv.ims_per_batch)
    lrs = lr_schedule(sv, peak_lr)  # (max_iter,)
    optimizer = build_optimizer(sv, model, float(lrs[0]))
    amp_dtype = torch.float16 if cfg.amp_dtype == "float16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    def forward_precision():  # the network's forward; the model leaves autocast for targets and losses
        if use_amp:
            return torch.autocast(device_type=dev.type, dtype=amp_dtype)
        return autocast(dev, precision)

    # ----------------------------------------------------------------------------------------- resume
    start_iter = 0
    ckpt_path = find_resume_checkpoint(out) if resume else None
    if ckpt_path is not None:
        ckpt = read_checkpoint(ckpt_path, "start again with --no-resume")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("rng"):
            set_rng_states(ckpt["rng"])
        start_iter = int(ckpt["iteration"]) + 1
        if int(ckpt.get("world_size", world)) != world and main:
            log.warning("resuming with %d process(es) instead of %d: the data order differs from the original run",
                        world, ckpt.get("world_size"))
        if main:
            log.info("resumed from %s at iteration %d", ckpt_path, start_iter)
    elif not resume and main and (out / "last_checkpoint").exists():
        log.warning("--no-resume: starting again from iteration 0 in %s (old checkpoints are overwritten)", out)

    # -------------------------------------------------------------------------------------- time budget
    max_iter, calibration, monitor_start = sv.max_iter, None, sv.warmup_iters
    if budget_s is not None:
        setup = {"precision": precision, "ims_per_batch": sv.ims_per_batch, "world_size": world}
        fixed = time_budget.read_budget(out, budget_s, setup) if ckpt_path is not None else None
        if fixed is not None:  # a resumed budgeted run keeps the length and schedule it fixed
            max_iter = fixed
            fitted = fit_schedule(sv, fixed)
            lrs, monitor_start = lr_schedule(fitted, peak_lr), fitted.warmup_iters
        else:
            calibration = time_budget.Calibration(start_iter)
            max_iter = max(max_iter, calibration.last)  # provisional: the loop runs until the length is fixed
            if main:
                log.info("time budget %.0f s: timing iterations %d-%d, then fixing the length",
                         budget_s, calibration.first, calibration.last - 1)
    if start_iter >= max_iter:
        if main:
            print(f"nothing to do: {out} already holds {start_iter} iterations (raise --iters to train longer)")
        return {"final": str(out / "model_final.pth"), "start_iter": start_iter, "iterations": 0, "images_per_s": 0.0,
                "seconds": 0.0, "precision": precision, "max_iter": max_iter}
    if main:
        truncate_metrics(metrics_path, start_iter)

    # ------------------------------------------------------------------------------------ data loader
    sampler = GroupedBatchSampler(
        aspect_groups(dataset.sizes()), per_gpu, seed=cfg.seed, rank=rank, world_size=world, start_batch=start_iter
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.data.workers,
        collate_fn=collate_list,
        pin_memory=dev.type == "cuda",
        persistent_workers=cfg.data.workers > 0,
        prefetch_factor=2 if cfg.data.workers > 0 else None,
    )
    ddp_model = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[dev.index] if dev.type == "cuda" else None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.find_unused_parameters,
        )
    writer = tensorboard_writer(out) if (cfg.tensorboard and main) else None

    # ------------------------------------------------------------------------------------------- loop
    data_iter = iter(loader)
    bar = progress(total=max_iter, initial=start_iter, desc="train", unit="it")
    long_job = None if budget_s is not None else LongJobWarning(  # a budgeted run ends on time by itself
        "training", sv.max_iter, dev, "--iters N or --time-budget (or --preset small_r18, the CPU preset)", log, start_iter)
    t_start = time.perf_counter()
    window_time, window_data, window_n = 0.0, 0.0, 0
    window_fg = [0.0, 0.0, 0.0]  # collapse monitor: sums of predicted / target fg fractions, number of masks
    monitor = CollapseMonitor(start_iter=monitor_start)
    iter_end = time.perf_counter()
    it = start_iter
    while it < max_iter:
        # ---- batch: per-GPU list of decoded, augmented images (weak + strong views, instances on CPU)
        batch = next(data_iter)
        data_time = time.perf_counter() - iter_end
        lr = float(lrs[min(it, len(lrs) - 1)])  # while a time budget calibrates, the run may pass max_iter
        for group in optimizer.param_groups:
            group["lr"] = lr

        # ---- to the device; strong view (if not made in the workers); copy-paste between the batch's images
        weak_imgs = [b["weak"].to(dev, non_blocking=True) for b in batch]
        insts = [{k: v.to(dev, non_blocking=True) for k, v in b["instances"].items()} for b in batch]
        if not cfg.data.two_views:  # supervised: each image once, its weak view
            model_batch = [{"image": img, "instances": inst, "orig_size": b["orig_size"]}
                           for img, inst, b in zip(weak_imgs, insts, batch)]
        strong_imgs = []
        for b, w in (zip(batch, weak_imgs) if cfg.data.two_views else ()):
            if b["strong"] is not None:
                strong_imgs.append(b["strong"].to(dev, non_blocking=True))
            else:
                g = torch.Generator().manual_seed(mix_seed(b["seed"], 1))  # CPU draws, device ops
                strong_imgs.append(strong_view(w, cfg.data.strong, g))
        strong_insts = insts
        if cfg.data.copy_paste and cfg.data.two_views:
            g = torch.Generator().manual_seed(mix_seed(cfg.seed, rank, it, 2))  # CPU draws: no device sync
            strong_imgs, strong_insts = copy_paste_batch(strong_imgs, insts, weak_imgs, insts, g, cfg.data.max_occlusion)
        if cfg.data.two_views:
            model_batch = [
                {"image": img, "instances": inst, "orig_size": b["orig_size"]}
                for img, inst, b in zip(strong_imgs + weak_imgs, strong_insts + insts, batch + batch)
            ]  # the model sees 2 x per_gpu images: strong (+ pasted objects) first, then weak

        # ---- losses, step
        with forward_precision():
            losses = ddp_model(model_batch)
        total = sum(losses.values())
        fg = getattr(model, "mask_stats", None)
        reduced, fg = reduce_losses(losses, total, world, fg)  # mean over ranks, identical on every rank
        if not all(math.isfinite(v) for v in reduced.values()):
            bar.close()
            raise UnsoloError(
                f"non-finite loss at iteration {it}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in reduced.items())
                + " (lower the learning rate, check the pseudo-labels, or resume from the last checkpoint)"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        if sv.clip_grad_norm:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), sv.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()

        # ---- log
        now = time.perf_counter()
        window_time += now - iter_end
        window_data += data_time
        window_n += 1
        window_fg = [a + b for a, b in zip(window_fg, fg)]
        iter_end = now
        sec_per_iter = calibration.step(it + 1, now) if calibration is not None else None
        if calibration is not None and not calibration.done and dist_utils.broadcast_object(now - t_start >= budget_s):
            calibration.done = True  # the budget ran out while timing (rank 0's clock decides): stop here
            sec_per_iter = (now - t_start) / (it + 1 - start_iter)
        if sec_per_iter is not None:  # the time budget fixes the length; the schedule is re-fitted to it
            max_iter = time_budget.fitted_length(budget_s, now - t_start, it + 1 - start_iter, sec_per_iter) + start_iter
            max_iter = dist_utils.broadcast_object(max_iter)  # every rank runs rank 0's length
            fitted = fit_schedule(sv, max_iter)
            lrs = lr_schedule(fitted, peak_lr)
            monitor.start_iter = min(monitor.start_iter, fitted.warmup_iters)
            bar.total = max_iter
            if main and cfg.model.loss.mask_loss == "weak" and max_iter < cfg.model.loss.warmup_iters + cfg.model.loss.full_dice_iters:
                log.warning("the time budget holds %d iterations, fewer than the loss warm-ups (model.loss.warmup_iters "
                            "%d + full_dice_iters %d): the pairwise term never reaches full weight", max_iter,
                            cfg.model.loss.warmup_iters, cfg.model.loss.full_dice_iters)
            if main:
                time_budget.write_budget(out, budget_s, max_iter, sec_per_iter, setup)
                log.info("time budget %.0f s at %.3f s/iteration: %d iterations", budget_s, sec_per_iter, max_iter)
        bar.update(1)
        bar.set_postfix(loss=f"{reduced['loss']:.3f}", lr=f"{lr:.2e}", refresh=False)
        if main and long_job is not None:
            long_job.step(it + 1)
        last = it + 1 == max_iter
        if main and ((it + 1) % sv.log_period == 0 or last):
            rec = {"iteration": it, **{k: round(v, 6) for k, v in reduced.items()}, "lr": lr,
                   "time": window_time / window_n, "data_time": window_data / window_n, "precision": precision}
            if window_fg[2] > 0:  # mean foreground fraction (p > 0.5) of the positive cells' masks and targets
                rec["fg_pred"], rec["fg_target"] = (round(window_fg[0] / window_fg[2], 5),
                                                    round(window_fg[1] / window_fg[2], 5))
                warning = monitor.update(it, rec["fg_pred"], rec["fg_target"])
                if warning:
                    log.warning(warning)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if writer is not None:
                for k, v in rec.items():
                    if k != "iteration":
                        writer.add_scalar(f"train/{k}", v, it)
            window_time, window_data, window_n = 0.0, 0.0, 0
            window_fg = [0.0, 0.0, 0.0]

        # ---- checkpoint
        if (it + 1) % sv.checkpoint_period == 0:
            _save(out, checkpoint_name(it), model, optimizer, scaler, it, cfg, world, main)
            if main:
                plot_loss_curves(metrics_path, curves_path)
        it += 1

    # ------------------------------------------------------------------------------------------- end
    elapsed = time.perf_counter() - t_start
    bar.close()
    del data_iter, loader  # stop the workers now
    done = max_iter - start_iter
    final = out / "model_final.pth"
    _save(out, final.name, model, optimizer, scaler, max_iter - 1, cfg, world, main)  # full state: --iters can grow
    if main:
        plot_loss_curves(metrics_path, curves_path)
    if writer is not None:
        writer.close()
    ims_per_s = done * sv.ims_per_batch / elapsed if elapsed > 0 else 0.0
    if main:
        if done > 0:
            views = "strong + weak views" if cfg.data.two_views else "one view each"
            print(f"trained {done} iterations in {elapsed:.1f} s: {ims_per_s:.2f} images/s "
                  f"({(2 if cfg.data.two_views else 1) * ims_per_s:.2f} forward images/s, {views}); final model: {final}")
        else:
            print(f"nothing to do: {out} already holds {max_iter} iterations ({final})")
    dist_utils.barrier()
    return {"final": str(final), "start_iter": start_iter, "iterations": done, "images_per_s": ims_per_s, "seconds": elapsed,
            "precision": precision, "max_iter": max_iter}


def _save(out: Path, name: str, model, optimizer, scaler, iteration: int, cfg: TrainConfig, world: int, main: bool) -> None:
    sums = replica_checksums(model)  # every rank takes part
    if len(set(sums)) > 1 and main:
        log.warning("the %d processes hold different weights at iteration %d (parameter sums %s)", world, iteration, sums)
    if main:
        save_checkpoint(
            out / name,
            model,
            iteration=iteration,
            optimizer=optimizer.state_dict(),
            scaler=scaler.state_dict(),
            rng=rng_states(),
            train_config=to_dict(cfg),
            world_size=world,
            replica_checksums=sums,
        )
        atomic_write(out / "last_checkpoint", lambda f: f.write(name))
    dist_utils.barrier()
