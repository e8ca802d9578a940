"""Load backbone weights from foreign checkpoints (local paths only), with a report of what matched.

Accepted layouts (all detected automatically):

* the public DenseCL / OpenSelfSup release: ``{"state_dict": {torchvision names}, "author": "DenseCL"}``
  (also what ``unsolo pretrain`` exports);
* DenseCL / MoCo *training* checkpoints: ``{"state_dict": {"encoder_q.0.conv1.weight", ...}}`` (the query
  encoder is used; the key encoder ``encoder_k.``, necks, heads and queues are ignored), with or without a
  DDP ``module.`` prefix; ``backbone.`` prefixes (OpenSelfSup, detectron2 models) are stripped too;
* plain torchvision state dicts (``resnet101-*.pth``: ``fc.*`` is ignored);
* detectron2 names (``stem.conv1``, ``res2.0.conv1.norm``, ``shortcut``), as written by
  ``convert-pretrain-to-detectron2.py``: ``.pkl`` files (unpickled with numpy arrays only) or ``{"model": ...}``.

Every file is read with ``torch.load(..., weights_only=True)`` (or a numpy-only unpickler for ``.pkl``): a
checkpoint can never run code. A checkpoint from which no backbone weight matched, or whose shapes do not fit the
chosen depth, is refused with a :class:`~unsolo.errors.UnsoloError` naming an offending key and, when the
checkpoint's own depth can be read from its keys, the ``--arch`` to use.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unsolo.errors import UnsoloError

log = logging.getLogger("unsolo.checkpoints")

#: Prefixes stripped from key names, tried longest first (DDP, DenseCL/MoCo query encoder, OpenSelfSup, d2).
STRIP_PREFIXES = (
    "module.encoder_q.0.",
    "module.encoder_q.",
    "module.backbone.",
    "module.",
    "encoder_q.0.",
    "encoder_q.",
    "backbone.bottom_up.",
    "backbone.body.",
    "backbone.",
    "model.",
)

#: Keys of known non-backbone parts, ignored without a warning (key encoder, necks, heads, queues, classifier).
IGNORED_KEY = re.compile(
    r"(^|\.)(encoder_k|neck|necks|head|heads|fc|projector|predictor)(\.|$)|(^|\.)queue\w*$|queue_ptr|"
    r"^encoder_q\.1\.|^module\.encoder_q\.1\.|num_batches_tracked$"
)

#: (has bottleneck blocks, number of blocks in layer3) -> architecture.
_DEPTH_SIGNATURE = {(False, 2): "resnet18", (False, 6): "resnet34", (True, 6): "resnet50", (True, 23): "resnet101"}


@dataclass
class LoadReport:
    """What :func:`load_backbone_weights` did: counts and the names of missing / unexpected / ignored keys."""

    path: str
    layout: str  # "densecl-release", "densecl-training", "torchvision", "detectron2"
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: int = 0

    def summary(self) -> str:
        s = f"loaded {self.loaded} backbone tensors from {self.path} ({self.layout} layout)"
        if self.ignored:
            s += f"; ignored {self.ignored} non-backbone keys"
        if self.missing:
            s += f"; {len(self.missing)} missing (e.g. {self.missing[0]})"
        if self.unexpected:
            s += f"; {len(self.unexpected)} unexpected (e.g. {self.unexpected[0]})"
        return s


# ------------------------------------------------------------------------------------------ reading
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for detectron2 ``.pkl`` weights: only numpy arrays and builtin containers may be built."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw object of a checkpoint file (``.pth``/``.pt``/``.pkl``) as a dict; clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UnsoloError(f"weights file not found: {path}")
    if path.suffix.lower() == ".pkl":
        try:
            with open(path, "rb") as f:
                obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
            raise UnsoloError(f"cannot read {path} as a detectron2 .pkl weights file ({e})") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # zip errors, unpickling refusals, truncated files...
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UnsoloError(f"cannot read {path} as a PyTorch checkpoint ({msg[:200]})") from None
    if not isinstance(obj, dict):
        raise UnsoloError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    return obj


def extract_state_dict(obj: dict) -> tuple[dict[str, torch.Tensor], str]:
    """Find the tensor mapping inside a checkpoint; return it with a guess of its layout."""
    for key in ("state_dict", "model", "model_state", "backbone"):
        inner = obj.get(key)
        if isinstance(inner, dict) and inner:
            sd = inner
            break
    else:
        sd = obj
    tensors: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if isinstance(v, torch.Tensor):
            tensors[str(k)] = v
    names = list(tensors)
    if any(n.startswith(("stem.", "res2.", "backbone.res2.", "backbone.bottom_up.res2.")) for n in names):
        layout = "detectron2"
    elif any("encoder_q." in n for n in names):
        layout = "densecl-training"
    elif obj.get("author") in ("DenseCL", "OpenSelfSup") or "state_dict" in obj:
        layout = "densecl-release"
    else:
        layout = "torchvision"
    return tensors, layout


# ----------------------------------------------------------------------------------------- renaming
def _strip_prefix(name: str) -> str:
    for p in STRIP_PREFIXES:
        if name.startswith(p):
            return name[len(p) :]
    return name


def d2_to_torchvision(name: str) -> str:
    """``stem.conv1.norm.weight`` -> ``bn1.weight``; ``res3.0.shortcut.norm.bias`` -> ``layer2.0.downsample.1.bias``."""
    if name.startswith("stem."):
        rest = name[len("stem.") :]
        return "bn1." + rest[len("conv1.norm.") :] if rest.startswith("conv1.norm.") else rest
    m = re.match(r"res([2-5])\.(\d+)\.(.*)$", name)
    if not m:
        return name
    stage, block, rest = int(m.group(1)), m.group(2), m.group(3)
    rest = re.sub(r"^conv(\d)\.norm\.", r"bn\1.", rest)
    rest = re.sub(r"^shortcut\.norm\.", "downsample.1.", rest)
    rest = re.sub(r"^shortcut\.", "downsample.0.", rest)
    return f"layer{stage - 1}.{block}.{rest}"


def normalize_key(name: str) -> str:
    """A checkpoint key -> the torchvision ResNet name it stands for (prefixes stripped, d2 names mapped)."""
    prev = None
    while prev != name:  # strip nested prefixes such as "module.backbone."
        prev, name = name, _strip_prefix(name)
    return d2_to_torchvision(name)


def detect_arch(names: list[str]) -> str | None:
    """The torchvision ResNet depth a set of (normalised) key names belongs to, if recognisable."""
    bottleneck = any(re.match(r"layer1\.0\.conv3\.weight$", n) for n in names)
    blocks = {int(m.group(1)) for n in names if (m := re.match(r"layer3\.(\d+)\.", n))}
    if not blocks:
        return None
    return _DEPTH_SIGNATURE.get((bottleneck, max(blocks) + 1))


# ------------------------------------------------------------------------------------------ loading
def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike, arch: str | None = None) -> LoadReport:
    """Load a checkpoint's ResNet weights into ``backbone`` (torchvision parameter names), in place.

    Args:
        backbone: a :class:`~unsolo.modeling.backbone.ResNetBackbone` (or any module with torchvision names).
        path: local ``.pth``/``.pt``/``.pkl`` file in one of the layouts listed in the module docstring.
        arch: the chosen architecture name, only used in error messages (default: ``backbone.arch``).

    Returns:
        a :class:`LoadReport`; missing and unexpected keys are also logged as a warning.

    Raises:
        UnsoloError: unreadable file, no backbone weight matched, or a shape that does not fit ``backbone``
        (the message names one offending key and suggests ``--arch`` when the checkpoint's depth is known).
    """
    arch = arch or getattr(backbone, "arch", "the chosen backbone")
    raw, layout = extract_state_dict(read_checkpoint(path))
    target = backbone.state_dict()
    report = LoadReport(path=str(path), layout=layout)
    mapped: dict[str, torch.Tensor] = {}
    for k, v in raw.items():
        if IGNORED_KEY.search(k):
            report.ignored += 1
            continue
        name = normalize_key(k)
        if IGNORED_KEY.search(name):
            report.ignored += 1
        elif name in target:
            mapped[name] = v
        else:
            report.unexpected.append(k)
    if not mapped:
        example = next(iter(raw), "<none>")
        raise UnsoloError(
            f"no backbone weight in {path} matched a {arch} (e.g. key {example!r}); expected a DenseCL, MoCo, "
            "torchvision or detectron2 ResNet checkpoint"
        )
    found = detect_arch(list(mapped) + [normalize_key(k) for k in report.unexpected])
    hint = f"; the checkpoint looks like a {found}: use --arch {found}" if found and found != arch else ""
    for name, v in mapped.items():
        if tuple(v.shape) != tuple(target[name].shape):
            raise UnsoloError(
                f"{path} does not fit {arch}: {name} has shape {tuple(v.shape)}, expected {tuple(target[name].shape)}{hint}"
            )
    if found and found != arch:
        raise UnsoloError(f"{path} holds a {found} backbone, not a {arch}{hint}")
    with torch.no_grad():
        for name, v in mapped.items():
            target[name].copy_(v.to(dtype=target[name].dtype))
    report.loaded = len(mapped)
    report.missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    if report.missing or report.unexpected:
        log.warning(report.summary())
    else:
        log.info(report.summary())
    return report
