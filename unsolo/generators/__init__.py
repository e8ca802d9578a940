"""Pseudo-mask generators of stage 2, side by side behind one registry and one base type.

A generator (:class:`~unsolo.generators.base.MaskGenerator`) holds its settings (a config dataclass) and is called
once per image; it returns a :class:`~unsolo.generators.base.FreeMaskResult` (boolean masks at the original image
size, scores, embeddings -- possibly 0-d -- and XYXY boxes). The stage (:mod:`unsolo.pipeline.freemask`: chunks,
resume, ``torchrun``, merge, COCO output) receives the generator object and is the same for all. Adding one = a
config class and a :class:`MaskGenerator` subclass in a module here, a row of :data:`GENERATORS`, and its presets in
``unsolo/configs/<name>/``.

* ``freemask`` (default, official): :class:`~unsolo.generators.freemask.FreeMask` on the backbone's feature map;
* ``maskcut`` (CutLER): :class:`~unsolo.generators.maskcut.MaskCut`, normalized cuts on the same feature map;
* ``felzenszwalb`` (classical, no learning): :class:`~unsolo.generators.felzenszwalb.Felzenszwalb` on the image.
"""

from __future__ import annotations

from typing import Iterable

from unsolo.config import resolve
from unsolo.errors import UnsoloError
from unsolo.generators.base import FreeMaskResult, MaskGenerator
from unsolo.generators.felzenszwalb import Felzenszwalb, FelzenszwalbConfig
from unsolo.generators.freemask import FreeMask, FreeMaskConfig
from unsolo.generators.maskcut import MaskCut, MaskCutConfig

__all__ = ["GENERATORS", "FreeMaskResult", "MaskGenerator", "FreeMask", "FreeMaskConfig", "MaskCut", "MaskCutConfig",
           "Felzenszwalb", "FelzenszwalbConfig", "get_generator", "build_generator"]

#: name -> generator class; the name is also the folder of its presets (unsolo/configs/<name>/)
GENERATORS: dict[str, type[MaskGenerator]] = {g.name: g for g in (FreeMask, MaskCut, Felzenszwalb)}


def get_generator(name: str) -> type[MaskGenerator]:
    """The generator class registered as ``name``; a one-line error naming the choices otherwise."""
    try:
        return GENERATORS[name]
    except KeyError:
        raise UnsoloError(f"unknown pseudo-mask generator {name!r}; choose one of {', '.join(GENERATORS)}") from None


def build_generator(name: str, preset: str | None = None, overrides: Iterable[str] = (),
                    extra: dict | None = None) -> MaskGenerator:
    """The generator ``name`` with its config resolved: defaults <- preset (``unsolo/configs/<name>/``) <- ``extra``
    <- ``key=value`` overrides. Unknown names and keys fail here, with one line."""
    cls = get_generator(name)
    return cls(resolve(cls.config_class, cls.name, preset, overrides, extra))
