"""Defaults that fit the machine: the CPU preset on a CPU when no preset is given, and a warning up front when a
CPU job will take more than an hour."""

from __future__ import annotations

import logging

import pytest

from unsolo.cli import main
from unsolo.config import preset_for_device
from unsolo.utils import progress as progress_mod
from unsolo.utils.progress import LongJobWarning


def test_no_preset_on_a_cpu_takes_the_cpu_preset_and_says_so(capsys):
    assert preset_for_device("pretrain", None, "cpu") == "small_r18"
    err = capsys.readouterr().err
    assert "using 'small_r18', the CPU preset" in err and "--preset densecl_r50" in err
    assert preset_for_device("train", None, "cpu") == "small_r18"
    assert preset_for_device("train", None, "cuda:0") == "freesolo_r101"
    assert "official recipe (freesolo_r101" in capsys.readouterr().err
    assert preset_for_device("train", "freesolo_r101", "cpu") == "freesolo_r101"  # an explicit preset wins
    assert capsys.readouterr().err == ""


def test_pretrain_cli_without_preset_resolves_the_cpu_preset(tmp_path, capsys, monkeypatch):
    """`unsolo pretrain IMAGES --out RUN --arch resnet18` on a CPU: the compact DenseCL, not the ImageNet recipe
    (batch 256, queue 65536: the 9-12 h ETA of the issue); stopped before any image is read."""
    import unsolo.pipeline.pretrain as pre

    seen = {}

    def fake_pretrain(source, out, cfg, **kw):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(pre, "pretrain", fake_pretrain)
    with pytest.raises(SystemExit):
        main(["pretrain", str(tmp_path), "--out", str(tmp_path / "run"), "--arch", "resnet18", "--device", "cpu"])
    cfg = seen["cfg"]
    assert cfg.batch_size == 64 and cfg.queue_len == 512 and cfg.arch == "resnet18"
    assert "the CPU preset" in capsys.readouterr().err


def test_long_cpu_job_warns_once_with_the_flag_that_shortens_it(monkeypatch, caplog):
    clock = iter(float(t) for t in range(0, 100000, 100))  # every call: 100 s later
    monkeypatch.setattr("time.perf_counter", lambda: next(clock))
    log = logging.getLogger("unsolo.test")
    w = LongJobWarning("pre-training", 320, "cpu", "--epochs N", log)
    for it in range(1, 10):
        w.step(it)
    assert caplog.text.count("will take about") == 1
    assert "pre-training will take about" in w.message and "--epochs N shortens it" in w.message
    short = LongJobWarning("training", 20, "cpu", "--iters N", log)
    for it in range(1, 10):
        short.step(it)
    assert short.message is None  # well under an hour
    gpu = LongJobWarning("training", 10**6, "cuda", "--iters N", log)
    for it in range(1, 10):
        gpu.step(it)
    assert gpu.message is None and progress_mod.LONG_JOB_SECONDS == 3600
