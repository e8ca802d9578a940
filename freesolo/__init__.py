"""freesolo: FreeSOLO (Wang et al., CVPR 2022) — learning to segment objects without annotations.

Pipeline: unlabeled images -> DenseCL pre-training -> Free Mask coarse masks -> self-supervised SOLOv2
-> self-training -> class-agnostic masks (COCO protocol).
"""

__version__ = "0.1.0"

from freesolo.errors import FreesoloError

__all__ = ["FreesoloError", "__version__"]
