"""Free Mask against the official implementation's output on the shared parity images (ResNet-101, seed 0)."""

import importlib.util
import json
import os

import pytest
import torch

from freesolo.cli import main
from freesolo.data.coco import load_annotation_file
from freesolo.parity.freemask import compare


@pytest.fixture(scope="session")
def parity_backbone(shared_dir, tmp_path_factory):
    """Regenerate the backbone of ``make_backbone.py 0`` (once per session)."""
    script = os.path.join(shared_dir, "parity", "make_backbone.py")
    spec = importlib.util.spec_from_file_location("make_backbone", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sd = mod.make(0)
    path = tmp_path_factory.mktemp("parity") / "densecl_seed0.pth"
    torch.save({"state_dict": sd, "author": "DenseCL"}, path)
    return path


def test_freemask_matches_official(shared_dir, parity_backbone, tmp_path):
    images = os.path.join(shared_dir, "parity", "images")
    expected = load_annotation_file(os.path.join(shared_dir, "parity", "expected", "freemask_seed0.json"))
    out = tmp_path / "freemask.json"
    rc = main(["freemask", images, "--weights", str(parity_backbone), "--out", str(out), "--official-bbox",
               "--workers", "0", "--batch-size", "2"])  # fmt: skip
    assert rc == 0
    ours = load_annotation_file(out)
    s = compare(ours, expected, min_iou=0.99, max_score_diff=1e-3, min_cos=0.999, max_box_diff=2.0)
    assert s["matched"] == s["expected"] == 72 and s["missing"] == 0 and s["extra"] == 0, s
    assert s["min_iou"] >= 0.99 and s["max_score_diff"] <= 1e-3 and s["min_emb_cosine"] >= 0.999, s
    assert s["max_box_diff"] <= 2.0 and s["ok"], s
    assert sorted((i["id"], i["height"], i["width"]) for i in ours["images"]) == sorted(
        (i["id"], i["height"], i["width"]) for i in expected["images"]
    )


def test_parity_command_on_one_image(shared_dir, parity_backbone, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    src = os.path.join(shared_dir, "parity", "images", "000001.png")
    (images / "000001.png").write_bytes(open(src, "rb").read())
    full = json.load(open(os.path.join(shared_dir, "parity", "expected", "freemask_seed0.json")))
    one = dict(full, images=[i for i in full["images"] if i["id"] == 1], annotations=[a for a in full["annotations"] if a["image_id"] == 1])
    (tmp_path / "expected.json").write_text(json.dumps(one))
    rc = main(["parity", "freemask", "--images", str(images), "--weights", str(parity_backbone),
               "--expected", str(tmp_path / "expected.json")])  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["ok"] and summary["matched"] == len(one["annotations"]) == 15
    # the comparison fails when a mask is missing on either side
    fewer = dict(one, annotations=one["annotations"][1:])
    assert compare(one, one)["ok"]
    assert compare(one, fewer)["extra"] == 1 and not compare(one, fewer)["ok"]
    assert compare(fewer, one)["missing"] == 1 and not compare(fewer, one)["ok"]
