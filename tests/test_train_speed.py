"""The CPU speed-ups of SOLO training compute the same thing: broadcast pairwise term, channels_last, OpenMP policy."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from unsolo.modeling.losses import pairwise_log_loss, pairwise_loss, pairwise_loss_terms, unfold_wo_center
from unsolo.modeling.solov2 import build_model, model_config

ROOT = Path(__file__).resolve().parents[1]


def _reference_pairwise(logits, targets, sims, thresh=0.3):
    """The official formula on fully materialised tensors: max + log(exp + exp), one weight tensor per mask."""
    x = logits[:, None]
    lf, lb = F.logsigmoid(x), F.logsigmoid(-x)
    a = lf[:, :, None] + unfold_wo_center(lf, 3, 2)
    b = lb[:, :, None] + unfold_wo_center(lb, 3, 2)
    m = torch.maximum(a, b)
    loss = -(torch.log(torch.exp(a - m) + torch.exp(b - m)) + m)[:, 0]
    t = targets.float()
    box = t.amax(1, keepdim=True) * t.amax(2, keepdim=True)
    w = (sims >= thresh).float() * box[:, None]
    return (loss * w).sum() / w.sum().clamp(min=1.0)


def test_broadcast_pairwise_equals_materialised_copies():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 16, 20, generator=g) * 4
    targets = torch.zeros(5, 16, 20, dtype=torch.uint8)
    for n in range(5):
        targets[n, 2 + n : 8 + n, 3 + n : 12] = 1
    targets[4] = 0  # a mask without projection box
    sim = torch.rand(1, 8, 16, 20, generator=g)
    ref = _reference_pairwise(logits, targets, sim.expand(5, -1, -1, -1).clone())
    assert pairwise_loss(logits, targets, sim).item() == pytest.approx(ref.item(), rel=1e-6)
    assert pairwise_loss(logits, targets, sim.expand(5, -1, -1, -1).clone()).item() == pytest.approx(ref.item(), rel=1e-6)
    # two images: summing each image's (numerator, denominator) = the loss of the concatenation
    sim2 = torch.rand(1, 8, 16, 20, generator=g)
    (n1, d1), (n2, d2) = (pairwise_loss_terms(logits[:2], targets[:2], sim),
                          pairwise_loss_terms(logits[2:], targets[2:], sim2))
    both = torch.cat([sim.expand(2, -1, -1, -1), sim2.expand(3, -1, -1, -1)])
    assert ((n1 + n2) / (d1 + d2)).item() == pytest.approx(_reference_pairwise(logits, targets, both).item(), rel=1e-6)
    # gradients too
    lg = logits.clone().requires_grad_(True)
    pairwise_loss(lg, targets, sim).backward()
    lr = logits.clone().requires_grad_(True)
    _reference_pairwise(lr, targets, sim.expand(5, -1, -1, -1)).backward()
    assert torch.allclose(lg.grad, lr.grad, rtol=1e-5, atol=1e-9)
    # saturated logits stay finite (logaddexp is stable)
    assert torch.isfinite(pairwise_log_loss(torch.full((1, 8, 8), 200.0))).all()
    assert pairwise_log_loss(torch.tensor([[[0.0]]]))[0, 0, 0, 0].item() == pytest.approx(0.0, abs=1e-7)  # padding


def test_channels_last_model_gives_the_same_losses_and_gradients():
    torch.manual_seed(0)
    model = build_model(model_config("small_r18")).train()
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    h, w = 64, 64
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, 5:30, 10:40] = True
    masks[1, 30:60, 30:62] = True
    inst = {"masks": masks, "boxes": torch.tensor([[10, 5, 40, 30], [30, 30, 62, 60]], dtype=torch.float32),
            "labels": torch.zeros(2, dtype=torch.int64), "embs": torch.randn(2, 128)}
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    batch = [{"image": image, "instances": inst, "orig_size": (h, w)}]
    out = {}
    for name, m in (("plain", model), ("cl", fast)):
        m._iter.fill_(10**6)  # past the pairwise warm-up
        losses = m(batch)
        sum(losses.values()).backward()
        out[name] = ({k: v.item() for k, v in losses.items()}, m.ins_head.kernel_pred.weight.grad.clone())
    for k, v in out["plain"][0].items():
        assert out["cl"][0][k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    assert fast.ins_head.kernel_pred.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out["plain"][1].contiguous(), out["cl"][1].contiguous(), rtol=1e-3, atol=1e-6)
    # a checkpoint of the channels_last model loads into a plain one with the same values
    plain = build_model(model_config("small_r18"))
    plain.load_state_dict(fast.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), fast.state_dict().values()))


@pytest.mark.parametrize("preset,expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_wait_policy_default_and_override(preset, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run([sys.executable, "-c", "import unsolo, os; print(os.environ['OMP_WAIT_POLICY'])"],
                         capture_output=True, text=True, env=env, cwd=str(ROOT), check=True)
    assert res.stdout.strip() == expected
