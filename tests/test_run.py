"""``unsolo run`` end to end on a tiny folder, its resume, and ``unsolo demo --size quick``."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from unsolo.cli import main
from unsolo.data.synthetic import generate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--set", "pretrain_overrides=[epochs=1,batch_size=8,queue_len=64,size=64,workers=0,checkpoint_period=1]",
    "--set", "train_overrides=[solver.max_iter=3,solver.ims_per_batch=2,solver.warmup_iters=1,data.workers=0,"
    "'data.min_sizes=[96]',data.max_size=160,solver.checkpoint_period=1]",
    "--set", "generator=freemask", "--set", "generator_preset=small",  # the cpu preset's generator is Felzenszwalb
    "--set", "generator_overrides=[short_side=192,max_size=320]",
    "--set", "test_short_side=96", "--set", "test_max_side=160", "--set", "workers=0",
    "--device", "cpu",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("scenes")
    generate(d / "train", num_images=8, size=96, seed=5)
    generate(d / "val", num_images=3, size=96, seed=6)
    return d


def test_run_end_to_end_then_resume_only_missing_stages(folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", str(folder / "train" / "images"), "--out", str(out), "--rounds", "0",
            "--gt", str(folder / "val" / "annotations.json"), "--eval-input", str(folder / "val" / "images")] + TINY
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "coarse masks (Free Mask)" in table and "round 0" in table and "report:" in table
    for f in ["pretrain/backbone.pth", "freemask/pseudo.json", "round0/model_final.pth", "predictions.json",
              "metrics.json", "report.html", "run_config.yaml"]:
        assert (out / f).is_file(), f
    preds = json.loads((out / "predictions.json").read_text())
    assert isinstance(preds, list)
    stamps = {f: (out / f).stat().st_mtime_ns for f in ["pretrain/backbone.pth", "freemask/pseudo.json",
                                                        "round0/model_final.pth"]}
    # a later call with one more round reuses every finished stage and adds the self-training round
    assert main(args[:5] + ["1"] + args[6:]) == 0
    assert {f: (out / f).stat().st_mtime_ns for f in stamps} == stamps
    summary = json.loads((out / "summary.json").read_text())
    if summary["rounds_trained"] == 2:
        assert (out / "round1" / "model_final.pth").is_file()
    else:  # the tiny model kept no confident prediction: self-training stopped, said so, round 0 is final
        assert json.loads((out / "round0" / "pseudo_labels.json").read_text())["annotations"] == []


def test_run_resumes_after_kill(folder, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "unsolo", "run", str(folder / "train" / "images"), "--out", str(out),
           "--rounds", "0"] + TINY
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "freemask" / "pseudo.json").is_file() and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "pretrain" / "backbone.pth").is_file()
    done_before = (out / "round0" / "model_final.pth").is_file()
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "[pretrain] done already" in res.stderr
    assert (out / "round0" / "model_final.pth").is_file() and (out / "predictions.json").is_file()
    assert done_before or "[train round 0] running" in res.stderr


def test_run_bad_input(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["run", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no images" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--preset", "nope"]) == 2
    assert main(["run", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--backbone-weights",
                 str(tmp_path / "missing.pth")]) == 2


@pytest.mark.parametrize("option, named", [
    ("generator=bogus", "generator: unknown pseudo-mask generator 'bogus'"),
    ("train_overrides=[solver.max_iterr=5]", "train_overrides: unknown config key(s) solver.max_iterr;"),
    ("train.solver.max_iterr=5", "train_overrides: unknown config key(s) solver.max_iterr;"),
    ("pretrain_overrides=[queue=5]", "pretrain_overrides: unknown config key(s) queue;"),
    ("generator_overrides=[tauu=0.5]", "generator_overrides: unknown config key(s) tauu;"),
    ("train_preset=nope", "unknown train preset 'nope'"),
    ("time_budget=-5m", "time_budget: the time budget must be positive"),
    ("train_overrides=[solver.precision=fp8]", "solver.precision must be one of"),
    ("inference_precision=fp8", "inference_precision: unknown precision 'fp8'"),
])
def test_run_validates_every_stage_before_any_runs(folder, tmp_path, capsys, monkeypatch, option, named):
    """An unknown generator, preset or option key of any stage fails at once with one line naming it (exit 2),
    before the first stage (DenseCL pre-training) starts and before the run folder is made."""
    import unsolo.pipeline.pretrain

    monkeypatch.setattr(unsolo.pipeline.pretrain, "pretrain", lambda *a, **k: pytest.fail("pre-training started"))
    out = tmp_path / "run"
    assert main(["run", str(folder / "train" / "images"), "--out", str(out), "--device", "cpu",
                 "--set", option]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.strip()] == [line for line in err.splitlines() if named in line]
    assert named in err and "Traceback" not in err and not out.exists()


def test_run_old_generator_option_names_still_work(caplog):
    """``freemask_preset`` / ``freemask_overrides`` (the names before ``generator_*``) still work, with one
    deprecation line each."""
    from unsolo.pipeline.run import resolve_run_config

    with caplog.at_level("WARNING"):
        cfg = resolve_run_config("cpu", ["freemask_preset=official", "freemask_overrides=[maskness_threshold=0.5]"])
    assert (cfg.generator_preset, cfg.generator_overrides) == ("official", ["maskness_threshold=0.5"])
    assert [m for m in caplog.messages if "deprecated" in m] == [
        "run: option 'freemask_preset' is deprecated, use 'generator_preset'",
        "run: option 'freemask_overrides' is deprecated, use 'generator_overrides'"]
    assert resolve_run_config("demo").generator_preset == "small"  # the presets use the new name


def test_run_stage_options_as_nested_keys():
    """``--set train.solver.max_iter=600`` (and ``pretrain.``, ``generator.``) adds to the stage's overrides list,
    after a string list given, and reaches the stage's config; the string lists alone work as before."""
    from unsolo.pipeline.run import resolve_run_config, resolve_stages

    cfg = resolve_run_config("cpu", ["train_overrides=[solver.warmup_iters=7]", "train.solver.max_iter=600",
                                     "pretrain.epochs=10", "generator.maskness_threshold=0.7", "generator=freemask",
                                     "generator_preset=small",
                                     "train.data.min_sizes=[96, 128]", "pseudo_label.score_thr=0.6"])
    assert cfg.train_overrides == ["solver.warmup_iters=7", "solver.max_iter=600", "data.min_sizes=[96, 128]"]
    assert (cfg.pretrain_overrides, cfg.generator_overrides) == (["epochs=10"], ["maskness_threshold=0.7"])
    assert (cfg.generator, cfg.pseudo_label.score_thr) == ("freemask", 0.6)
    stages = resolve_stages(cfg)
    assert (stages.train.solver.max_iter, stages.train.solver.warmup_iters) == (600, 7)
    assert list(stages.train.data.min_sizes) == [96, 128] and stages.train.model.arch == "resnet18"
    assert stages.pretrain.epochs == 10 and stages.generator.cfg.maskness_threshold == 0.7
    listed = resolve_run_config("cpu", ["train_overrides=[solver.max_iter=600]"])
    assert resolve_stages(listed).train == resolve_stages(resolve_run_config("cpu", ["train.solver.max_iter=600"])).train


