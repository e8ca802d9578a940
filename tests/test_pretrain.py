"""``unsolo pretrain`` end to end on tiny generated images: loss goes down, exact resume, export, errors, DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from unsolo.cli import main
from unsolo.errors import UnsoloError
from unsolo.modeling.backbone import ResNetBackbone
from unsolo.pipeline.pretrain import PretrainConfig, dense_lambda, learning_rate, pretrain

REPO = Path(__file__).resolve().parents[1]
TINY = [  # on the official recipe's base (without --preset a CPU run takes the CPU preset)
    "--preset", "densecl_r50", "--arch", "resnet18", "--size", "32", "--workers", "0",
    "--set", "hidden_dim=32", "--set", "log_period=1",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_images(folder: Path, n: int, seed: int = 0, size=(48, 64)) -> Path:
    """Coloured ellipses on noisy backgrounds, plus (optionally) broken files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.integers(0, 160, 3)
        arr = (rng.random((*size, 3)) * 60 + base).astype(np.uint8)
        im = Image.fromarray(arr)
        draw = ImageDraw.Draw(im)
        for _ in range(2):
            x, y = rng.integers(0, size[1] - 16), rng.integers(0, size[0] - 16)
            draw.ellipse([x, y, x + rng.integers(8, 24), y + rng.integers(8, 24)], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        im.save(folder / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("pretrain") / "images", 8)


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_schedule_and_lambda():
    cfg = PretrainConfig(epochs=4, batch_size=512, lambda_warmup_iters=3)
    assert learning_rate(cfg, 0, 10) == pytest.approx(0.06)  # 0.03 x 512 / 256
    # stepped per epoch (official): iteration 19 is still epoch 1 of 4, iteration 20 starts epoch 2
    assert learning_rate(cfg, 19, 10) == pytest.approx(0.03 * (1 + np.cos(np.pi / 4)))
    assert learning_rate(cfg, 20, 10) == pytest.approx(0.03)
    cfg.schedule_step = "iter"
    assert learning_rate(cfg, 20, 10) == pytest.approx(0.03) and learning_rate(cfg, 19, 10) > 0.03
    assert dense_lambda(cfg, 2) == 0.0 and dense_lambda(cfg, 3) == 0.5


def test_short_run_lowers_loss_and_exports(tmp_path, images):
    run = tmp_path / "run"
    args = [str(images), "--out", str(run), "--epochs", "30", "--batch-size", "8", *TINY]
    args += ["--set", "queue_len=16", "--set", "base_lr=1.0", "--set", "key_momentum=0.9", "--set", "schedule_step=iter"]
    assert main(["pretrain", *args]) == 0
    losses = [r["loss"] for r in read_log(run)]
    assert len(losses) == 30 and all(np.isfinite(losses))
    # the first two iterations see the random initial queues (easy negatives); compare once the queues hold real keys
    early, late = np.mean(losses[2:10]), np.mean(losses[-10:])
    assert late < early - 0.1, (early, late)
    for name in ("backbone.pth", "checkpoint.pth", "config.yaml", "loss.png", "summary.json"):
        assert (run / name).is_file(), name
    ckpt = torch.load(run / "backbone.pth", map_location="cpu", weights_only=True)
    assert ckpt["author"] == "DenseCL" and not any(k.startswith(("fc.", "neck", "encoder")) for k in ckpt["state_dict"])
    ResNetBackbone("resnet18", norm="frozen_bn").load_state_dict(ckpt["state_dict"])  # strict: Free Mask's backbone
    from unsolo.compat.checkpoints import load_backbone_weights  # the loader behind freemask --weights

    backbone = ResNetBackbone("resnet18", norm="frozen_bn")
    report = load_backbone_weights(backbone, run / "backbone.pth")
    assert report.layout == "densecl-release" and not report.missing and not report.unexpected
    assert torch.equal(backbone.layer3[0].conv1.weight, ckpt["state_dict"]["layer3.0.conv1.weight"])
    # the training checkpoint is accepted too (its query backbone)
    assert not load_backbone_weights(ResNetBackbone("resnet18"), run / "checkpoint.pth").missing


def test_resume_equals_uninterrupted(tmp_path, images):
    cfg = PretrainConfig(arch="resnet18", epochs=2, batch_size=4, size=32, hidden_dim=16, queue_len=8, workers=0, log_period=1,
                         lambda_warmup_iters=2)  # fmt: skip
    full = pretrain(images, tmp_path / "full", cfg, device="cpu")
    assert full["iterations"] == 4 and full["finished"]
    part = pretrain(images, tmp_path / "part", cfg, device="cpu", stop_after=3)
    assert part["iterations"] == 3 and not part["finished"]
    resumed = pretrain(images, tmp_path / "part", cfg, device="cpu")
    assert resumed["iterations"] == 4
    a = torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "checkpoint.pth", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log_full = read_log(tmp_path / "full")
    assert [r["loss"] for r in log_full] == [r["loss"] for r in read_log(tmp_path / "part")]
    assert [r["lambda"] for r in log_full] == [0.0, 0.0, 0.5, 0.5]  # dense loss off during the warm-up
    assert log_full[0]["loss"] == pytest.approx(log_full[0]["loss_global"])
    # a different config cannot silently continue the checkpoint
    with pytest.raises(UnsoloError, match="different config"):
        pretrain(images, tmp_path / "part", PretrainConfig(**{**cfg.__dict__, "base_lr": 0.1}), device="cpu")


def test_bad_inputs(tmp_path, images, capsys):
    out = str(tmp_path / "r")
    assert main(["pretrain", str(images), "--out", out, "--batch-size", "4", *TINY, "--set", "queue_len=10"]) == 2
    assert "multiple of the global batch" in capsys.readouterr().err
    assert main(["pretrain", str(images), "--out", out, "--batch-size", "16", *TINY, "--set", "queue_len=32"]) == 2
    assert "only 8 images" in capsys.readouterr().err
    assert main(["pretrain", str(tmp_path / "missing"), "--out", out]) == 2
    assert main(["pretrain", str(images), "--out", out, "--preset", "nope"]) == 2
    if not torch.cuda.is_available():
        assert main(["pretrain", str(images), "--out", out, "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_corrupt_images_skipped_with_workers(tmp_path, caplog):
    folder = make_images(tmp_path / "imgs", 4)
    (folder / "0001.png").write_bytes(b"not a png")
    (folder / "zz_truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 20)
    cfg = PretrainConfig(arch="resnet18", epochs=1, batch_size=4, size=32, hidden_dim=16, queue_len=8, workers=1)
    summary = pretrain(folder, tmp_path / "run", cfg, device="cpu")
    assert summary["iterations"] == 1
    assert set(summary["skipped_images"]) <= {"0001.png", "zz_truncated.jpg"} and summary["skipped_images"]
    assert "skipping unreadable image" in caplog.text


def test_two_process_torchrun_keeps_ranks_identical(tmp_path, images):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    run = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
        "-m", "unsolo", "pretrain", str(images), "--out", str(run), "--epochs", "1", "--batch-size", "8",
        "--device", "cpu", *TINY, "--set", "queue_len=16",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iterations"] == 1
    a, b = summary["rank_checksums"]
    assert a == b
    assert torch.load(run / "backbone.pth", weights_only=True)["author"] == "DenseCL"


def test_old_option_names_still_resolve(caplog):
    """``checkpoint_every`` / ``log_every`` (the names before the engine shared ``checkpoint_period`` / ``log_period``
    with ``unsolo train``) still work, with one deprecation line each."""
    from unsolo.config import resolve

    with caplog.at_level("WARNING"):
        cfg = resolve(PretrainConfig, "pretrain", "small_r18", ["checkpoint_every=7", "log_every=3"])
    assert (cfg.checkpoint_period, cfg.log_period) == (7, 3)
    assert [m for m in caplog.messages if "deprecated" in m] == [
        "pretrain: option 'checkpoint_every' is deprecated, use 'checkpoint_period'",
        "pretrain: option 'log_every' is deprecated, use 'log_period'"]
