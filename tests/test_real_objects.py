"""Real-object scenes (`unsolo synth --objects DIR --backgrounds DIR`): cut-outs made here, in tmp_path."""

import hashlib
import json
import logging

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from unsolo.cli import main
from unsolo.data.coco import decode_segmentation
from unsolo.data.real_objects import (
    ALPHA_THRESHOLD,
    ObjectSceneConfig,
    compose,
    find_cutouts,
    generate_object_scenes,
    is_heldout,
    object_scene_rng,
    read_cutout,
    render_object_scene,
    split_sources,
)


def _cutout(size, colour, soft=True):
    """RGBA ``(size, size, 4)``: an opaque disc, a soft ring (alpha 100, below the threshold) around it."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2)
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = np.where(r <= size * 0.35, 255, np.where((r <= size * 0.45) & soft, 100, 0))
    return rgba


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ro")
    objs, bgs = root / "objects", root / "photos"
    rng = np.random.default_rng(0)
    for k in range(12):
        sub = objs / ("a" if k % 2 else "b") / ("deep" if k % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_cutout(24 + 2 * k, rng.integers(0, 256, 3))).save(sub / f"thing{k:02d}.png")
    (bgs / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(bgs / "noise.png")
    grad = np.linspace(0, 255, 80 * 60 * 3).reshape(60, 80, 3).astype(np.uint8)
    Image.fromarray(grad).save(bgs / "sub" / "grad.jpg", quality=90)
    return objs, bgs


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted((folder / "images").iterdir()):
        h.update(p.name.encode() + p.read_bytes())
    h.update((folder / "annotations.json").read_bytes())
    return h.hexdigest()


def test_compose_masks_are_the_visible_thresholded_alpha_and_later_objects_occlude():
    bg = np.full((40, 40, 3), 10.0, np.float32)
    low = np.zeros((20, 20, 4), np.uint8)
    low[..., :3], low[..., 3] = (200, 0, 0), 255
    low[:, :2, 3] = ALPHA_THRESHOLD - 1  # a soft left edge: pasted, not part of the mask
    low[:, 2, 3] = ALPHA_THRESHOLD  # exactly the threshold: part of the mask
    high = np.zeros((20, 20, 4), np.uint8)
    high[..., :3], high[..., 3] = (0, 200, 0), 255
    hidden = np.zeros((6, 6, 4), np.uint8)
    hidden[..., 3] = 255  # below the top object: fully covered
    edge = np.zeros((20, 20, 4), np.uint8)
    edge[..., :3], edge[..., 3] = (0, 0, 200), 255  # partly outside the frame
    layers = [(low, 5, 5), (hidden, 22, 22), (high, 15, 15), (edge, 30, -2)]
    img, masks, kept = compose(bg, layers, min_visible_area=16, min_visible_fraction=0.2)
    assert kept == [0, 2, 3]
    want_low = np.zeros((40, 40), bool)
    want_low[5:25, 7:25] = True
    want_low[15:25, 15:25] = False  # covered by the later green square
    want_high = np.zeros((40, 40), bool)
    want_high[15:35, 15:35] = True
    want_high[30:35, 15:18] = False  # covered by the blue square, which comes later
    want_edge = np.zeros((40, 40), bool)
    want_edge[30:40, 0:18] = True
    np.testing.assert_array_equal(masks, np.stack([want_low, want_high, want_edge]))
    assert masks.sum(0).max() == 1
    np.testing.assert_allclose(img[20, 20], (0, 200, 0))  # the top object's colour where it covers the lower one
    np.testing.assert_allclose(img[10, 10], (200, 0, 0))
    a = (ALPHA_THRESHOLD - 1) / 255.0
    np.testing.assert_allclose(img[10, 5], (10 + (200 - 10) * a, 10 * (1 - a), 10 * (1 - a)), rtol=1e-5)
    assert (img[0, :] == 10).all() and (img[:5, 30:] == 10).all()  # untouched background


def test_a_hidden_or_tiny_object_is_neither_pasted_nor_annotated():
    bg = np.zeros((30, 30, 3), np.float32)
    small = np.zeros((3, 3, 4), np.uint8)
    small[..., 0], small[..., 3] = 255, 255
    img, masks, kept = compose(bg, [(small, 2, 2)], min_visible_area=16)
    assert kept == [] and masks.shape == (0, 30, 30) and not img.any()


def test_read_cutout_crops_to_the_object_and_reads_grey_and_palette_alpha(tmp_path):
    rgba = _cutout(30, (10, 20, 30))
    Image.fromarray(rgba).save(tmp_path / "c.png")
    cut = read_cutout(tmp_path / "c.png")
    obj = rgba[..., 3] >= ALPHA_THRESHOLD
    ys, xs = np.nonzero(obj)
    assert cut.shape == (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1, 4)
    Image.fromarray(rgba).convert("LA").save(tmp_path / "grey.png")
    assert read_cutout(tmp_path / "grey.png").shape == cut.shape
    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (2, 2, 6, 8))
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    assert read_cutout(tmp_path / "pal.png").shape == (6, 4, 4)


def test_same_seed_same_bytes_workers_and_prefix(inputs, tmp_path):
    objs, bgs = inputs
    kw = dict(objects=[objs], backgrounds=[bgs], size=64, seed=3)
    generate_object_scenes(tmp_path / "a", 6, **kw)
    generate_object_scenes(tmp_path / "b", 6, workers=2, **kw)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    generate_object_scenes(tmp_path / "short", 2, **kw)
    assert (tmp_path / "short/images/000002.png").read_bytes() == (tmp_path / "a/images/000002.png").read_bytes()
    generate_object_scenes(tmp_path / "c", 6, **{**kw, "seed": 4})
    assert (tmp_path / "c/images/000001.png").read_bytes() != (tmp_path / "a/images/000001.png").read_bytes()


def test_annotations_are_the_rendered_visible_masks(inputs, tmp_path):
    objs, bgs = inputs
    coco = generate_object_scenes(tmp_path / "s", 8, [objs], [bgs], size=64, seed=1)
    assert coco["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    assert coco["info"]["alpha_threshold"] == 128 and len(coco["info"]["objects"]) == 12
    paths = [s.path for s in find_cutouts([objs])]
    photos = sorted(str(p) for p in bgs.rglob("*.*"))
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    counts = []
    for img in coco["images"]:
        image, masks, which = render_object_scene(object_scene_rng(1, img["id"]), 64, paths, photos)
        assert np.array_equal(np.asarray(Image.open(tmp_path / "s/images" / img["file_name"])), image)
        anns = by_image.get(img["id"], [])
        assert [a["object"] for a in anns] == [coco["info"]["objects"][k] for k in which]
        if anns:
            got = np.stack([decode_segmentation(a["segmentation"], 64, 64) for a in anns]).astype(bool)
            np.testing.assert_array_equal(got, masks)
            assert masks.sum(0).max() == 1 and (masks.sum((1, 2)) >= ObjectSceneConfig.min_visible_area).all()
        counts.append(len(anns))
    assert max(counts) >= 2  # scenes with several objects
    assert len(COCO(str(tmp_path / "s/annotations.json")).getAnnIds()) == len(coco["annotations"])


def test_object_split_is_disjoint_deterministic_and_by_file_name(inputs, tmp_path):
    objs, bgs = inputs
    sources = find_cutouts([objs])
    train, held = split_sources(sources, "train", 0.3), split_sources(sources, "heldout", 0.3)
    assert {s.name for s in train}.isdisjoint({s.name for s in held}) and len(train) + len(held) == len(sources)
    assert train and held
    assert is_heldout("x/y/Owl.PNG", 0.5) == is_heldout("other/owl.png", 0.5)  # base name, case-folded
    for split, names in (("train", train), ("heldout", held)):
        coco = generate_object_scenes(tmp_path / split, 5, [objs], [bgs], size=48, seed=0, split=split,
                                      heldout_fraction=0.3)
        assert set(coco["info"]["objects"]) == {s.name for s in names}
        assert {a["object"] for a in coco["annotations"]} <= {s.name for s in names}
    # same seed, other split: other scenes (another random stream)
    a, b = ((tmp_path / s / "images/000001.png").read_bytes() for s in ("train", "heldout"))
    assert a != b


def _err(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def test_cli_writes_a_set_and_bad_inputs_are_one_line_errors(inputs, tmp_path, capsys, caplog):
    objs, bgs = inputs
    base = ["synth", str(tmp_path / "out"), "--num-images", "2", "--size", "48"]
    assert main([*base, "--objects", str(objs / "a"), "--objects", str(objs / "b"), "--backgrounds", str(bgs),
                 "--exclude", "*/deep/*", "--object-split", "train", "--max-objects", "3"]) == 0
    coco = json.loads((tmp_path / "out/annotations.json").read_text())
    assert coco["info"]["split"] == "train" and not any("/deep/" in n for n in coco["info"]["objects"])
    capsys.readouterr()
    empty, rgb, opaque, mixed = (tmp_path / n for n in ("empty", "rgb", "opaque", "mixed"))
    for d in (empty, rgb, opaque, mixed):
        d.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(rgb / "x.png")
    Image.new("RGBA", (8, 8), (1, 2, 3, 255)).save(opaque / "x.png")
    Image.fromarray(_cutout(20, (9, 9, 9))).save(mixed / "good.png")
    (mixed / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.new("RGB", (8, 8)).save(mixed / "flat.png")
    cases = [
        (["--objects", str(empty), "--backgrounds", str(bgs)], "no cut-out"),
        (["--objects", str(rgb), "--backgrounds", str(bgs)], "no alpha channel"),
        (["--objects", str(opaque), "--backgrounds", str(bgs)], "opaque everywhere"),
        (["--objects", str(tmp_path / "nope"), "--backgrounds", str(bgs)], "not found"),
        (["--objects", str(objs), "--backgrounds", str(empty)], "no images"),
        (["--objects", str(objs)], "--backgrounds"),
        (["--objects", str(objs), "--backgrounds", str(bgs), "--object-split", "heldout",
          "--heldout-fraction", "1.5"], "--heldout-fraction"),
        (["--objects", str(objs), "--backgrounds", str(bgs), "--aspect-jitter", "0.2"], "--aspect-jitter"),
        (["--scale-range", "0.1", "0.3"], "--scale-range"),  # procedural scenes: not an option of theirs
        (["--object-split", "train"], "--object-split"),
    ]
    for args, needle in cases:
        assert main([*base, *args]) == 2, args
        line = _err(capsys)
        assert line.startswith("unsolo synth: error:") and needle in line, (args, line)
    with caplog.at_level(logging.WARNING, logger="unsolo.synth"):  # single bad files: a warning, then skipped
        assert main([*base, "--objects", str(mixed), "--backgrounds", str(bgs)]) == 0
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "broken.png" in warned and "flat.png" in warned and "good.png" not in warned
    assert json.loads((tmp_path / "out/annotations.json").read_text())["info"]["objects"] == ["mixed/good.png"]
