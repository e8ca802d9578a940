"""unsolo: FreeSOLO (Wang et al., CVPR 2022) — learning to segment objects without annotations.

Pipeline: unlabeled images -> DenseCL pre-training -> Free Mask coarse masks -> self-supervised SOLOv2
-> self-training -> class-agnostic masks (COCO protocol).
"""

import os

# OpenMP threads (torch's CPU backend here is libgomp) spin-wait between parallel regions by default. On a small or
# shared CPU machine the spinning thread steals the core its partner needs: one SOLO training iteration of the
# small_r18 preset cost 12-16 CPU-s (and 2.5x the wall time) with spinning against 3.5-4 CPU-s with sleeping
# threads (docs/benchmarks.md, "SOLO training"). The variable is read when the OpenMP runtime starts (at the first
# ``import torch``), so it must be set here, before any module of the package imports torch; an explicit
# ``OMP_WAIT_POLICY=ACTIVE`` in the environment restores the spinning behaviour.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from unsolo.errors import UnsoloError

__all__ = ["UnsoloError", "__version__"]
