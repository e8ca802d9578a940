"""Checkpoints: this project's format and the official FreeSOLO (detectron2) layout, detected automatically.

* This project: ``{"model": state_dict, "config": ModelConfig as a dict, "iteration": int, ...}``
  (written by :func:`unsolo.modeling.solov2.save_checkpoint` and the trainer).
* Official FreeSOLO: ``{"model": state_dict, ...}`` (detectron2) with ``backbone.bottom_up.*`` (ResNet, detectron2
  names), ``backbone.fpn_lateral{k}`` / ``backbone.fpn_output{k}``, ``ins_head.*``, ``mask_head.*`` and ``_iter``.
  The heads use the same names here; the ResNet and FPN names are mapped (:func:`map_official_key`). The
  category head has two channels in the official config (``NUM_CLASSES: 2``), so the model is built with
  ``num_classes=2``; the backbone depth is read from the number of ``res4`` blocks.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Sequence

import torch

from unsolo.errors import UnsoloError
from unsolo.compat.checkpoints import d2_to_torchvision

log = logging.getLogger("unsolo.compat")

_RES_BLOCKS = {6: "resnet50", 23: "resnet101"}  # res4 blocks -> depth (bottleneck ResNets)


def is_official_state_dict(sd: dict) -> bool:
    return any(k.startswith("backbone.bottom_up.") for k in sd) and any(k.startswith("ins_head.") for k in sd)


def map_official_key(key: str) -> str | None:
    """Official (detectron2) parameter name -> this project's name; ``None`` for entries to drop."""
    if key.endswith("num_batches_tracked"):
        return None
    m = re.fullmatch(r"backbone\.fpn_(lateral|output)(\d)\.(weight|bias)", key)
    if m:
        return f"fpn.{m.group(1)}{m.group(2)}.{m.group(3)}"
    if key.startswith("backbone.bottom_up."):
        name = d2_to_torchvision(key[len("backbone.bottom_up."):])
        return "backbone." + name if re.match(r"(conv1|bn1|layer[1-4])\.", name) else None
    if key.startswith(("ins_head.", "mask_head.")) or key == "_iter":
        return key
    return None


def unmap_key(key: str) -> str:
    """This project's name -> the official name (the inverse of :func:`map_official_key`, for exports and tests)."""
    m = re.fullmatch(r"fpn\.(lateral|output)(\d)\.(weight|bias)", key)
    if m:
        return f"backbone.fpn_{m.group(1)}{m.group(2)}.{m.group(3)}"
    if key.startswith("backbone.bn1."):
        return "backbone.bottom_up.stem.conv1.norm." + key[len("backbone.bn1."):]
    if key.startswith("backbone.conv1."):
        return "backbone.bottom_up.stem.conv1." + key[len("backbone.conv1."):]
    m = re.fullmatch(r"backbone\.layer(\d)\.(\d+)\.(.+)", key)
    if m:
        rest = m.group(3)
        rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
        rest = re.sub(r"^downsample\.1\.", "shortcut.norm.", rest)
        rest = re.sub(r"^downsample\.0\.", "shortcut.", rest)
        return f"backbone.bottom_up.res{int(m.group(1)) + 1}.{m.group(2)}.{rest}"
    return key


def convert_official_state_dict(sd: dict) -> tuple[dict, dict]:
    """Official state dict -> (this project's state dict, config fields inferred from it)."""
    out = {}
    for k, v in sd.items():
        nk = map_official_key(k)
        if nk is None:
            continue
        out[nk] = torch.as_tensor(v)
    n_res4 = len({k.split(".")[3] for k in sd if k.startswith("backbone.bottom_up.res4.")})
    if n_res4 not in _RES_BLOCKS:
        raise UnsoloError(f"official checkpoint with {n_res4} res4 blocks: only ResNet-50/101 backbones are known")
    fields = {
        "arch": _RES_BLOCKS[n_res4],
        "num_classes": int(sd["ins_head.cate_pred.weight"].shape[0]),
        "fpn_channels": int(sd["backbone.fpn_output2.weight"].shape[0]),
        "ins_channels": int(sd["ins_head.cate_pred.weight"].shape[1]),
        "num_ins_convs": len([k for k in sd if re.fullmatch(r"ins_head\.cate_tower\.\d+\.weight", k)
                              and sd[k].ndim == 4]),
        "mask_channels": int(sd["mask_head.conv_pred.0.weight"].shape[1]),
        "num_kernels": int(sd["ins_head.kernel_pred.weight"].shape[0]),
        "num_embs": int(sd["ins_head.emb_pred.weight"].shape[0]),
    }
    return out, fields


