"""DenseCL math (hand-computed cases), queue, momentum update, correspondence, augmentation and export."""

import math

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF

from unsolo.data.views import (
    AugmentConfig,
    IterationBatchSampler,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    photometric_augment,
    random_resized_crop_box,
    rgb_to_hsv,
    hsv_to_rgb,
)
from unsolo.errors import UnsoloError
from unsolo.modeling.backbone import ResNetBackbone
from unsolo.modeling.densecl import (
    DenseCL,
    combine_losses,
    dense_contrastive_loss,
    dense_correspondence,
    enqueue_,
    export_checkpoint,
    global_contrastive_loss,
    momentum_update_,
)

T = 0.2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ce0(logits):
    """-log softmax(logits)[0], by hand."""
    return -logits[0] + math.log(sum(math.exp(v) for v in logits))


def test_global_loss_hand_computed():
    s = 1 / math.sqrt(2)
    q = torch.tensor([[1.0, 0.0], [s, s]])  # (N=2, D=2)
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queue = torch.tensor([[0.0, -1.0, s], [1.0, 0.0, s]])  # (D=2, K=3)
    # row 0: pos 1, negs (0, -1, s); row 1: pos s, negs (s, -s, 1)
    expected = 0.5 * (ce0([1 / T, 0, -1 / T, s / T]) + ce0([s / T, s / T, -s / T, 1 / T]))
    got = global_contrastive_loss(q, k, queue, T)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_dense_loss_hand_computed():
    # One image, D=2, S=2 locations. Backbone features: query location 0 resembles key location 1 and vice versa.
    q_b = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (N=1, C=2, S=2): loc0 = e0, loc1 = e1
    k_b = torch.nn.functional.normalize(torch.tensor([[[0.0, 0.9], [1.0, 0.1]]]), dim=1)  # key loc0 ~ e1, loc1 ~ e0
    match = dense_correspondence(q_b, k_b)
    assert match.tolist() == [[1, 0]]
    q_grid = torch.tensor([[[0.6, 0.0], [0.8, 1.0]]])  # (1, D=2, S=2): q0 = (0.6, 0.8), q1 = (0, 1)
    k_grid = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # k0 = (1, 0), k1 = (0, 1)
    queue2 = torch.tensor([[1.0], [0.0]])  # one negative (1, 0)
    # q0 is matched with k1 -> pos 0.8, neg 0.6 ; q1 matched with k0 -> pos 0, neg 0
    expected = 0.5 * (ce0([0.8 / T, 0.6 / T]) + ce0([0.0, 0.0]))
    got = dense_contrastive_loss(q_grid, k_grid, match, queue2, T)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    total = combine_losses(torch.tensor(2.0), got, 0.5)
    assert total.item() == pytest.approx(0.5 * 2.0 + 0.5 * expected, rel=1e-6)
    assert combine_losses(torch.tensor(2.0), got, 0.0).item() == pytest.approx(2.0)


def test_dense_correspondence_recovers_permutation():
    g = torch.Generator().manual_seed(0)
    q_b = torch.nn.functional.normalize(torch.randn(3, 16, 9, generator=g), dim=1)  # (N, C, S)
    perm = torch.stack([torch.randperm(9, generator=g) for _ in range(3)])  # key location j holds query perm[j]
    k_b = torch.stack([q_b[n][:, perm[n]] for n in range(3)])
    match = dense_correspondence(q_b, k_b)
    # query location i must be matched with the key location j where perm[j] == i
    assert torch.equal(match, torch.argsort(perm, dim=1))


def test_queue_fifo_and_wraparound():
    queue = torch.zeros(2, 6)  # (D=2, K=6)
    ptr = torch.zeros(1, dtype=torch.long)
    batches = [torch.full((2, 2), float(i + 1)) for i in range(4)]  # (B=2, D=2)
    for i, b in enumerate(batches[:3]):
        enqueue_(queue, ptr, b)
        assert int(ptr) == (2 * (i + 1)) % 6
    assert queue[0].tolist() == [1, 1, 2, 2, 3, 3]
    enqueue_(queue, ptr, batches[3])  # wraps: overwrites the oldest keys
    assert queue[0].tolist() == [4, 4, 2, 2, 3, 3] and int(ptr) == 2
    with pytest.raises(ValueError):
        enqueue_(queue, ptr, torch.ones(4, 2))  # 6 % 4 != 0


def test_momentum_update():
    q = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    k = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]])]
    momentum_update_(q, k, 0.9)
    assert torch.allclose(k[0], torch.tensor([0.1, 0.2])) and torch.allclose(k[1], torch.tensor([[1.2]]))


