"""``unsolo split-labels``: the two split modes, determinism, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unsolo.cli import main
from unsolo.data.coco import instance_records
from unsolo.data.splits import num_selected, select_images, split_labels
from unsolo.errors import UnsoloError


def full_coco(n_images: int = 40) -> dict:
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i:04d}.png", "height": 16, "width": 16})
        for k in range(1 + i % 3):
            m = np.zeros((16, 16), bool)
            y, x = rng.integers(0, 10, 2)
            m[y : y + 5, x : x + 4] = True
            rec = instance_records(i, m[None], category_ids=[1 + (i + k) % 3])[0]
            rec["id"] = len(anns) + 1
            anns.append(rec)
    return {"images": images, "annotations": anns,
            "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}


def test_images_mode_keeps_percent_of_images_with_all_their_annotations():
    coco = full_coco(40)
    out = split_labels(coco, 10, "images", seed=3)
    kept = {img["id"] for img in out["images"]}
    assert len(kept) == 4 == num_selected(40, 10)
    expected = [a["id"] for a in coco["annotations"] if a["image_id"] in kept]
    assert [a["id"] for a in out["annotations"]] == expected
    assert all(a["usemask"] == 1 for a in out["annotations"])
    assert out["categories"] == coco["categories"]
    assert out["info"]["unsolo_split"] == {"percent": 10.0, "mode": "images", "seed": 3, "selected_images": 4,
                                             "total_images": 40}
    assert "usemask" not in coco["annotations"][0]  # the input is not modified


def test_masks_mode_keeps_every_image_and_box_and_flags_masks():
    coco = full_coco(40)
    out = split_labels(coco, 25, "masks", seed=1)
    chosen = select_images([img["id"] for img in coco["images"]], 25, 1)
    assert len(chosen) == 10
    assert out["images"] == coco["images"]
    assert len(out["annotations"]) == len(coco["annotations"])
    for a, b in zip(coco["annotations"], out["annotations"]):
        assert b["usemask"] == int(a["image_id"] in chosen)
        assert b["bbox"] == a["bbox"] and b["category_id"] == a["category_id"] and b["segmentation"] == a["segmentation"]
    assert {a["usemask"] for a in out["annotations"]} == {0, 1}


def test_split_is_deterministic_for_a_seed_and_independent_of_image_order():
    coco = full_coco(40)
    a = split_labels(coco, 10, "images", seed=7)
    b = split_labels(coco, 10, "images", seed=7)
    assert a == b
    shuffled = dict(coco, images=list(reversed(coco["images"])))
    c = split_labels(shuffled, 10, "images", seed=7)
    assert {i["id"] for i in c["images"]} == {i["id"] for i in a["images"]}
    seeds = {frozenset(i["id"] for i in split_labels(coco, 10, "images", seed=s)["images"]) for s in range(5)}
    assert len(seeds) > 1  # the seed changes the draw


def test_percent_bounds_and_rounding():
    assert num_selected(40, 100) == 40
    assert num_selected(40, 0.1) == 1  # at least one image
    assert num_selected(40, 5) == 2
    for bad in (0, -5, 100.5, float("nan")):
        with pytest.raises(UnsoloError, match="percent"):
            split_labels(full_coco(5), bad, "images")
    with pytest.raises(UnsoloError, match="mode"):
        split_labels(full_coco(5), 10, "boxes")


def test_cli_writes_split_and_reports_bad_input(tmp_path, capsys):
    src = tmp_path / "full.json"
    src.write_text(json.dumps(full_coco(20)))
    out = tmp_path / "split.json"
    assert main(["split-labels", str(src), "--percent", "10", "--mode", "masks", "--seed", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert sum(a["usemask"] for a in data["annotations"]) == sum(
        1 for a in data["annotations"] if a["image_id"] in select_images(list(range(1, 21)), 10, 2))
    capsys.readouterr()
    # not COCO, out-of-range percent, missing file: one-line errors, exit 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([1, 2, 3]))
    for args, msg in (([str(bad), "--percent", "5"], "not a COCO annotation file"),
                      ([str(src), "--percent", "0"], "--percent must be in (0, 100]"),
                      ([str(tmp_path / "missing.json"), "--percent", "5"], "missing.json")):
        assert main(["split-labels", *args, "--out", str(tmp_path / "x.json")]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.json").exists()
