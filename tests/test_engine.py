"""The training engine's shared pieces: precision detection and autocast, time budgets, schedule re-fitting."""

import json
import math

import pytest
import torch

from unsolo.cli import main
from unsolo.engine import budget, precision
from unsolo.engine.schedule import fit_schedule, lr_schedule
from unsolo.errors import UnsoloError
from unsolo.modeling.layers import GroupNorm32
from unsolo.pipeline.train import SolverConfig

AMX_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
AVX512_BF16_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
AVX2_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma f16c\n"
ARM_CPUINFO = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp bf16 i8mm\n"


@pytest.mark.parametrize("text,native", [(AMX_CPUINFO, True), (AVX512_BF16_CPUINFO, True), (AVX2_CPUINFO, False),
                                         (ARM_CPUINFO, True), ("", False)])
def test_cpu_bf16_detection_from_cpuinfo(text, native):
    assert bool(precision.cpu_flags(text) & precision.BF16_FLAGS) is native


def test_auto_precision_follows_the_cpu(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve_precision("auto", cpu) == "bfloat16"
    assert precision.resolve_precision("float32", cpu) == "float32"
    assert precision.resolve_precision("auto", torch.device("cuda")) == "float32"  # CUDA keeps --amp
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve_precision("auto", cpu) == "float32"
    assert precision.resolve_precision("bfloat16", cpu) == "bfloat16"  # asked for: honoured, slow not wrong
    with pytest.raises(UnsoloError, match="unknown precision 'fp8'"):
        precision.resolve_precision("fp8", cpu)


def test_group_norm_runs_in_float32_under_autocast_and_is_unchanged_in_float32():
    torch.manual_seed(0)
    gn, ref = GroupNorm32(4, 8), torch.nn.GroupNorm(4, 8)
    ref.load_state_dict(gn.state_dict())
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(gn(x), ref(x))  # float32: nn.GroupNorm's own path, bit for bit
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gn(x.bfloat16())
    assert y.dtype == torch.float32 and torch.allclose(y, ref(x.bfloat16().float()), atol=1e-5)


@pytest.mark.parametrize("text,seconds", [("600", 600.0), ("600s", 600.0), ("10m", 600.0), ("1.5h", 5400.0),
                                          (90, 90.0), ("none", None), (None, None)])
def test_parse_duration(text, seconds):
    assert budget.parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["-5", "0", "ten minutes", "5d", -3])
def test_bad_durations_are_one_line_errors(bad):
    with pytest.raises(UnsoloError):
        budget.parse_duration(bad)


def test_fitted_length_and_schedule():
    assert budget.fitted_length(100.0, 10.0, 13, 0.5) == 13 + 180
    assert budget.fitted_length(10.0, 12.0, 13, 0.5) == 13  # over budget already: stop where it is
    sv = SolverConfig(max_iter=2000, warmup_iters=100, steps=(1500, 1800))
    fitted = fit_schedule(sv, 1000)
    assert fitted.max_iter == 1000 and fitted.steps == (750, 900) and fitted.warmup_iters == 100
    short = fit_schedule(sv, 200)
    assert short.warmup_iters == 50  # at most a quarter of the run
    lrs = lr_schedule(fitted, 0.01)
    assert lrs.shape == (1000,) and math.isclose(lrs[100], 0.01) and math.isclose(lrs[800], 0.001)
    cal = budget.Calibration(start_iter=5, skip=2, iters=3)
    assert [cal.step(i, float(i)) for i in range(6, 12)] == [None, None, None, None, 1.0, None]  # times 7, 8, 9


def test_time_budget_fixes_the_length_and_resume_keeps_it(tmp_path, capsys):
    from solo_train_fixtures import make_shapes_dataset
    from test_train import TINY

    folder, labels = make_shapes_dataset(tmp_path / "d", n_images=2, sizes=((64, 64),), objects=(2,))
    run = tmp_path / "run"
    args = ["train", str(folder), "--labels", str(labels), "--out", str(run), "--iters", "3", "--batch-size", "1",
            "--time-budget", "5s", "--precision", "float32", *TINY]
    assert main(args) == 0
    rec = json.loads((run / "time_budget.json").read_text())
    assert rec["max_time"] == 5.0 and rec["max_iter"] >= 1  # the length depends on this machine's speed
    assert rec["setup"] == {"precision": "float32", "ims_per_batch": 1, "world_size": 1}
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["iteration"] == rec["max_iter"] - 1 and metrics[-1]["precision"] == "float32"
    ckpt = torch.load(run / "model_final.pth", weights_only=True)
    assert ckpt["iteration"] == rec["max_iter"] - 1
    capsys.readouterr()
    assert main(args) == 0  # the same budget again: the length is read back, nothing left to do
    assert "nothing to do" in capsys.readouterr().out
    assert json.loads((run / "time_budget.json").read_text()) == rec
    assert main([*args[:-len(TINY)], "--time-budget=-1m", *TINY]) == 2
    assert "time budget must be positive" in capsys.readouterr().err
    assert main([*args, "--set", "solver.precision=fp8"]) == 2
    assert "solver.precision must be one of" in capsys.readouterr().err


def test_bf16_training_records_its_precision(tmp_path):
    from solo_train_fixtures import make_shapes_dataset
    from test_train import TINY

    folder, labels = make_shapes_dataset(tmp_path / "d", n_images=2, sizes=((64, 64),), objects=(2,))
    run = tmp_path / "run"
    assert main(["train", str(folder), "--labels", str(labels), "--out", str(run), "--iters", "2",
                 "--batch-size", "1", "--precision", "bfloat16", *TINY]) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["precision"] for m in metrics] == ["bfloat16", "bfloat16"]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    assert "precision: bfloat16" in (run / "config.yaml").read_text()
    ckpt = torch.load(run / "model_final.pth", weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in ckpt["model"].values())  # master weights stay float32


def test_share_of_budget_is_decided_once_and_kept(tmp_path):
    plan = tmp_path / "time_plan.json"
    # 600 s left, 3 rounds left with shares 2:1:1, 20 s of inference each: (600 - 60) * 2 / 4
    assert budget.share_of_budget(plan, "round 0", 600.0, [2, 1, 1], 20.0) == 270.0
    assert budget.share_of_budget(plan, "round 0", 10.0, [1], 0.0) == 270.0  # a resumed run keeps it
    assert budget.share_of_budget(plan, "round 1", 40.0, [1, 1], 30.0) == 30.0  # never below 30 s
    assert json.loads(plan.read_text()) == {"round 0": 270.0, "round 1": 30.0}


def test_cli_precision_choices_follow_the_engine():
    from unsolo.cli.common import PRECISIONS  # a copy, so that `unsolo --help` does not import torch

    assert PRECISIONS == precision.PRECISIONS
