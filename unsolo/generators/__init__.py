"""Pseudo-mask generators of stage 2, behind one interface.

A generator is a config dataclass plus one pure function per image that returns a
:class:`~unsolo.generators.freemask.FreeMaskResult` (boolean masks at the original image size, scores, embeddings -- possibly
0-d -- and XYXY boxes). The stage (:mod:`unsolo.pipeline.freemask`: chunks, resume, ``torchrun``, merge, COCO
output) is the same for all; the config's class says which generator runs. Adding one = a config class, a function
and a row of :data:`GENERATORS` (and presets in ``unsolo/configs/<name>/``).

* ``freemask`` (default, official): :func:`unsolo.generators.freemask.free_mask` on the backbone's feature map;
* ``maskcut`` (CutLER): :func:`unsolo.generators.maskcut.maskcut`, normalized cuts on the same feature map;
* ``felzenszwalb`` (classical, no learning): :func:`unsolo.generators.felzenszwalb.felzenszwalb_masks` on the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from unsolo.generators.felzenszwalb import FelzenszwalbConfig, felzenszwalb_masks
from unsolo.errors import UnsoloError
from unsolo.generators.freemask import FreeMaskConfig, free_mask
from unsolo.generators.maskcut import MaskCutConfig, maskcut


@dataclass(frozen=True)
class Generator:
    name: str
    label: str  # how reports name it
    config: type
    fn: Callable  # (features (C, h, w), orig size, cfg) if uses_backbone, else (image uint8 (h, w, 3), orig size, cfg)
    uses_backbone: bool
    summary: str


GENERATORS: dict[str, Generator] = {
    g.name: g
    for g in (
        Generator("freemask", "Free Mask", FreeMaskConfig, free_mask, True, "Free Mask (FreeSOLO): similarity maps + maskness"),
        Generator("maskcut", "MaskCut", MaskCutConfig, maskcut, True, "MaskCut (CutLER): normalized cuts on the patch graph"),
        Generator("felzenszwalb", "Felzenszwalb", FelzenszwalbConfig, felzenszwalb_masks, False,
                  "Felzenszwalb graph segments with a shape score (classical, no learning)"),
    )
}


def get_generator(name: str) -> Generator:
    try:
        return GENERATORS[name]
    except KeyError:
        raise UnsoloError(f"unknown pseudo-mask generator {name!r}; choose one of {', '.join(GENERATORS)}") from None


def generator_of(cfg) -> Generator:
    """The generator whose config class ``cfg`` is an instance of."""
    for g in GENERATORS.values():
        if isinstance(cfg, g.config):
            return g
    raise UnsoloError(f"{type(cfg).__name__} is not the config of a pseudo-mask generator")
