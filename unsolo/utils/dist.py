"""Distributed helpers: ``torchrun`` (DDP) when launched by it, a single process otherwise.

Launch with ``torchrun --nproc_per_node N unsolo <command> ...``. The backend is NCCL on CUDA and gloo on
CPU. Outside torchrun every helper degrades to the single-process case (rank 0 of 1).
"""

from __future__ import annotations

import datetime
import os
from contextlib import contextmanager

import torch
import torch.distributed as dist


def is_launched() -> bool:
    """True when the process was started by torchrun (``WORLD_SIZE`` set)."""
    return "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed(device: str = "auto") -> torch.device:
    """Initialise the process group if launched by torchrun; return the device for this rank.

    ``device``: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:K"``.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if is_launched() and not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(local_rank)
            device = f"cuda:{local_rank}"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=60))
    elif is_launched() and device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return torch.device(device)


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj):
    """Gather a picklable object from every rank (a list of ``world_size`` items; ``[obj]`` alone)."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def distributed(device: str = "auto"):
    """``with distributed(device) as dev:`` — initialise (if torchrun), yield the device, and tear down what this
    call initialised (a process group that already existed, e.g. in ``unsolo run``, is left as it is)."""
    owned = not (dist.is_available() and dist.is_initialized())
    dev = init_distributed(device)
    try:
        yield dev
    finally:
        if owned:
            cleanup()