@pytest.mark.parametrize("option, named", [
    ("train.solver.max_iterr=5", "train_overrides: unknown config key(s) solver.max_iterr;"),
    ("pretrain.queue=5", "pretrain_overrides: unknown config key(s) queue;"),
    ("generator.tauu=0.5", "generator_overrides: unknown config key(s) tauu;"),
    ("train.=5", "names no key after 'train'"),
])
def test_run_nested_keys_are_validated_before_any_stage(option, named):
    """An unknown nested key fails when the stages resolve (before any runs), in one line naming it."""
    from unsolo.errors import UnsoloError
    from unsolo.pipeline.run import resolve_run_config, resolve_stages

    with pytest.raises(UnsoloError) as e:
        resolve_stages(resolve_run_config("cpu", [option]))
    assert named in str(e.value) and "\n" not in str(e.value)


def test_demo_takes_run_options_as_nested_keys():
    """``unsolo demo --set run.train.solver.max_iter=5`` reaches the run's train overrides, after the size's own."""
    from unsolo.config import resolve
    from unsolo.pipeline.demo import DEMO_SIZES, DemoConfig
    from unsolo.pipeline.run import resolve_run_config, resolve_stages

    cfg = resolve(DemoConfig, "demo", None, ["run.train.solver.max_iter=5", "run.rounds=0"], DEMO_SIZES["quick"],
                  nested={"run": "run_overrides"})
    assert cfg.run_overrides[:-2] == DEMO_SIZES["quick"]["run_overrides"]
    run = resolve_run_config(cfg.run_preset, cfg.run_overrides)
    assert run.rounds == 0 and resolve_stages(run).train.solver.max_iter == 5


