"""SOLO models from checkpoint files: this project's layout or the official FreeSOLO one, detected automatically.

The model file (:mod:`unsolo.modeling.solov2`) sees no file format: :func:`save_checkpoint` writes this project's layout, :func:`load_model` reads a checkpoint
(:func:`unsolo.compat.official.read_model_state` renames an official one), rebuilds its :class:`ModelConfig` and
loads the weights into a new :class:`SOLOv2`.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import torch

from unsolo.compat.official import read_model_state
from unsolo.config import from_dict, merge_dicts, parse_overrides, to_dict
from unsolo.errors import UnsoloError
from unsolo.modeling.solov2 import ModelConfig, SOLOv2
from unsolo.utils.io import atomic_write

log = logging.getLogger("unsolo.model")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               overrides: Sequence[str] = ()) -> SOLOv2:
    """Load a checkpoint of this project or of the official FreeSOLO (detected automatically), in eval mode.

    ``overrides``: dotted config overrides (e.g. ``inference.score_thr=0.2``) applied on top of the stored config.
    The official layout is translated by :mod:`unsolo.compat.official` (names and config fields only).
    """
    state, cfg_dict, source = read_model_state(path)
    cfg = from_dict(ModelConfig, merge_dicts(cfg_dict, parse_overrides(overrides)))
    model = SOLOv2(cfg)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise UnsoloError(
            f"{path} ({source}) does not fit the model: {len(missing)} missing key(s) "
            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; {len(result.unexpected_keys)} unexpected "
            f"{', '.join(result.unexpected_keys[:3])}{' ...' if len(result.unexpected_keys) > 3 else ''}"
        )
    log.info("loaded %s checkpoint %s (%s, %d classes)", source, path, cfg.arch, cfg.num_classes)
    return model.to(device).eval()


def save_checkpoint(path: str | os.PathLike, model: SOLOv2, iteration: int = 0, **extra) -> None:
    """Write this project's checkpoint ``{"model": state_dict, "config": ModelConfig dict, "iteration": int, ...}``
    atomically (extra keys, e.g. ``optimizer``, are stored as given)."""
    obj = {"model": model.state_dict(), "config": to_dict(model.cfg), "iteration": int(iteration), **extra}
    atomic_write(path, lambda f: torch.save(obj, f), mode="wb")
