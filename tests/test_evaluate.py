import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage

from unsolo.cli import main
from unsolo.data.coco import decode_segmentation, instance_records
from unsolo.data.synthetic import generate
from unsolo.evaluation import METRIC_NAMES, evaluate


@pytest.fixture(scope="module")
def gt_path(tmp_path_factory):
    """Synthetic GT (10 images, 96 px) with two instances turned into crowd regions."""
    root = tmp_path_factory.mktemp("evalgt")
    coco = generate(root / "set", 10, 96, seed=11)
    coco["annotations"][1]["iscrowd"] = 1
    coco["annotations"][7]["iscrowd"] = 1
    path = root / "gt.json"
    path.write_text(json.dumps(coco))
    return path


def _gt(gt_path):
    return json.loads(gt_path.read_text())


def _reference(gt_path, preds, iou_type="segm", use_cats=0):
    """pycocotools run directly, as tools/eval_cocoapi.py does."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(copy.deepcopy(preds))
        ev = COCOeval(gt, dt, iou_type)
        ev.params.useCats = use_cats
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


def _perturbed(gt, seed, with_bbox):
    """Jittered masks (shift, dilate, erode), random scores, some misses and false positives."""
    rng = np.random.default_rng(seed)
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    preds = []
    for a in gt["annotations"]:
        if rng.random() < 0.15:
            continue  # a miss
        h, w = sizes[a["image_id"]]
        m = decode_segmentation(a["segmentation"], h, w).astype(bool)
        op = rng.integers(4)
        if op == 0:
            m = np.roll(m, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
        elif op == 1:
            m = ndimage.binary_dilation(m, iterations=int(rng.integers(1, 4)))
        elif op == 2:
            m = ndimage.binary_erosion(m, iterations=1)
        if m.any():
            preds += instance_records(a["image_id"], m[None], scores=[float(rng.random())],
                                      category_ids=[int(rng.integers(1, 7))])
    for im in gt["images"]:  # false positives: random boxes
        m = np.zeros((im["height"], im["width"]), dtype=bool)
        y, x = rng.integers(0, im["height"] - 20), rng.integers(0, im["width"] - 20)
        m[y:y + int(rng.integers(4, 20)), x:x + int(rng.integers(4, 20))] = True
        preds += instance_records(im["id"], m[None], scores=[float(rng.random()) * 0.5], category_ids=[1])
    if not with_bbox:
        for p in preds:
            del p["bbox"]
    for p in preds:
        for k in ("area", "iscrowd"):
            p.pop(k)
    return preds


def _check(result, expected):
    assert result["stats"] == expected  # to the last digit
    assert [result[n] for n in METRIC_NAMES] == expected
    for n, v in zip(METRIC_NAMES, expected):
        assert result["percent"][n] == (None if v < 0 else round(100 * v, 1))


def test_perfect_predictions_score_100(gt_path):
    gt = _gt(gt_path)
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
              "score": 1.0} for a in gt["annotations"] if not a["iscrowd"]]
    r = evaluate(gt_path, preds)
    _check(r, _reference(gt_path, preds))
    assert r["AP"] == 1.0 and r["AR100"] == 1.0


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
@pytest.mark.parametrize("with_bbox", [True, False])
def test_noisy_predictions_equal_pycocotools(gt_path, iou_type, with_bbox):
    preds = _perturbed(_gt(gt_path), seed=3, with_bbox=with_bbox)
    r = evaluate(gt_path, preds, iou_type=iou_type)
    expected = _reference(gt_path, preds, iou_type)
    _check(r, expected)
    assert 0.2 < r["AP"] < 0.95  # the set is neither perfect nor hopeless


def test_class_aware_equals_pycocotools_and_differs_from_agnostic(gt_path):
    preds = _perturbed(_gt(gt_path), seed=4, with_bbox=True)
    aware = evaluate(gt_path, preds, class_aware=True)
    _check(aware, _reference(gt_path, preds, use_cats=1))
    agnostic = evaluate(gt_path, preds)
    assert aware["AP"] < agnostic["AP"]  # random categories hurt only class-aware AP


def test_both_types_and_annotation_file_without_scores(gt_path, tmp_path):
    gt = _gt(gt_path)
    pseudo = copy.deepcopy(gt)  # a pseudo-label file: COCO annotations, no score
    pseudo["annotations"] = [a for a in pseudo["annotations"] if not a["iscrowd"]][::2]
    path = tmp_path / "pseudo.json"
    path.write_text(json.dumps(pseudo))
    r = evaluate(gt_path, path, iou_type="both")
    preds = [dict(a, score=1.0) for a in pseudo["annotations"]]
    _check(r["segm"], _reference(gt_path, preds, "segm"))
    _check(r["bbox"], _reference(gt_path, preds, "bbox"))


def test_mixed_boxes_and_polygons(gt_path):
    gt = _gt(gt_path)
    preds = _perturbed(gt, seed=5, with_bbox=True)
    for p in preds[1::2]:
        del p["bbox"]  # pycocotools' loadRes would crash here (first has a box): boxes come from the masks
    r = evaluate(gt_path, preds)
    from unsolo.data.coco import rle_to_xywh

    fixed = [dict(p, bbox=p.get("bbox") or rle_to_xywh(p["segmentation"])) for p in preds]
    _check(r, _reference(gt_path, fixed))
    poly = [{"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": [[10, 10, 40, 10, 40, 40, 10, 40]]}]
    assert evaluate(gt_path, poly)["num_predictions"] == 1


def test_empty_predictions_give_zero(gt_path, tmp_path):
    r = evaluate(gt_path, [])
    assert r["AP"] == 0.0 and r["AR100"] == 0.0 and r["num_predictions"] == 0
    assert all(v in (0.0, -1.0) for v in r["stats"])
    path = tmp_path / "empty.json"
    path.write_text("[]")
    out = tmp_path / "m.json"
    assert main(["evaluate", "--gt", str(gt_path), "--pred", str(path), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["AP"] == 0.0


def test_cli_table_and_json(gt_path, tmp_path, capsys):
    preds = _perturbed(_gt(gt_path), seed=6, with_bbox=False)
    pred_path = tmp_path / "pred.json"
    pred_path.write_text(json.dumps(preds))
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--gt", str(gt_path), "--pred", str(pred_path), "--iou-type", "both", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["segm"]["stats"] == _reference(gt_path, preds, "segm")
    assert f"{saved['segm']['percent']['AP']:.1f}" in text.splitlines()[1]
    assert "AP50" in text.splitlines()[0]


def _one_line_error(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert needle in err and "Traceback" not in err
    return err


def test_bad_inputs(gt_path, tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_perturbed(_gt(gt_path), seed=7, with_bbox=True)))
    _one_line_error(capsys, ["evaluate", "--gt", str(tmp_path / "nope.json"), "--pred", str(good)], "not found")
    _one_line_error(capsys, ["evaluate", "--gt", str(gt_path), "--pred", str(tmp_path / "nope.json")], "not found")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": 1,')
    _one_line_error(capsys, ["evaluate", "--gt", str(gt_path), "--pred", str(bad)], "not valid JSON")
    _one_line_error(capsys, ["evaluate", "--gt", str(bad), "--pred", str(good)], "not valid JSON")
    notcoco = tmp_path / "notcoco.json"
    notcoco.write_text(json.dumps({"foo": []}))
    _one_line_error(capsys, ["evaluate", "--gt", str(notcoco), "--pred", str(good)], "not a COCO annotation file")
    alien = tmp_path / "alien.json"
    preds = json.loads(good.read_text())
    preds[3]["image_id"] = 987654
    alien.write_text(json.dumps(preds))
    _one_line_error(capsys, ["evaluate", "--gt", str(gt_path), "--pred", str(alien)], "987654")
    noseg = tmp_path / "noseg.json"
    preds = json.loads(good.read_text())
    del preds[2]["segmentation"]
    noseg.write_text(json.dumps(preds))
    _one_line_error(capsys, ["evaluate", "--gt", str(gt_path), "--pred", str(noseg)], "segmentation")
    # the same predictions are fine for box evaluation (that one has a box)
    assert main(["evaluate", "--gt", str(gt_path), "--pred", str(noseg), "--iou-type", "bbox"]) == 0
    scalar = tmp_path / "scalar.json"
    scalar.write_text("42")
    _one_line_error(capsys, ["evaluate", "--gt", str(gt_path), "--pred", str(scalar)], "results list")
    nocat = tmp_path / "nocat.json"
    preds = json.loads(good.read_text())
    del preds[0]["category_id"]
    nocat.write_text(json.dumps(preds))
    _one_line_error(capsys, ["evaluate", "--gt", str(gt_path), "--pred", str(nocat), "--class-aware"], "category_id")
    assert main(["evaluate", "--gt", str(gt_path), "--pred", str(nocat)]) == 0  # class-agnostic: pooled


def _renumbered_gt(gt_path, tmp_path, mapping):
    """The same ground truth with its images numbered otherwise (as an annotation tool's export would)."""
    gt = _gt(gt_path)
    for im in gt["images"]:
        im["id"] = mapping(im["id"])
    for a in gt["annotations"]:
        a["image_id"] = mapping(a["image_id"])
    path = tmp_path / "renumbered.json"
    path.write_text(json.dumps(gt))
    return path


@pytest.mark.parametrize("kind", ["shifted", "scrambled"])
def test_predictions_are_matched_to_the_ground_truth_by_file_name(gt_path, tmp_path, kind):
    """Predictions numbered by file name (000002.png -> 2) against a ground truth that numbers the same files
    otherwise: scored against the right images (the same numbers as with matching ids), never silently wrong."""
    gt = _gt(gt_path)
    names = {im["id"]: im["file_name"] for im in gt["images"]}
    preds = _perturbed(gt, 3, with_bbox=True)
    reference = evaluate(str(gt_path), preds)["stats"]
    order = np.random.default_rng(0).permutation(len(names))
    n = len(names)  # shifted by one, cyclically: every id exists in both, each names another image
    mapping = (lambda i: i % n + 1) if kind == "shifted" else (lambda i: 1000 + int(order[i - 1]))
    other = _renumbered_gt(gt_path, tmp_path, mapping)
    named = [{**p, "file_name": names[p["image_id"]]} for p in preds]
    res = evaluate(str(other), named)
    assert res["stats"] == pytest.approx(reference)
    m = res["image_matching"]
    assert m["by"] == "file_name" and m["renumbered"] == len(preds) and m["predictions_not_in_gt"] == 0
    # without file names the ids are trusted: the same predictions score against the wrong images or fail
    if kind == "shifted":
        assert evaluate(str(other), preds)["stats"][0] < reference[0] - 0.2
    else:
        with pytest.raises(Exception, match="absent from the ground truth"):
            evaluate(str(other), preds)


def test_predictions_on_images_the_ground_truth_lacks_are_counted_and_left_out(gt_path, caplog):
    gt = _gt(gt_path)
    names = {im["id"]: im["file_name"] for im in gt["images"]}
    preds = [{**p, "file_name": names[p["image_id"]]} for p in _perturbed(gt, 4, with_bbox=False)]
    extra = [{**preds[0], "file_name": "elsewhere/999999.png", "image_id": 999999}] * 3
    res = evaluate(str(gt_path), preds + extra)
    assert res["stats"] == pytest.approx(evaluate(str(gt_path), preds)["stats"])
    m = res["image_matching"]
    assert m["predictions_not_in_gt"] == 3 and m["images_not_in_gt"] == 1
    assert "3 prediction(s) on 1 image(s) the ground truth does not list" in caplog.text
    with pytest.raises(Exception, match="no 'file_name'"):
        evaluate(str(gt_path), preds + [{k: v for k, v in preds[0].items() if k != "file_name"}])


def test_cli_predict_then_evaluate_against_a_renumbered_ground_truth(tmp_path, capsys):
    """The issue's case end to end: `unsolo predict FOLDER` (ids from file names) + `unsolo evaluate --gt` with
    a ground truth numbering the same files 1..N shifted: the annotation file's own records (ids in its numbering,
    file names in its images) and the predictions agree."""
    coco = generate(tmp_path / "set", 3, 64, seed=5)
    for im in coco["images"]:
        im["id"] += 10
    for a in coco["annotations"]:
        a["image_id"] += 10
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(coco))
    # the ground truth's own annotations, as a prediction file named by image file: a perfect score
    assert main(["evaluate", "--gt", str(gt), "--pred", str(gt)]) == 0
    out = capsys.readouterr().out
    assert "images matched by file name" in out and " 100.0" in out