def _read(path: str | os.PathLike) -> dict:
    if not os.path.isfile(path):
        raise UnsoloError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        try:  # detectron2 .pkl (pickled numpy arrays)
            import pickle

            with open(path, "rb") as f:
                obj = pickle.load(f, encoding="latin1")
        except Exception as e:
            raise UnsoloError(f"cannot read checkpoint {path}: {str(e).splitlines()[0] if str(e) else e}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise UnsoloError(f"{path} is not a FreeSOLO checkpoint (no 'model' state dict)")
    return obj


def read_model_state(path: str | os.PathLike) -> tuple[dict, dict, str]:
    """A checkpoint's model state in this project's names: ``(state_dict, config fields, source)``; ``source`` is
    ``"unsolo"`` (this project's layout) or ``"official FreeSOLO"`` (detectron2 layout, renamed)."""
    obj = _read(path)
    sd = obj["model"]
    if "config" in obj and isinstance(obj["config"], dict):
        return {k: torch.as_tensor(v) for k, v in sd.items()}, obj["config"], "unsolo"
    if is_official_state_dict(sd):
        state, cfg_dict = convert_official_state_dict(sd)
        return state, cfg_dict, "official FreeSOLO"
    raise UnsoloError(f"{path}: unrecognised checkpoint layout (neither this project's nor official FreeSOLO)")


def transfer_weights(model: torch.nn.Module, path: str | os.PathLike, exclude: Sequence[str] = ()) -> dict:
    """Initialise ``model`` from a full SOLO checkpoint (this project's or official FreeSOLO), in place.

    Every tensor of the model is copied from the checkpoint except those whose name starts with one of the
    ``exclude`` prefixes (e.g. ``ins_head.cate_pred.`` for a new number of classes, ``ins_head.emb_pred.``,
    ``_iter`` to restart the pairwise warm-up); those keep the model's own (fresh) initialisation. Strict
    otherwise: a model tensor missing from the checkpoint, a checkpoint tensor the model lacks, or a shape
    difference outside the excluded prefixes raises a one-line :class:`UnsoloError` (wrong arch or model preset).

    Returns a report: ``source``, ``loaded`` / ``excluded`` / ``skipped_unexpected`` counts and the excluded names.
    """
    exclude = tuple(exclude)
    state, _, source = read_model_state(path)

    def excluded(name: str) -> bool:
        return name.startswith(exclude) if exclude else False

    own = model.state_dict()
    missing = [k for k in own if k not in state and not excluded(k) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and not excluded(k)]
    shape = [k for k in own if k in state and not excluded(k) and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} model tensor(s) missing from it (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensor(s) the model lacks (e.g. {unexpected[0]})")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} shape mismatch(es) (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise UnsoloError(f"init checkpoint {path} ({source}) does not fit the model: " + "; ".join(parts)
                            + " (same arch / model preset? add the prefix to init_exclude to leave it out)")
    load = {k: state[k] for k in own if k in state and not excluded(k)}
    model.load_state_dict(load, strict=False)
    names = sorted(k for k in own if excluded(k))
    report = {"source": source, "loaded": len(load), "excluded": len(names), "excluded_names": names,
              "skipped_unexpected": len([k for k in state if k not in own])}
    log.info("initialised from %s checkpoint %s: %d tensors loaded, %d left at their initialisation (%s)", source,
             path, len(load), len(names), ", ".join(exclude) or "none excluded")
    return report
