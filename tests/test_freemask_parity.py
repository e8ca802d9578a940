"""Free Mask against the official implementation's output on the shared parity images (ResNet-101, seed 0)."""

import importlib.util
import json
import os

import pytest
import torch

from unsolo.cli import main
from unsolo.data.coco import load_annotation_file
from unsolo.parity.freemask import compare


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


@pytest.fixture(scope="session")
def parity_output(shared_dir, parity_backbone, tmp_path_factory):
    """``unsolo freemask`` on the four parity images, official bbox (once per session)."""
    images = os.path.join(shared_dir, "parity", "images")
    out = tmp_path_factory.mktemp("parity_out") / "freemask.json"
    rc = main(["freemask", images, "--weights", str(parity_backbone), "--out", str(out), "--official-bbox",
               "--workers", "0", "--batch-size", "2"])  # fmt: skip
    assert rc == 0
    return out


def test_freemask_matches_official(shared_dir, parity_output):
    expected = load_annotation_file(os.path.join(shared_dir, "parity", "expected", "freemask_seed0.json"))
    ours = load_annotation_file(parity_output)
    s = compare(ours, expected, min_iou=0.99, max_score_diff=1e-3, min_cos=0.999, max_box_diff=2.0)
    assert s["matched"] == s["expected"] == 72 and s["missing"] == 0 and s["extra"] == 0, s
    assert s["min_iou"] >= 0.99 and s["max_score_diff"] <= 1e-3 and s["min_emb_cosine"] >= 0.999, s
    assert s["max_box_diff"] <= 2.0 and s["ok"], s
    assert sorted((i["id"], i["height"], i["width"]) for i in ours["images"]) == sorted(
        (i["id"], i["height"], i["width"]) for i in expected["images"]
    )


def test_parity_command(shared_dir, parity_backbone, parity_output, tmp_path, capsys, monkeypatch):
    """The CLI wiring of `unsolo parity freemask`; the computation itself is the session's run above
    (re-running ResNet-101 would only repeat it), so the stage call is replaced by a copy of that output."""
    import shutil

    import unsolo.pipeline.freemask as stage

    calls = []

    def reuse(run, generator):
        calls.append((run, generator))
        shutil.copy(parity_output, run.out)
        return {}

    monkeypatch.setattr(stage, "run_freemask", reuse)
    expected = os.path.join(shared_dir, "parity", "expected", "freemask_seed0.json")
    images = os.path.join(shared_dir, "parity", "images")
    rc = main(["parity", "freemask", "--images", images, "--weights", str(parity_backbone), "--expected", expected])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["ok"] and summary["matched"] == 72
    run, generator = calls[0]
    assert generator.name == "freemask" and generator.cfg.official_bbox and run.arch == "resnet101" and run.input == images
    # the comparison fails when a mask is missing on either side
    full = json.load(open(expected))
    fewer = dict(full, annotations=full["annotations"][1:])
    (tmp_path / "fewer.json").write_text(json.dumps(fewer))
    rc = main(["parity", "freemask", "--images", images, "--weights", str(parity_backbone), "--expected", str(tmp_path / "fewer.json")])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 1 and not summary["ok"] and summary["extra"] == 1
    assert compare(fewer, full)["missing"] == 1 and not compare(fewer, full)["ok"]
