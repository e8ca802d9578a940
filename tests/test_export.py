"""``unsolo export``: ONNX export checked against the PyTorch model with onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from unsolo.cli import main
from unsolo.compat.solo_checkpoint import save_checkpoint
from unsolo.modeling.solov2 import build_model, model_config

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A small_r18 model whose category prior is 0.5, so that every cell is a candidate: a random model that
    still yields ~100 detections per image to compare."""
    cfg = model_config("small_r18")
    cfg.prior_prob = 0.5
    path = tmp_path_factory.mktemp("export") / "tiny.pth"
    save_checkpoint(path, build_model(cfg))
    return path


def _images(folder, n=2):
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(150, 210), (200, 160)][:n]):
        p = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_export_cli_round_trips_with_dynamic_image_sizes(tiny_ckpt, tmp_path, capsys):
    imgs = _images(tmp_path)
    out = tmp_path / "m.onnx"
    rc = main(["export", str(tiny_ckpt), "--out", str(out), "--check", *imgs, "--short-side", "224",
               "--max-side", "373"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["check"]["ok"], summary
    for v in summary["check"]["images"].values():  # two image sizes through one graph
        assert v["torch"] >= 20 and v["onnx"] == v["torch"] == v["matched_within_tolerance"]
    assert out.stat().st_size == summary["bytes"] and not list(tmp_path.glob(".m.onnx*"))


def test_onnx_predictor_refuses_a_foreign_file(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from unsolo.errors import UnsoloError
    from unsolo.pipeline.export import OnnxPredictor

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "other.onnx")
    with pytest.raises(UnsoloError, match="not written by unsolo export"):
        OnnxPredictor(tmp_path / "other.onnx")
    assert main(["export", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "x.onnx")]) == 2


@pytest.mark.slow
def test_export_round_trips_the_official_parity_checkpoint(shared_dir, tmp_path, capsys):
    """The official seed-0 ResNet-101 FreeSOLO model (shared/parity) through ONNX: all 100 detections of a parity
    image matched (mask IoU >= 0.99, score within 1e-3)."""
    import subprocess
    import sys

    ckpt = tmp_path / "official.pth"
    subprocess.run([sys.executable, f"{shared_dir}/parity/make_official_checkpoint.py", "0", str(ckpt)], check=True,
                   capture_output=True)
    rc = main(["export", str(ckpt), "--out", str(tmp_path / "official.onnx"), "--check",
               f"{shared_dir}/parity/images/000001.png"])
    summary = json.loads(capsys.readouterr().out)
    (img,) = summary["check"]["images"].values()
    assert rc == 0 and img["torch"] == img["onnx"] == img["matched_within_tolerance"] == 100, summary
    assert img["min_iou"] >= 0.99 and img["max_score_diff"] <= 1e-3
