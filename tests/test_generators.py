"""Pseudo-mask generators behind one interface: MaskCut (normalized cuts) and Felzenszwalb beside Free Mask."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
import torchvision
import yaml
from PIL import Image

from unsolo.generators.felzenszwalb import FelzenszwalbConfig, felzenszwalb_masks
from unsolo.cli import main
from unsolo.generators.freemask import FreeMaskConfig
from unsolo.generators import GENERATORS, Felzenszwalb, FreeMask, MaskCut, build_generator, get_generator
from unsolo.errors import UnsoloError
from unsolo.generators.maskcut import MaskCutConfig, foreground_of, maskcut, second_smallest_eigenvector


def _two_objects(seed=0):
    """Features ``(32, 12, 12)``: background, object A and object B, each with channels of its own plus noise."""
    g = torch.Generator().manual_seed(seed)
    f = torch.rand(32, 12, 12, generator=g) * 0.05
    f[20:, :, :] += 1.0
    f[:5, 3:7, 4:9] += 1.0  # object A: rows 3-6, columns 4-8 (20 patches)
    f[20:, 3:7, 4:9] -= 1.0
    f[10:15, 8:11, 1:4] += 1.0  # object B: rows 8-10, columns 1-3 (9 patches)
    f[20:, 8:11, 1:4] -= 1.0
    return f


def test_eigenvector_matches_the_generalized_problem():
    g = torch.Generator().manual_seed(1)
    feats = torch.rand(40, 8, generator=g)
    feats[:15, :4] += 2.0
    x = second_smallest_eigenvector(feats, tau=0.8).numpy()
    f = feats.double().numpy()
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    a = np.where(f @ f.T > 0.8, 1.0, 1e-5)
    d = np.diag(a.sum(1))
    _, vecs = scipy.linalg.eigh(d - a, d, subset_by_index=[1, 1])  # CutLER's solver
    ref = vecs[:, 0]
    cos = abs(x @ d @ ref) / np.sqrt((x @ d @ x) * (ref @ d @ ref))
    assert cos > 1 - 1e-6
    side = x[:15] > x.mean()
    assert side.all() or not side.any()  # the strong group stays on one side of the cut


def test_foreground_side_and_corner_rule():
    valid = np.ones((4, 4), bool)
    vec = -np.ones(16)
    vec[5] = vec[6] = 3.0  # a peak inside: the peak's side is the foreground
    comp, soft = foreground_of(vec, valid)
    assert comp.sum() == 2 and comp[1, 1] and comp[1, 2] and soft[1, 1] == 1.0
    vec = np.full(16, 2.0)
    vec[[5, 6, 9, 10]] = -1.0  # the peak's side is the frame holding all four corners: CutLER takes the other side
    comp, _ = foreground_of(vec, valid)
    assert comp.sum() == 4 and comp[1:3, 1:3].all()


def test_maskcut_finds_both_objects_in_turn():
    r = maskcut(_two_objects(), (48, 48), MaskCutConfig(tau=0.5, max_masks=2))
    assert len(r) == 2 and r.embeddings.shape == (2, 128)
    truth = torch.zeros(2, 12, 12, dtype=torch.bool)
    truth[0, 3:7, 4:9] = True
    truth[1, 8:11, 1:4] = True
    truth = truth.repeat_interleave(4, 1).repeat_interleave(4, 2)
    for m in r.masks:
        ious = [(m & t).sum() / (m | t).sum() for t in truth]
        assert max(ious) > 0.99
    assert not (r.masks[0] & r.masks[1]).any()
    assert ((r.scores > 0) & (r.scores <= 1)).all()
    assert r.boxes[:, 2:].gt(r.boxes[:, :2]).all()
    assert len(maskcut(_two_objects(), (48, 48), MaskCutConfig(tau=0.5, max_masks=1))) == 1


def test_felzenszwalb_masks_rectangles_and_border_penalty():
    img = np.full((64, 64, 3), 30, np.uint8)
    img[10:30, 20:44] = (220, 40, 40)
    img[40:58, 6:20] = (40, 200, 60)
    r = felzenszwalb_masks(img, (128, 128), FelzenszwalbConfig(scale=500, min_size=20, sigma=0.0))
    assert r.masks.shape[1:] == (128, 128) and r.embeddings.shape == (len(r), 0)
    top2 = r.masks[:2].float()
    assert sorted(int(m.sum()) for m in top2) == [4 * 18 * 14, 4 * 20 * 24]  # the objects first, upsampled
    assert r.scores[-1] <= 0.5  # the background touches every side: penalised
    assert (r.scores[:-1] >= r.scores[1:]).all()


def test_felzenszwalb_object_filters_and_area_score():
    """min_area_frac drops fragments, max_sides the background, score='area' ranks the larger object first."""
    img = np.full((64, 64, 3), 30, np.uint8)
    img[10:30, 20:44] = (220, 40, 40)  # 480 px
    img[40:58, 6:20] = (40, 200, 60)  # 252 px
    img[50:53, 50:53] = (240, 240, 0)  # a 9 px fragment
    base = dict(scale=500, min_size=4, sigma=0.0, min_area=4)
    every = felzenszwalb_masks(img, (64, 64), FelzenszwalbConfig(**base))
    areas = sorted(int(m.sum()) for m in every.masks)
    assert 9 in areas and max(areas) > 3000  # the fragment and the background are candidates by default
    kept = felzenszwalb_masks(img, (64, 64), FelzenszwalbConfig(**base, min_area_frac=0.01, max_sides=1))
    assert sorted(int(m.sum()) for m in kept.masks) == [252, 480]
    by_area = felzenszwalb_masks(img, (64, 64), FelzenszwalbConfig(**base, min_area_frac=0.01, max_sides=1, score="area"))
    assert [int(m.sum()) for m in by_area.masks] == [480, 252]
    assert by_area.scores[0] == pytest.approx((480 / 64 ** 2) ** 0.5)  # fill 1, no border penalty
    for bad in (["score=size"], ["max_sides=5"], ["min_area_frac=1.5"]):
        with pytest.raises(UnsoloError, match="felzenszwalb"):
            build_generator("felzenszwalb", "small", bad)
    assert build_generator("felzenszwalb", "objects", []).cfg.max_sides < 4


def test_registry_and_generator_objects():
    assert set(GENERATORS) == {"freemask", "maskcut", "felzenszwalb"}
    assert get_generator("freemask") is FreeMask and MaskCut.uses_backbone and not Felzenszwalb.uses_backbone
    assert FreeMask().cfg == FreeMaskConfig() and MaskCut(MaskCutConfig(tau=0.3)).cfg.tau == 0.3
    with pytest.raises(UnsoloError, match="unknown pseudo-mask generator"):
        get_generator("sam")
    with pytest.raises(TypeError, match="takes a MaskCutConfig"):
        MaskCut(FreeMaskConfig())
    gen = build_generator("maskcut", "small", ["tau=0.3"])
    assert isinstance(gen, MaskCut) and (gen.cfg.short_side, gen.cfg.tau) == (600, 0.3)
    with pytest.raises(UnsoloError, match="tauu"):
        build_generator("maskcut", None, ["tauu=0.3"])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    imgs = d / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 4):
        a = np.full((64, 80, 3), rng.integers(0, 255, 3), np.uint8)
        for _ in range(2):
            y, x = rng.integers(0, 44), rng.integers(0, 56)
            a[y : y + 18, x : x + 22] = rng.integers(0, 255, 3)
        Image.fromarray(a).save(imgs / f"{i:06d}.png")
    torch.manual_seed(0)
    weights = d / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    return imgs, weights


def test_cli_generators_write_the_same_format(images, tmp_path, capsys):
    imgs, weights = images
    out = tmp_path / "fz.json"
    assert main(["freemask", str(imgs), "--generator", "felzenszwalb", "--preset", "small", "--out", str(out),
                 "--workers", "0"]) == 0  # no backbone needed
    fz = json.loads(out.read_text())
    assert len(fz["images"]) == 3 and fz["annotations"] and "emb" not in fz["annotations"][0]
    assert {"segmentation", "bbox", "score", "area"} <= set(fz["annotations"][0])
    assert {"scale", "sigma", "border_penalty"} <= set(yaml.safe_load((tmp_path / "fz.config.yaml").read_text()))
    out = tmp_path / "mc.json"
    assert main(["freemask", str(imgs), "--generator", "maskcut", "--weights", str(weights), "--arch", "resnet18",
                 "--out", str(out), "--workers", "0", "--chunk-size", "2", "--set", "short_side=128",
                 "--set", "tau=0.5"]) == 0
    mc = json.loads(out.read_text())
    assert mc["annotations"] and len(mc["annotations"][0]["emb"]) == 128
    assert max(sum(a["image_id"] == im["id"] for a in mc["annotations"]) for im in mc["images"]) <= 3
    # bad input: one-line errors
    assert main(["freemask", str(imgs), "--generator", "maskcut", "--out", str(tmp_path / "x.json")]) == 2
    assert main(["freemask", str(imgs), "--generator", "felzenszwalb", "--official-bbox",
                 "--out", str(tmp_path / "x.json")]) == 2
    assert main(["freemask", str(imgs), "--generator", "felzenszwalb", "--set", "tau=0.5",
                 "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "--weights is required for maskcut" in err and "official-bbox" in err and "tau" in err
