"""What a training loop writes besides checkpoints: metric reduction over processes, loss plots, tensorboard."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from unsolo.utils import dist as dist_utils
from unsolo.utils.io import atomic_write

log = logging.getLogger("unsolo.train")


def reduce_losses(losses: dict[str, torch.Tensor], total: torch.Tensor, world: int,
                   sums: torch.Tensor | None = None) -> tuple[dict[str, float], list[float]]:
    """Losses averaged over the ranks, and ``sums`` (the collapse monitor's statistics) summed over them, in one
    all-reduce and one device-to-host copy."""
    names = ["loss", *losses.keys()]
    sums = torch.zeros(3, device=total.device) if sums is None else sums.detach().float().to(total.device)
    vals = torch.cat([torch.stack([total.detach().float(), *[v.detach().float() for v in losses.values()]]), sums])
    if world > 1:
        dist.all_reduce(vals)
        vals[: len(names)] /= world
    vals = vals.cpu().tolist()
    return dict(zip(names, vals[: len(names)])), vals[len(names):]


def replica_checksums(model: nn.Module) -> list[float]:
    """Sum of every parameter, gathered from all ranks (DDP keeps them identical; a difference means divergence)."""
    with torch.no_grad():
        local = float(sum(p.detach().double().sum() for p in model.parameters()))
    return [float(x) for x in dist_utils.all_gather_object(local)]


def plot_loss_curves(metrics: Path, png: Path) -> None:
    """Draw every ``loss*`` term of ``metrics.jsonl`` against the iteration into ``png`` (atomic)."""
    from unsolo.utils.report import loss_curves, read_jsonl

    recs = read_jsonl(metrics)
    if recs:
        data = loss_curves({"self-supervised SOLO training": recs})
        atomic_write(png, lambda f: f.write(data), mode="wb")


def tensorboard_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("--tensorboard: the tensorboard package is not installed (pip install tensorboard); logging to metrics.jsonl only")
        return None
    return SummaryWriter(str(out / "tensorboard"))
