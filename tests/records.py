"""Compare two files of mask records as the method means them, not byte for byte.

float32 kernels round differently with the number of threads on some CPUs (AMX / AVX-512 machines: a score can
move in its 7th digit between one process with 2 threads and two processes with 1 thread each), so a test that
compares two runs of the same computation under different thread counts, batch sizes or process counts asks for:
the same images, the same number of records per image, scores within float32 noise, masks at IoU >= 0.99 and
embeddings that agree to float32 noise. Runs under identical settings still compare bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

SCORE_TOL = 1e-5
MIN_IOU = 0.99


def _records(data) -> tuple[list[dict], dict[int, tuple[int, int]]]:
    """(records, image sizes) of a COCO annotation file or of a predictions list."""
    if isinstance(data, dict):
        return data["annotations"], {i["id"]: (i["height"], i["width"]) for i in data["images"]}
    return data, {}


def _iou(a: dict, b: dict) -> float:
    return float(mask_utils.iou([a], [b], [0])[0][0])


def assert_same_records(path_a: str | Path, path_b: str | Path, *, score_tol: float = SCORE_TOL,
                        min_iou: float = MIN_IOU) -> None:
    """Assert that two annotation / prediction files hold the same records up to float32 noise.

    Records are matched within each image by score order; near-ties (scores within ``score_tol``) may swap, so
    each record is matched to the unused record of the other file with the highest mask IoU among those whose
    score is within the tolerance.
    """
    a, sizes_a = _records(json.loads(Path(path_a).read_text()))
    b, sizes_b = _records(json.loads(Path(path_b).read_text()))
    assert sizes_a == sizes_b, "the two files list different images"
    assert len(a) == len(b) > 0, f"{len(a)} records against {len(b)}"
    by_image: dict[int, tuple[list[dict], list[dict]]] = {}
    for r in a:
        by_image.setdefault(r["image_id"], ([], []))[0].append(r)
    for r in b:
        assert r["image_id"] in by_image, f"image {r['image_id']} has records in one file only"
        by_image[r["image_id"]][1].append(r)
    for image_id, (ra, rb) in by_image.items():
        assert len(ra) == len(rb), f"image {image_id}: {len(ra)} records against {len(rb)}"
        unused = list(rb)
        for x in sorted(ra, key=lambda r: -r["score"]):
            close = [y for y in unused if abs(y["score"] - x["score"]) <= score_tol + 1e-6 * abs(x["score"])]
            assert close, f"image {image_id}: no record with score {x['score']:.7f} (tolerance {score_tol})"
            y = max(close, key=lambda y: _iou(x["segmentation"], y["segmentation"]))
            iou = _iou(x["segmentation"], y["segmentation"])
            assert iou >= min_iou, f"image {image_id}: best mask IoU {iou:.4f} < {min_iou}"
            assert x.get("category_id") == y.get("category_id")
            if "emb" in x or "emb" in y:
                np.testing.assert_allclose(x["emb"], y["emb"], atol=1e-4)
            unused.remove(y)