def test_fit_pretrain_batch_to_a_small_folder():
    from unsolo.errors import UnsoloError
    from unsolo.pipeline.pretrain import PretrainConfig
    from unsolo.pipeline.run import fit_pretrain_batch

    cfg = PretrainConfig(batch_size=64, queue_len=512)  # the cpu preset's DenseCL
    assert fit_pretrain_batch(cfg, 64) is cfg and fit_pretrain_batch(cfg, 600) is cfg
    small = fit_pretrain_batch(cfg, 60)
    assert (small.batch_size, small.queue_len, small.epochs) == (60, 480, cfg.epochs)
    assert (fit_pretrain_batch(cfg, 60, world=8).batch_size, fit_pretrain_batch(cfg, 60, world=8).queue_len) == (56, 504)
    assert fit_pretrain_batch(PretrainConfig(batch_size=64, queue_len=128), 32).queue_len == 128  # already a multiple
    assert fit_pretrain_batch(PretrainConfig(batch_size=64, queue_len=64), 60).queue_len == 60
    with pytest.raises(UnsoloError, match="at least one image per process"):
        fit_pretrain_batch(cfg, 3, world=4)


def test_run_on_a_folder_smaller_than_a_pretrain_batch(folder, tmp_path, caplog):
    """8 images for a DenseCL batch of 10 (queue 60): the batch becomes 8 and the queue 56, said in one line, and the
    run goes on to the end (before, pre-training stopped, naming a --batch-size flag `unsolo run` lacks)."""
    out = tmp_path / "run"
    pre = "pretrain_overrides=[epochs=1,batch_size=10,queue_len=60,size=64,workers=0,checkpoint_period=1]"
    tiny = [pre if a.startswith("pretrain_overrides=") else a for a in TINY]
    with caplog.at_level("INFO"):
        assert main(["run", str(folder / "train" / "images"), "--out", str(out), "--rounds", "0"] + tiny) == 0
    assert [m for m in caplog.messages if "fewer than a batch" in m] == [
        "[pretrain] 8 images, fewer than a batch of 10: batch 8 instead, queue 56 (a multiple of it)"]
    saved = (out / "pretrain" / "config.yaml").read_text()
    assert "batch_size: 8" in saved and "queue_len: 56" in saved
    assert (out / "round0" / "model_final.pth").is_file() and (out / "predictions.json").is_file()


def test_run_time_budget_sizes_each_round_and_a_resume_keeps_it(folder, tmp_path, caplog):
    """``--time-budget``: each SOLO round trains for its share of what pre-training and Free Mask left (at least
    30 s), its length fixed by timing (round0/time_budget.json); the plan is kept for a resumed run."""
    out = tmp_path / "run"
    args = ["run", str(folder / "train" / "images"), "--out", str(out), "--rounds", "0", "--time-budget", "45s"]
    with caplog.at_level("INFO"):
        assert main(args + TINY) == 0
    plan = json.loads((out / "time_plan.json").read_text())
    fixed = json.loads((out / "round0" / "time_budget.json").read_text())
    assert list(plan) == ["round 0"] and plan["round 0"] >= 30 and fixed["max_time"] == plan["round 0"]
    import torch

    ckpt = torch.load(out / "round0" / "model_final.pth", weights_only=True)
    assert ckpt["iteration"] == fixed["max_iter"] - 1  # trained the length the budget fixed, not the preset's 3
    assert any("[round 0] time budget" in m for m in caplog.messages)
    mtime = (out / "round0" / "model_final.pth").stat().st_mtime_ns
    assert main(args + TINY) == 0  # nothing left to do: every stage is reused
    assert (out / "round0" / "model_final.pth").stat().st_mtime_ns == mtime
    assert json.loads((out / "time_plan.json").read_text()) == plan


