"""Progress bars (tqdm) with rate and ETA, shown on rank 0 only and quiet when not a terminal unless asked."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from freesolo.utils.dist import is_main_process


def progress(iterable=None, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0, **kw):
    """A tqdm bar (images/s or it/s, ETA) on rank 0; disabled on other ranks."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        disable=not is_main_process(),
        dynamic_ncols=True,
        file=sys.stderr,
        mininterval=0.5,
        **kw,
    )