def test_model_step_queue_and_key_encoder():
    torch.manual_seed(0)
    model = DenseCL("resnet18", hidden_dim=32, queue_len=8, momentum=0.5)
    with torch.no_grad():  # make the two encoders differ so that the momentum update is visible
        for p in model.encoder_q.parameters():
            p.add_(0.01)
    before_k = [p.clone() for p in model.encoder_k.parameters()]
    q_params = [p.clone() for p in model.encoder_q.parameters()]
    x = torch.randn(4, 3, 64, 64)
    out = model(x, x.flip(-1))
    assert set(out) == {"loss", "loss_global", "loss_dense"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.encoder_q.parameters())
    assert all(p.grad is None for p in model.encoder_k.parameters())
    for bk, qp, pk in zip(before_k, q_params, model.encoder_k.parameters()):
        assert torch.allclose(pk, 0.5 * bk + 0.5 * qp, atol=1e-6)
    assert int(model.queue_ptr) == 4 and int(model.queue2_ptr) == 4
    assert torch.allclose(model.queue[:, :4].norm(dim=0), torch.ones(4), atol=1e-5)
    with pytest.raises(UnsoloError, match="multiple of the global batch"):
        model.check_batch(3)


def test_export_round_trip(tmp_path):
    model = DenseCL("resnet18", hidden_dim=16, queue_len=4)
    ckpt = export_checkpoint(model.backbone_state_dict())
    assert ckpt["author"] == "DenseCL"
    path = tmp_path / "backbone.pth"
    torch.save(ckpt, path)
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    tv = torchvision.models.resnet18(weights=None)
    expected = {k for k in tv.state_dict() if not k.startswith("fc.")}
    assert set(loaded["state_dict"]) == expected  # exact torchvision names, no fc, no heads
    missing, unexpected = tv.load_state_dict(loaded["state_dict"], strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    frozen = ResNetBackbone("resnet18", norm="frozen_bn")  # what Free Mask builds
    frozen.load_state_dict(loaded["state_dict"], strict=False)
    assert torch.equal(frozen.layer4[1].bn2.running_var, loaded["state_dict"]["layer4.1.bn2.running_var"])
    assert torch.equal(frozen.conv1.weight, model.encoder_q.backbone.conv1.weight)


# ------------------------------------------------------------------------------------------ augmentation


def test_colour_ops_match_torchvision():
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    f = torch.tensor([0.6, 1.0, 1.4])
    h = torch.tensor([-0.1, 0.05, 0.1])
    for i in range(3):
        assert torch.allclose(adjust_contrast(x, f)[i], TF.adjust_contrast(x[i], float(f[i])), atol=1e-4)
        assert torch.allclose(adjust_saturation(x, f)[i], TF.adjust_saturation(x[i], float(f[i])), atol=1e-4)
        assert torch.allclose(adjust_hue(x, h)[i], TF.adjust_hue(x[i], float(h[i])), atol=1e-4)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5)


def test_gaussian_blur():
    const = torch.full((2, 3, 9, 9), 0.3)
    assert torch.allclose(gaussian_blur(const, torch.tensor([0.5, 2.0]), 6), const, atol=1e-6)
    impulse = torch.zeros(1, 1, 9, 9)
    impulse[0, 0, 4, 4] = 1.0
    y = gaussian_blur(impulse, torch.tensor([1.0]), 3)
    w = torch.exp(-0.5 * torch.arange(-3.0, 4.0) ** 2)
    w = w / w.sum()
    assert torch.allclose(y[0, 0, 1:8, 1:8], torch.outer(w, w), atol=1e-6)


def test_photometric_augment_deterministic_and_in_range():
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    a = photometric_augment(x, AugmentConfig(), torch.Generator().manual_seed(5))
    b = photometric_augment(x, AugmentConfig(), torch.Generator().manual_seed(5))
    assert a.shape == (6, 3, 16, 16) and a.dtype == torch.float32 and torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 255.0 + 1e-3
    off = AugmentConfig(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, flip_prob=0.0)
    assert torch.allclose(photometric_augment(x, off), x.float(), atol=1e-3)
    gray = photometric_augment(x, AugmentConfig(jitter_prob=0.0, grayscale_prob=1.0, blur_prob=0.0, flip_prob=1.0))
    assert torch.allclose(gray[:, 0], gray[:, 1], atol=1e-4)


def test_random_resized_crop_box_bounds():
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(rng, 50, 80, (0.2, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top and top + h <= 50 and 0 <= left and left + w <= 80 and h > 0 and w > 0
        areas.append(h * w / 4000)
    assert min(areas) >= 0.18 and max(areas) <= 1.0


def test_iteration_sampler_resume_and_ranks():
    full = list(IterationBatchSampler(10, 4, seed=3, start=0, total=6))
    assert len(full) == 6 and all(len(b) == 4 for b in full)  # 2 batches per epoch (drop last)
    assert full[:2] != full[2:4]  # a new order each epoch
    assert list(IterationBatchSampler(10, 4, seed=3, start=3, total=6)) == full[3:]
    r0 = list(IterationBatchSampler(10, 4, seed=3, start=0, total=6, rank=0, world=2))
    r1 = list(IterationBatchSampler(10, 4, seed=3, start=0, total=6, rank=1, world=2))
    assert [a + b for a, b in zip(r0, r1)] == full
