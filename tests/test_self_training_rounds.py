"""CutLER's self-training rules as options of `unsolo run`: per-round score thresholds, old labels kept."""

from __future__ import annotations

import numpy as np

from unsolo.data.coco import instance_records, make_annotation_file
from unsolo.pipeline.pseudo_label import merge_with_previous
from unsolo.pipeline.run import resolve_run_config, round_pseudo_label_config


def _box(y0, x0, y1, x1, h=32, w=32):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def _coco(per_image: dict, ids: dict) -> dict:
    images = [{"id": ids[name], "file_name": name, "height": 32, "width": 32} for name in per_image]
    anns = []
    for name, masks in per_image.items():
        anns += instance_records(ids[name], np.stack(masks), scores=[0.9] * len(masks))
    for k, a in enumerate(anns, 1):
        a["id"] = k
    return make_annotation_file(images, anns)


def test_old_labels_stay_where_no_new_label_overlaps_them():
    old = _coco({"a.png": [_box(0, 0, 10, 10), _box(20, 20, 30, 30)], "b.png": [_box(5, 5, 15, 15)]},
                {"a.png": 1, "b.png": 2})
    # the new round renumbers its images (ids from another listing) and finds the first object again, slightly moved
    new = _coco({"a.png": [_box(0, 1, 10, 11), _box(0, 20, 8, 30)]}, {"a.png": 7})
    merged, kept = merge_with_previous(new, old)
    assert kept == 2  # a.png's second old object and b.png's only one
    by_name = {im["file_name"]: im["id"] for im in merged["images"]}
    per_img = {name: [a for a in merged["annotations"] if a["image_id"] == i] for name, i in by_name.items()}
    assert len(per_img["a.png"]) == 3 and len(per_img["b.png"]) == 1
    assert len({a["id"] for a in merged["annotations"]}) == 4 and len(set(by_name.values())) == 2


def test_round_score_thresholds_step_down_and_the_last_repeats():
    cfg = resolve_run_config("cpu", ["round_score_thrs=[0.7,0.65]"])
    assert [round_pseudo_label_config(cfg, r).score_thr for r in range(4)] == [0.7, 0.65, 0.65, 0.65]
    assert round_pseudo_label_config(cfg, 0).max_per_img == cfg.pseudo_label.max_per_img
    official = resolve_run_config("cpu")
    assert round_pseudo_label_config(official, 2) is official.pseudo_label and not official.merge_previous_labels
