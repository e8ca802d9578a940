"""What every pseudo-mask generator shares: the output container and the base type.

A generator is a config dataclass (its settings, every threshold a documented field) and one call per image that
returns a :class:`FreeMaskResult`. A generator that ``uses_backbone`` is called on the backbone's feature map of
the resized image; one that does not, on the resized RGB image itself. The stage (:mod:`unsolo.pipeline.freemask`)
resizes the images (``short_side`` / ``max_size`` of the config), runs the backbone when needed and writes COCO.
"""

from __future__ import annotations

import abc

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch


@dataclass
class FreeMaskResult:
    """Masks of one image (or several images of the same size), in one container with ``filter``/``cat``.

    Attributes:
        masks: ``bool (N, H, W)`` at the original image size.
        scores: ``float32 (N,)`` decayed maskness.
        embeddings: ``float32 (N, E)`` semantic embeddings (E = 128 by default; not re-normalised).
        boxes: ``float32 (N, 4)`` projection boxes, **XYXY** pixels (the official box; see ``projection_boxes``).
    """

    masks: torch.Tensor
    scores: torch.Tensor
    embeddings: torch.Tensor
    boxes: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def filter(self, keep: torch.Tensor) -> "FreeMaskResult":
        """The subset selected by a boolean mask or an index tensor (order kept / as indexed)."""
        return FreeMaskResult(self.masks[keep], self.scores[keep], self.embeddings[keep], self.boxes[keep])

    @classmethod
    def cat(cls, results: Sequence["FreeMaskResult"]) -> "FreeMaskResult":
        """Concatenate results whose masks have the same size."""
        if not results:
            raise ValueError("FreeMaskResult.cat needs at least one result")
        return cls(
            torch.cat([r.masks for r in results]),
            torch.cat([r.scores for r in results]),
            torch.cat([r.embeddings for r in results]),
            torch.cat([r.boxes for r in results]),
        )

    @classmethod
    def empty(cls, image_size: tuple[int, int], emb_dim: int = 128, device: torch.device | str = "cpu") -> "FreeMaskResult":
        h, w = image_size
        return cls(
            torch.zeros((0, h, w), dtype=torch.bool, device=device),
            torch.zeros((0,), device=device),
            torch.zeros((0, emb_dim), device=device),
            torch.zeros((0, 4), device=device),
        )

    def to(self, device: torch.device | str) -> "FreeMaskResult":
        return FreeMaskResult(self.masks.to(device), self.scores.to(device), self.embeddings.to(device), self.boxes.to(device))


class MaskGenerator(abc.ABC):
    """Base type of the pseudo-mask generators: settings (``cfg``, an instance of ``config_class``) and a call.

    Subclasses set the class attributes and implement :meth:`__call__`; :data:`unsolo.generators.GENERATORS` lists
    them by ``name``. Build one with its config (``FreeMask(FreeMaskConfig(...))``) or, from a preset and
    ``--set`` overrides, with :func:`unsolo.generators.build_generator`.
    """

    name: ClassVar[str]  # registry key, also the folder of its presets: unsolo/configs/<name>/
    label: ClassVar[str]  # how reports name it
    config_class: ClassVar[type]  # the dataclass of its settings
    uses_backbone: ClassVar[bool]  # True: called on backbone features; False: on the RGB image
    summary: ClassVar[str]  # one line for --help and docs

    def __init__(self, cfg: Any = None):
        if cfg is None:
            cfg = self.config_class()
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, not {type(cfg).__name__}")
        self.cfg = cfg

    @abc.abstractmethod
    def __call__(self, inputs: torch.Tensor | np.ndarray, image_size: tuple[int, int]) -> FreeMaskResult:
        """Pseudo-masks of one image.

        Args:
            inputs: with ``uses_backbone``, the feature map ``float32 (C, h, w)`` of the resized image (level
                ``cfg.feature_level``); otherwise the resized image, RGB ``uint8 (h, w, 3)``.
            image_size: ``(H, W)`` of the ORIGINAL image: the masks are returned at that size.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg!r})"
