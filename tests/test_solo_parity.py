"""Parity with the official FreeSOLO SOLOv2 (shared/parity, seed 0): predictions and training losses.

To stay within the test budget on 2 CPU cores, the test checks one image (000001.png) through the
``freesolo parity solo`` command; ``freesolo parity solo`` on the full expected files checks all four.
"""

import gzip
import json
import subprocess
import sys

import pytest

from freesolo.cli import main

IMAGE = "000001.png"


@pytest.fixture(scope="session")
def official_ckpt(shared_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("official") / "freesolo_seed0.pth"
    script = f"{shared_dir}/parity/make_official_checkpoint.py"
    res = subprocess.run([sys.executable, script, "0", str(out)], capture_output=True, text=True, check=True)
    assert "e2dbbfd7c4840f8ee4dae6ab63dc3bff3ed1e0226e999c1a93a6ef2dc9a0c879" in res.stdout
    return out


def test_parity_solo_one_image(shared_dir, official_ckpt, tmp_path, capsys):
    exp_dir = f"{shared_dir}/parity/expected"
    with gzip.open(f"{exp_dir}/solov2_predictions_seed0.json.gz", "rt") as f:
        preds = [r for r in json.load(f) if r["file_name"] == IMAGE]
    with open(f"{exp_dir}/solov2_losses_seed0.json") as f:
        losses = {IMAGE: json.load(f)[IMAGE]}
    (tmp_path / "p.json").write_text(json.dumps(preds))
    (tmp_path / "l.json").write_text(json.dumps(losses))
    rc = main(["parity", "solo", "--images", f"{shared_dir}/parity/images", "--weights", str(official_ckpt),
               "--expected-predictions", str(tmp_path / "p.json"), "--expected-losses", str(tmp_path / "l.json"),
               "--targets", f"{exp_dir}/freemask_seed0.json"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["ok"], summary
    p = summary["predictions"]
    assert p["unmatched"] == 0 and p["min_iou"] >= 0.99 and p["max_score_diff"] <= 1e-3
    assert p["max_emb_diff"] <= 1e-3  # with the official embedding layout reproduced
    assert p["images"][IMAGE]["expected"] == 100 and p["images"][IMAGE]["matched_within_tolerance"] == 100
    assert summary["losses"]["max_rel_diff"] <= 1e-3
    assert set(summary["losses"]["images"][IMAGE]) == {"loss_ins", "loss_ins_max", "loss_pairwise", "loss_emb", "loss_cate"}
