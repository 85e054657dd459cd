"""Mask IoU, mask matching and COCO RLE; mask mAP agrees with pycocotools' segm evaluation."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.masks import (decode_rle_counts, encode_rle_counts, mask_iou, mask_to_rle, match_mask_predictions,
                         rle_to_mask)
from utils.metrics import ap_per_class, match_iou

IOUV = torch.linspace(0.5, 0.95, 10)  # the validator's thresholds
H, W, NC = 48, 64, 3


def test_mask_iou_of_known_overlaps():
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2] = True  # top half, 8 px
    a[1, :, :1] = True  # left column, 4 px
    b = torch.zeros(3, 4, 4, dtype=torch.uint8)
    b[0, :2] = 1  # same as a[0]
    b[1, :] = 1  # everything
    # b[2] empty
    expected = torch.tensor([[1.0, 0.5, 0.0], [2 / 10, 0.25, 0.0]])
    assert torch.allclose(mask_iou(a, b), expected)
    assert mask_iou(torch.zeros(0, 4, 4), b).shape == (0, 3)
    with pytest.raises(ValueError, match="sizes differ"):
        mask_iou(a, torch.zeros(1, 4, 5))


def test_matching_is_one_to_one_per_class_and_threshold():
    gt = torch.zeros(2, 10, 10)
    gt[0, :5, :5] = 1
    gt[1, 5:, 5:] = 1
    pred = torch.zeros(4, 10, 10)
    pred[0, :5, :4] = 1  # IoU 0.8 with gt 0
    pred[1, :5, :5] = 1  # IoU 1.0 with gt 0, lower confidence: COCO gives gt 0 to pred 0
    pred[2, 5:, 5:] = 1  # exact, but the wrong class
    pred[3, 5:, 5:9] = 1  # IoU 0.8 with gt 1
    correct = match_mask_predictions(pred, torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([0, 0, 0, 1]),
                                     gt, torch.tensor([0, 1]), IOUV)
    assert correct.shape == (4, 10)
    assert correct.sum(1).tolist() == [7, 3, 0, 7]  # 0.8 passes 0.50..0.80; pred 1 takes gt 0 where pred 0 cannot
    assert not match_mask_predictions(pred[:0], torch.zeros(0), torch.zeros(0), gt, torch.tensor([0, 1]), IOUV).numel()


def test_rle_of_a_known_mask():
    mask = np.array([[0, 1, 1], [0, 1, 0]], np.uint8)  # column-major: 0 0 1 1 1 0
    assert mask_to_rle(mask, compress=False) == {"size": [2, 3], "counts": [2, 3, 1]}
    ones = np.ones((2, 2), np.uint8)
    assert mask_to_rle(ones, compress=False)["counts"] == [0, 4]  # counts always start with zeros
    for m in (mask, ones, np.zeros((3, 5), np.uint8)):
        np.testing.assert_array_equal(rle_to_mask(mask_to_rle(m)), m)
    counts = [0, 5, 300, 2, 1, 70000, 3]
    assert decode_rle_counts(encode_rle_counts(counts)) == counts  # negative differences too
    with pytest.raises(ValueError, match="counts cover"):
        rle_to_mask({"size": [2, 2], "counts": [1, 2]})


def test_rle_strings_equal_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 40, 2)
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        ref = mask_utils.encode(np.asfortranarray(m))
        assert mask_to_rle(m)["counts"] == ref["counts"].decode("ascii")
        assert mask_to_rle(torch.from_numpy(m))["size"] == list(ref["size"])


def random_instance(rng: np.random.Generator) -> np.ndarray:
    """An ellipse or a rotated rectangle, (H, W) uint8."""
    mask = np.zeros((H, W), np.uint8)
    centre = (int(rng.integers(8, W - 8)), int(rng.integers(8, H - 8)))
    axes = (int(rng.integers(4, 14)), int(rng.integers(3, 10)))
    if rng.random() < 0.5:
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    else:
        corners = cv2.boxPoints((centre, (2 * axes[0], 2 * axes[1]), float(rng.uniform(0, 90))))
        cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1)
    return mask


def noisy_copy(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mask shifted by up to 2 px and grown or shrunk by a pixel: IoU from about 0.4 to 1."""
    dx, dy = rng.integers(-2, 3, 2)
    out = np.roll(mask, (int(dy), int(dx)), (0, 1))
    kernel = np.ones((3, 3), np.uint8)
    change = rng.integers(3)
    return cv2.dilate(out, kernel) if change == 1 else cv2.erode(out, kernel) if change == 2 else out


