"""Self-training pseudo-labels and the distributed predict path."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from unsolo.cli import main
from unsolo.data.synthetic import generate
from unsolo.compat.solo_checkpoint import save_checkpoint
from unsolo.modeling.solov2 import build_model, model_config
from unsolo.pipeline.pseudo_label import select_pseudo_labels

from records import assert_same_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def confident_model(tmp_path_factory):
    """A small random model whose category head fires everywhere, so that it produces detections."""
    torch.manual_seed(0)
    model = build_model(model_config("small_r18"))
    with torch.no_grad():
        model.ins_head.cate_pred.bias.fill_(3.0)
    path = tmp_path_factory.mktemp("model") / "model.pth"
    save_checkpoint(path, model, iteration=1)
    return path


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    generate(out, num_images=4, size=96, seed=3)
    return out


def test_select_pseudo_labels_width_rule():
    masks = np.zeros((3, 10, 20), bool)
    masks[0, 2:5, 0:19] = True  # 19 >= 0.95 * 20 -> dropped
    masks[1, 2:5, 3:8] = True
    out = {"masks": masks, "boxes_xywh": np.array([[0, 2, 19, 3], [3, 2, 5, 3], [0, 0, 0, 0]], float)}
    assert select_pseudo_labels(out, 20).tolist() == [1]  # the empty third one is dropped too
    assert select_pseudo_labels(out, 20, max_width_frac=1.0).tolist() == [0, 1]
    empty = {"masks": np.zeros((0, 10, 20), bool), "boxes_xywh": np.zeros((0, 4))}
    assert select_pseudo_labels(empty, 20).tolist() == []


def test_pseudo_label_cli_applies_official_settings(confident_model, scenes, tmp_path):
    out = tmp_path / "pl.json"
    rc = main(["pseudo-label", str(scenes / "annotations.json"), "--model", str(confident_model), "--out", str(out),
               "--short-side", "96", "--max-side", "160", "--workers", "0", "--device", "cpu"])
    assert rc == 0
    pl = json.loads(out.read_text())
    assert pl["annotations"], "the confident model should produce labels"
    widths = {im["id"]: im["width"] for im in pl["images"]}
    per_image = {}
    for a in pl["annotations"]:
        assert a["score"] >= 0.3 and len(a["emb"]) == 128 and a["category_id"] == 1
        assert a["bbox"][2] < 0.95 * widths[a["image_id"]]
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
    assert max(per_image.values()) <= 20
    assert set(per_image) == set(widths)  # images listed = images with labels
    assert [a["id"] for a in pl["annotations"]] == list(range(1, len(pl["annotations"]) + 1))
    # the file is a valid training input: the evaluator reads it as predictions
    assert main(["evaluate", "--gt", str(scenes / "annotations.json"), "--pred", str(out)]) == 0


def test_predict_two_processes_equal_one(confident_model, scenes, tmp_path):
    one = tmp_path / "one.json"
    common = ["predict", str(scenes / "images"), "--model", str(confident_model), "--short-side", "96",
              "--max-side", "160", "--workers", "0", "--device", "cpu",
              "--precision", "float32"]  # float32 noise is what records.py tolerates; bf16 rounds far more
    assert main(common + ["--out", str(one)]) == 0
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    two = tmp_path / "two.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "unsolo"] + common[:]
    cmd += ["--out", str(two)]
    subprocess.run(cmd, check=True, env=env, cwd=REPO, capture_output=True, timeout=300)
    # one process with 2 threads against two with 1 thread each: records equal up to float32 noise (tests/records.py)
    assert_same_records(one, two)
