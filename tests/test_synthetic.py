import hashlib
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from unsolo.cli import main
from unsolo.data.coco import decode_segmentation
from unsolo.data.synthetic import (
    CATEGORIES,
    FAMILIES,
    SceneConfig,
    generate,
    png_bytes,
    render_scene,
    scene_rng,
    shape_mask,
)


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted((folder / "images").iterdir()):
        h.update(p.name.encode() + p.read_bytes())
    h.update((folder / "annotations.json").read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "set"
    assert main(["synth", str(out), "--num-images", "12", "--size", "96", "--seed", "5"]) == 0
    return out


def test_same_seed_same_bytes_and_order_independent(synth_set, tmp_path):
    again = tmp_path / "again"
    generate(again, 12, 96, seed=5)
    assert _digest(again) == _digest(synth_set)
    # image i depends only on (seed, i): a shorter set is a prefix of the longer one
    short = tmp_path / "short"
    generate(short, 3, 96, seed=5)
    for name in ("000001.png", "000003.png"):
        assert (short / "images" / name).read_bytes() == (synth_set / "images" / name).read_bytes()


def test_workers_give_the_same_set(synth_set, tmp_path):
    par = tmp_path / "par"
    generate(par, 12, 96, seed=5, workers=2)
    assert _digest(par) == _digest(synth_set)


def test_different_seeds_differ(synth_set, tmp_path):
    other = tmp_path / "other"
    generate(other, 12, 96, seed=6)
    a = (synth_set / "images" / "000001.png").read_bytes()
    b = (other / "images" / "000001.png").read_bytes()
    assert a != b
    assert json.loads((other / "annotations.json").read_text())["annotations"] != json.loads(
        (synth_set / "annotations.json").read_text()
    )["annotations"]


def test_annotations_consistent_with_masks(synth_set):
    coco = json.loads((synth_set / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(FAMILIES)
    assert [img["file_name"] for img in coco["images"]] == [f"{i:06d}.png" for i in range(1, 13)]
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for img in coco["images"]:
        image, masks, cats = render_scene(scene_rng(5, img["id"]), 96)
        assert png_bytes(image) == (synth_set / "images" / img["file_name"]).read_bytes()
        anns = by_image.get(img["id"], [])
        assert len(anns) == len(masks) and [a["category_id"] for a in anns] == cats.tolist()
        decoded = np.stack([decode_segmentation(a["segmentation"], 96, 96) for a in anns]).astype(bool)
        np.testing.assert_array_equal(decoded, masks)
        assert (masks.sum(axis=(1, 2)) >= SceneConfig.min_visible_area).all()  # non-empty, not tiny
        assert masks.sum(axis=0).max() <= 1  # visible parts are disjoint
        for a, m in zip(anns, masks):
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert a["area"] == m.sum() and a["iscrowd"] == 0
    # pycocotools reads it
    gt = COCO(str(synth_set / "annotations.json"))
    assert len(gt.getImgIds()) == 12 and len(gt.getAnnIds()) == len(coco["annotations"])


def test_families_and_sizes_over_a_set():
    cats, areas = set(), []
    for i in range(40):
        _, masks, c = render_scene(scene_rng(0, i), 192)
        cats.update(c.tolist())
        areas.extend(masks.sum(axis=(1, 2)).tolist())
    assert cats == {c["id"] for c in CATEGORIES}
    a = np.array(areas)
    assert (a < 32**2).any() and ((a >= 32**2) & (a < 96**2)).any()  # small and medium objects


def test_shape_masks_have_the_expected_extent():
    rng = np.random.default_rng(0)
    for fam in FAMILIES:
        m = shape_mask(rng, fam, 64, 64, 32.0, 32.0, 20.0)
        ys, xs = np.nonzero(m)
        assert m.sum() > 50, fam
        assert ys.min() >= 11 and ys.max() <= 52 and xs.min() >= 11 and xs.max() <= 52, fam
    ring = shape_mask(np.random.default_rng(1), "ring", 64, 64, 32.0, 32.0, 20.0)
    assert not ring[31:33, 31:33].any()  # the hole


def test_aspect_jitter_and_pixel_sizes():
    img, masks, _ = render_scene(scene_rng(0, 1), 128, SceneConfig(aspect_jitter=0.5))
    assert img.shape[1] == 128 and img.dtype == np.uint8 and masks.shape[1:] == img.shape[:2]
    shapes = {render_scene(scene_rng(0, i), 128, SceneConfig(aspect_jitter=0.5))[0].shape[0] for i in range(5)}
    assert len(shapes) > 1
    img, masks, _ = render_scene(scene_rng(0, 1), (40, 70))
    assert img.shape == (40, 70, 3) and masks.shape[1:] == (40, 70)


@pytest.mark.parametrize("args,needle", [(["--num-images", "0"], "--num-images"), (["--size", "31"], "--size")])
def test_bad_input_one_line_error(tmp_path, capsys, args, needle):
    assert main(["synth", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err


def test_photographic_backgrounds_are_deterministic_and_keep_exact_masks(tmp_path):
    """`--background photo`: crops of scikit-image's photographs under the same synthetic objects; same seed, same
    bytes; the masks are those of the painted objects: non-empty and disjoint."""

    for run in ("a", "b"):
        assert main(["synth", str(tmp_path / run), "--num-images", "3", "--size", "96", "--seed", "4",
                     "--background", "photo"]) == 0
    a, b = (sorted((tmp_path / r / "images").iterdir()) for r in ("a", "b"))
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    coco = json.loads((tmp_path / "a" / "annotations.json").read_text())
    assert coco["info"]["background"] == "photo" and coco["annotations"]
    photo = SceneConfig(background="photo")
    img_p, masks_p, _ = render_scene(scene_rng(4, 1), 96, photo)
    img_t, _, _ = render_scene(scene_rng(4, 1), 96, SceneConfig())
    assert not np.array_equal(img_p, img_t)
    assert masks_p.any(axis=(1, 2)).all() and not (masks_p.sum(0) > 1).any()  # non-empty, disjoint
    with pytest.raises(SystemExit) as exc:  # argparse: a usage error, exit status 2
        main(["synth", str(tmp_path / "c"), "--num-images", "1", "--background", "nope"])
    assert exc.value.code == 2
