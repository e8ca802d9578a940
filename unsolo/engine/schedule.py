"""Optimizer and learning-rate schedule of the SOLO training loops (train, finetune), built in one place.

The schedule is detectron2's ``WarmupMultiStepLR``: linear warm-up from ``warmup_factor`` over ``warmup_iters``,
then the LR multiplied by ``gamma`` at each of ``steps``. :func:`fit_schedule` re-fits it to a new length when a
time budget decides how many iterations a run gets.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from unsolo.errors import UnsoloError

NORM_LAYERS = (nn.GroupNorm, nn.BatchNorm2d, nn.SyncBatchNorm, nn.LayerNorm)


def learning_rate(cfg, world_batch: int) -> float:
    """Peak learning rate: ``cfg.lr`` if set, else ``base_lr * world_batch / reference_batch``."""
    if cfg.lr is not None:
        return cfg.lr
    return cfg.base_lr * world_batch / cfg.reference_batch


def lr_schedule(cfg, peak_lr: float) -> np.ndarray:
    """Learning rate of every iteration (detectron2 ``WarmupMultiStepLR``, linear warm-up): ``(max_iter,)``."""
    it = np.arange(cfg.max_iter, dtype=np.float64)
    alpha = np.minimum(it / max(cfg.warmup_iters, 1), 1.0)
    warm = np.where(it < cfg.warmup_iters, cfg.warmup_factor * (1 - alpha) + alpha, 1.0)
    decay = cfg.gamma ** np.searchsorted(np.asarray(sorted(cfg.steps), dtype=np.float64), it, side="right")
    return peak_lr * warm * decay


def fit_schedule(cfg, max_iter: int):
    """``cfg`` (a solver config) re-fitted to ``max_iter`` iterations: the LR steps keep their fraction of the run,
    the warm-up keeps its length unless that exceeds a quarter of the new run (then it is a quarter)."""
    scale = max_iter / cfg.max_iter
    steps = tuple(sorted({max(1, min(max_iter - 1, round(s * scale))) for s in cfg.steps})) if cfg.steps else ()
    warmup = min(cfg.warmup_iters, max(1, max_iter // 4))
    return dataclasses.replace(cfg, max_iter=max_iter, steps=steps, warmup_iters=warmup)


def param_groups(model: nn.Module, weight_decay: float, weight_decay_norm: float) -> list[dict]:
    """Two groups: parameters of normalisation layers (``weight_decay_norm``) and all the others."""
    norm, other, seen = [], [], set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (norm if isinstance(module, NORM_LAYERS) else other).append(p)
    groups = [{"params": other, "weight_decay": weight_decay}]
    if norm:
        groups.append({"params": norm, "weight_decay": weight_decay_norm})
    return groups


def build_optimizer(sv, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum (official) or AdamW (decoupled weight decay) over :func:`param_groups` (trainable
    parameters only: a frozen backbone stage has no optimizer state)."""
    groups = param_groups(model, sv.weight_decay, sv.weight_decay_norm)
    if sv.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=sv.momentum, nesterov=sv.nesterov)
    if sv.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(sv.betas))
    raise UnsoloError(f"unknown optimizer {sv.optimizer!r}; choose sgd or adamw")

