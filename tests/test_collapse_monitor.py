"""The collapse monitor (foreground fractions of positive-cell masks vs their targets) and the full-Dice first phase."""

from __future__ import annotations

import json

import pytest
import torch

from unsolo.cli import main
from unsolo.modeling.losses import foreground_stats
from unsolo.modeling.solov2 import ModelConfig, build_model
from unsolo.utils.collapse import CollapseMonitor, far_above
from solo_train_fixtures import make_shapes_dataset
from test_train import TINY, read_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_foreground_stats_are_sums_and_a_count():
    logits = torch.full((2, 4, 4), -5.0)
    logits[0, :2] = 5.0  # half of mask 0 above p = 0.5
    targets = torch.zeros((2, 4, 4), dtype=torch.bool)
    targets[1, 0, 0] = True  # 1/16 of mask 1
    pred, tgt, n = foreground_stats(logits, targets).tolist()
    assert pred == pytest.approx(0.5) and tgt == pytest.approx(1 / 16) and n == 2


def test_monitor_warns_once_after_patience_and_not_during_warmup():
    assert far_above(0.8, 0.2) and not far_above(0.3, 0.2) and not far_above(0.15, 0.01)
    mon = CollapseMonitor(start_iter=100, patience=3)
    assert all(mon.update(it, 0.9, 0.1) is None for it in (9, 19, 29))  # warm-up: ignored
    assert mon.update(109, 0.9, 0.1) is None and mon.update(119, 0.9, 0.1) is None
    assert mon.update(129, 0.1, 0.1) is None  # the streak breaks
    msgs = [mon.update(it, 0.8, 0.2) for it in (139, 149, 159, 169, 179)]
    assert msgs[:2] == [None, None] and msgs[3:] == [None, None]
    assert msgs[2].startswith("mask collapse: since iteration 139") and "80 %" in msgs[2] and "20 %" in msgs[2]


def _tiny_model(**loss) -> torch.nn.Module:
    cfg = ModelConfig(arch="resnet18", fpn_channels=32, ins_channels=32, num_ins_convs=1, mask_channels=32,
                      num_kernels=32, grids=(8, 8, 6, 4, 2))
    for k, v in loss.items():
        setattr(cfg.loss, k, v)
    return build_model(cfg).train()


def _batch() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 255, (3, 64, 64), generator=g).float()
    masks = torch.zeros((1, 64, 64), dtype=torch.bool)
    masks[0, 10:40, 12:50] = True
    return [{"image": img, "instances": {"masks": masks, "boxes": torch.tensor([[12.0, 10.0, 50.0, 40.0]]),
                                          "labels": torch.zeros(1, dtype=torch.int64)}, "orig_size": (64, 64)}]


def test_full_dice_iters_switches_to_the_weak_losses_and_restarts_the_pairwise_warmup():
    torch.manual_seed(0)
    model = _tiny_model(full_dice_iters=2, warmup_iters=4)
    ref_full = _tiny_model(mask_loss="full")
    ref_full.load_state_dict(model.state_dict())
    batch = _batch()
    for _ in range(2):  # forwards 1 and 2: exactly the full-mask Dice model
        a, b = model(batch), ref_full(batch)
        assert model.mask_loss_mode() == "full"
        assert all(torch.equal(a[k], b[k]) for k in a), (a, b)
        assert float(a["loss_pairwise"].detach()) == 0.0 and float(a["loss_ins_max"].detach()) == 0.0
    ref_weak = _tiny_model(warmup_iters=4)
    ref_weak.load_state_dict(model.state_dict())
    ref_weak._iter.fill_(0)
    out = model(batch)  # forward 3 = the first weak forward: pairwise factor 1/4, as the official first iteration's
    assert model.mask_loss_mode() == "weak"
    ref = ref_weak(batch)
    for k in out:
        assert torch.allclose(out[k], ref[k], rtol=1e-5, atol=1e-7), (k, out[k], ref[k])
    assert float(out["loss_pairwise"].detach()) > 0 and float(out["loss_ins_max"].detach()) > 0
    s = model.mask_stats.tolist()
    assert s[2] >= 1 and 0 <= s[0] <= s[2] and s[1] == pytest.approx(s[2] * 30 * 38 / 64 / 64, rel=0.2)


def test_training_logs_the_fractions_and_warns_once(tmp_path, caplog, monkeypatch):
    folder, labels = make_shapes_dataset(tmp_path / "d", n_images=2, sizes=((64, 64),), objects=(2,))
    # a monitor that fires at once: checks the wiring (logging, the single warning), not the threshold
    import unsolo.pipeline.train as train_mod

    monkeypatch.setattr(train_mod, "CollapseMonitor",
                        lambda start_iter: CollapseMonitor(start_iter=start_iter, patience=2, ratio=0.0, margin=-1.0))
    run = tmp_path / "run"
    assert main(["train", str(folder), "--labels", str(labels), "--out", str(run), "--iters", "4", "--batch-size", "2",
                 "--set", "model.loss.mask_loss=weak", "--set", "model.loss.full_dice_iters=2", *TINY]) == 0
    recs = read_metrics(run)
    assert all(0.0 <= r["fg_pred"] <= 1.0 and 0.0 < r["fg_target"] < 1.0 for r in recs), recs
    assert caplog.text.count("mask collapse: since iteration 0") == 1
    assert float(recs[0]["loss_pairwise"]) == 0.0 and float(recs[-1]["loss_pairwise"]) > 0.0  # full, then weak
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["fg_target"] > 0