def test_demo_bad_size(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--set", "train_images=0"]) == 2
    assert "train_images and eval_images must be at least 1" in capsys.readouterr().err


def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--size", "quick", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "coarse masks (Free Mask)" in out and "report:" in out
    report = (tmp_path / "demo" / "run" / "report.html").read_text()
    assert "ground truth" in report and "data:image/png;base64," in report
    metrics = json.loads((tmp_path / "demo" / "run" / "metrics.json").read_text())
    assert "coarse masks (Free Mask)" in metrics and "round 0 (SOLO on coarse masks)" in metrics


@pytest.mark.parametrize("size", ["default", "quick", "long"])
def test_demo_sizes_resolve(size):
    """Every named demo size resolves to valid configs of every stage (a typo in an override key fails here, not an
    hour into a run)."""
    from unsolo.config import resolve
    from unsolo.generators.freemask import FreeMaskConfig
    from unsolo.pipeline.demo import DEMO_SIZES, DemoConfig
    from unsolo.pipeline.pretrain import PretrainConfig
    from unsolo.pipeline.run import resolve_run_config
    from unsolo.pipeline.train import resolve_train_config

    cfg = resolve(DemoConfig, "demo", None, [], DEMO_SIZES[size])
    run = resolve_run_config(cfg.run_preset, cfg.run_overrides)
    resolve(PretrainConfig, "pretrain", run.pretrain_preset, run.pretrain_overrides, {"arch": run.arch})
    fm = resolve(FreeMaskConfig, "freemask", run.generator_preset, run.generator_overrides)
    tr = resolve_train_config(run.train_preset, run.train_overrides, {"model": {"arch": run.arch}})
    if size == "long":  # the measured setting of docs/ablations.md
        assert (cfg.size, fm.maskness_threshold, tr.solver.max_iter, tr.model.loss.mask_loss) == (192, 0.7, 900, "full")
        assert (run.generator, run.rounds, run.test_short_side) == ("freemask", 1, 224)  # as measured
    assert run.generator == "freemask"  # every demo size shows FreeSOLO's own generator
    if size == "default":  # the measured 15-minute setting of docs/results.md: sized by time, not iterations
        assert (cfg.size, fm.maskness_threshold, run.time_budget, run.rounds, run.test_short_side) == (
            192, 0.7, "14m", 0, 600)
    if size == "quick":
        assert run.time_budget is None


def test_run_with_cutler_rounds_merges_the_previous_labels(folder, tmp_path, caplog):
    """`unsolo run --rounds 1` with CutLER's rules: the round's labels at its own score threshold (0, and every
    candidate cell, so the 3-iteration model keeps some), merged with the coarse masks no new label overlaps; round
    1 trains on the merged file."""
    out = tmp_path / "run"
    args = ["run", str(folder / "train" / "images"), "--out", str(out), "--rounds", "1",
            "--set", "round_score_thrs=[0.0]", "--set", "pseudo_label.candidate_score_thr=0.0",
            "--set", "merge_previous_labels=true"] + TINY
    with caplog.at_level("INFO"):
        assert main(args) == 0
    new = json.loads((out / "round0" / "pseudo_labels.json").read_text())["annotations"]
    merged = json.loads((out / "round0" / "pseudo_labels_merged.json").read_text())["annotations"]
    coarse = json.loads((out / "freemask" / "pseudo.json").read_text())["annotations"]
    assert new and len(new) < len(merged) <= len(new) + len(coarse)
    assert (out / "round1" / "model_final.pth").is_file()
    trained_on = [m for m in caplog.messages if m.startswith("training on")]
    assert len(trained_on) == 2 and f"({len(merged)} instances)" in trained_on[1]


def test_run_with_another_pseudo_mask_generator(folder, tmp_path, capsys):
    """``generator=felzenszwalb``: the classical segments replace Free Mask in stage 2; the rest is unchanged."""
    out = tmp_path / "run"
    args = ["run", str(folder / "train" / "images"), "--out", str(out), "--rounds", "0",
            "--backbone-weights", str(_r18(tmp_path)), "--gt", str(folder / "val" / "annotations.json"),
            "--eval-input", str(folder / "val" / "images")] + TINY + [
            "--set", "generator=felzenszwalb", "--set", "generator_preset=small", "--set", "arch=resnet18"]
    assert main(args) == 0
    assert "coarse masks (Felzenszwalb)" in capsys.readouterr().out
    labels = json.loads((out / "freemask" / "pseudo.json").read_text())
    assert labels["annotations"] and "emb" not in labels["annotations"][0]
    assert "generator: felzenszwalb" in (out / "run_config.yaml").read_text()
    assert (out / "round0" / "model_final.pth").is_file()
    assert main(args + ["--set", "generator=sam"]) == 2


def test_cpu_preset_is_the_real_object_recipe():
    """``--preset cpu`` (the default) is the recipe measured on real-object scenes (docs/results.md): Felzenszwalb's
    segments with the object filters as coarse masks, one SOLO round, inference at the largest training scale."""
    from unsolo.pipeline.run import resolve_run_config, resolve_stages

    cfg = resolve_run_config("cpu")
    assert (cfg.generator, cfg.generator_preset, cfg.rounds, cfg.test_short_side) == ("felzenszwalb", "objects", 0, 256)
    stages = resolve_stages(cfg)
    assert stages.generator.cfg.max_sides == 1 and stages.generator.cfg.score == "area"
    assert max(stages.train.data.min_sizes) == cfg.test_short_side
    back = resolve_stages(resolve_run_config("cpu", ["generator=freemask", "generator_preset=small"]))
    assert back.generator.name == "freemask"  # Free Mask one switch away


def _r18(tmp_path):
    import torch
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path