def synthetic_set(seed: int = 0):
    """8 images: ground truth (masks, classes), predictions (masks, scores, classes) with misses,
    wrong classes and false positives."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(8):
        gt = [random_instance(rng) for _ in range(int(rng.integers(1, 5)))]
        gt_cls = rng.integers(0, NC, len(gt))
        pred, conf, pred_cls = [], [], []
        for m, c in zip(gt, gt_cls):
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):  # missed, found, found twice
                pred.append(noisy_copy(m, rng))
                pred_cls.append(int(c) if rng.random() > 0.15 else int((c + 1) % NC))
                conf.append(float(rng.uniform(0.05, 1.0)))
        for _ in range(int(rng.integers(0, 3))):  # false positives
            pred.append(random_instance(rng))
            pred_cls.append(int(rng.integers(NC)))
            conf.append(float(rng.uniform(0.05, 1.0)))
        images.append((np.array(gt), gt_cls, np.array(pred).reshape(-1, H, W), np.array(conf), np.array(pred_cls)))
    return images


def our_map(images):
    stats = []
    for gt, gt_cls, pred, conf, pred_cls in images:
        correct = match_mask_predictions(torch.from_numpy(pred), torch.from_numpy(conf), torch.from_numpy(pred_cls),
                                         torch.from_numpy(gt), torch.from_numpy(gt_cls), IOUV)
        stats.append((correct.numpy(), conf, pred_cls, gt_cls))
    correct, conf, pred_cls, gt_cls = (np.concatenate(x) for x in zip(*stats))
    return ap_per_class(correct, conf, pred_cls, gt_cls)


def coco_map(images, tmp_path: Path) -> tuple[float, float]:
    """pycocotools' segm mAP@0.5:0.95 and mAP@0.5, from JSON files written with our RLE encoder
    (ground truth as uncompressed counts, results compressed, as each side is written in practice)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_json = {"images": [{"id": i + 1, "height": H, "width": W} for i in range(len(images))],
               "categories": [{"id": c} for c in range(NC)], "annotations": []}
    results = []
    for i, (gt, gt_cls, pred, conf, pred_cls) in enumerate(images):
        for m, c in zip(gt, gt_cls):
            gt_json["annotations"].append({"id": len(gt_json["annotations"]) + 1, "image_id": i + 1, "iscrowd": 0,
                                           "category_id": int(c), "area": int(m.sum()),
                                           "segmentation": mask_to_rle(m, compress=False)})
        results += [{"image_id": i + 1, "category_id": int(c), "score": float(s), "segmentation": mask_to_rle(m)}
                    for m, s, c in zip(pred, conf, pred_cls)]
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    (tmp_path / "results.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(tmp_path / "gt.json"))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(tmp_path / "results.json")), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0]), float(evaluator.stats[1])


@pytest.mark.parametrize("seed", [0, 1])
def test_mask_map_agrees_with_pycocotools_segm(tmp_path: Path, seed: int):
    """Same matching as COCOeval ("conf", the validator's), same 101-point AP on the same masks (our
    RLE round-trips exactly), so the figures agree to float rounding: measured below 1e-15 over 12
    seeds; 1e-6 leaves room for summation order. (The box cross-check in test_validator allows 0.01
    because predictions.json rounds boxes and scores; here nothing is rounded.)"""
    pytest.importorskip("pycocotools")
    images = synthetic_set(seed)
    ours = our_map(images)
    coco_map_, coco_map50 = coco_map(images, tmp_path)
    assert 0.1 < ours.map < ours.map50 < 0.95  # a genuinely partial result
    assert ours.map50 == pytest.approx(coco_map50, abs=1e-6)
    assert ours.map == pytest.approx(coco_map_, abs=1e-6)


def test_mask_iou_in_chunks_equals_the_whole(monkeypatch):
    from utils import masks as masks_module

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 20, 30, generator=g) > 0.5, torch.rand(7, 20, 30, generator=g) > 0.5
    whole = mask_iou(a, b)
    monkeypatch.setattr(masks_module, "IOU_CHUNK_VALUES", 2 * 600)  # two masks of 20 x 30 per chunk
    assert torch.allclose(mask_iou(a, b), whole) and mask_iou(a, b[:0]).shape == (3, 0)


@pytest.mark.parametrize("strategy", ["conf", "iou"])
def test_matching_only_same_class_pairs_equals_matching_on_every_pair(strategy: str):
    """Validation computes mask IoU only within a class; the flags equal those from the full IoU matrix."""
    g = torch.Generator().manual_seed(0)
    boxes = torch.randint(0, 40, (30, 2), generator=g)
    masks = torch.zeros(30, 64, 64, dtype=torch.bool)
    for k, (x, y) in enumerate(boxes.tolist()):
        masks[k, y:y + 8 + k % 16, x:x + 10 + k % 12] = True
    gt, pred = masks[:8], torch.cat([masks[:8], masks[8:], masks[:8].roll(2, 2)])  # hits, strays, near misses
    gt_cls = torch.randint(0, 3, (8,), generator=g).float()
    pred_cls = torch.cat([gt_cls, torch.randint(0, 3, (30,), generator=g).float()])
    conf = torch.rand(len(pred), generator=g)
    full = match_iou(mask_iou(gt, pred), gt_cls, pred_cls, conf, IOUV, strategy)
    assert full.any() and torch.equal(match_mask_predictions(pred, conf, pred_cls, gt, gt_cls, IOUV, strategy), full)
