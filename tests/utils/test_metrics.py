"""mAP must agree with pycocotools, matching must be one-to-one greedy, counts must be exact."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from utils.boxes import box_iou
from utils.metrics import ConfusionMatrix, ap_per_class, fitness, match_predictions

IOUV = torch.linspace(0.5, 0.95, 10)
IMG_W, IMG_H = 640, 480


def _jitter(box: np.ndarray, rng: np.random.Generator, spread: float) -> np.ndarray:
    """Move and resize an xyxy box by `spread` of its size: 0.05 is a good hit, 0.3 a near miss."""
    w, h = box[2] - box[0], box[3] - box[1]
    cx = (box[0] + box[2]) / 2 + rng.normal(0, spread) * w
    cy = (box[1] + box[3]) / 2 + rng.normal(0, spread) * h
    w, h = w * np.exp(rng.normal(0, spread)), h * np.exp(rng.normal(0, spread))
    box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return box.clip(0, [IMG_W, IMG_H, IMG_W, IMG_H])


def _random_box(rng: np.random.Generator) -> np.ndarray:
    w, h = rng.uniform(16, 200), rng.uniform(16, 160)
    x, y = rng.uniform(0, IMG_W - w), rng.uniform(0, IMG_H - h)
    return np.array([x, y, x + w, y + h])


def _make_dataset(seed: int = 0, n_images: int = 16, nc: int = 4, duplicates: float = 0.2):
    """Per image: labels (m, 5) [cls, xyxy] and detections (n, 6) [xyxy, conf, cls].

    Most objects are found (some well, some near misses), some with a wrong class, a fraction
    `duplicates` twice, some are missed, and every image has a few false positives.
    """
    rng = np.random.default_rng(seed)
    data = []
    for _ in range(n_images):
        labels, dets = [], []
        for _ in range(rng.integers(0, 9)):
            c, box = int(rng.integers(0, nc)), _random_box(rng)
            labels.append([c, *box])
            if rng.random() < 0.15:
                continue  # missed
            spread = rng.choice([0.03, 0.1, 0.2])
            pc = c if rng.random() < 0.9 else int(rng.integers(0, nc))
            dets.append([*_jitter(box, rng, spread), rng.uniform(0.3, 1.0), pc])
            if rng.random() < duplicates:
                dets.append([*_jitter(box, rng, 0.15), rng.uniform(0.05, 0.8), c])
        for _ in range(rng.integers(0, 4)):  # false positives
            dets.append([*_random_box(rng), rng.uniform(0.01, 0.6), int(rng.integers(0, nc))])
        data.append((np.array(labels, dtype=np.float64).reshape(-1, 5),
                     np.array(dets, dtype=np.float64).reshape(-1, 6)))
    return data


def _our_map(data, strategy: str = "iou") -> tuple[float, float]:
    stats = []
    for labels, dets in data:
        tp = match_predictions(torch.from_numpy(dets), torch.from_numpy(labels), IOUV, strategy)
        stats.append((tp.numpy(), dets[:, 4], dets[:, 5], labels[:, 0]))
    tp, conf, pred_cls, target_cls = (np.concatenate(x, 0) for x in zip(*stats))
    result = ap_per_class(tp, conf, pred_cls, target_cls)
    return result.map50, result.map


def _coco_map(data, nc: int) -> tuple[float, float]:
    """mAP50 and mAP50-95 from pycocotools on the same boxes (category id = class + 1)."""
    coco_mod = pytest.importorskip("pycocotools.coco")
    eval_mod = pytest.importorskip("pycocotools.cocoeval")
    images, annotations, results = [], [], []
    for image_id, (labels, dets) in enumerate(data, start=1):
        images.append({"id": image_id, "width": IMG_W, "height": IMG_H})
        for c, x1, y1, x2, y2 in labels:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        for x1, y1, x2, y2, conf, c in dets:
            results.append({"image_id": image_id, "category_id": int(c) + 1,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": conf})
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = coco_mod.COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c + 1, "name": str(c)} for c in range(nc)]}
        gt.createIndex()
        evaluator = eval_mod.COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.params.maxDets = [1, 10, 10_000]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (iou, recall, class), area "all"
    present = precision[0, 0] > -1  # classes with labels
    return float(precision[0][:, present].mean()), float(precision[:, :, present].mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_agrees_with_pycocotools(seed):
    """YOLOv5's IoU-greedy matching, on detections that do not share labels, within 0.01."""
    data = _make_dataset(seed, duplicates=0.0)
    map50, map_ = _our_map(data)
    coco50, coco = _coco_map(data, nc=4)
    assert 0.2 < map50 < 0.99  # the data set is neither trivial nor hopeless
    assert map50 == pytest.approx(coco50, abs=0.01)
    assert map_ == pytest.approx(coco, abs=0.01)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conf_matching_reproduces_pycocotools_with_duplicates(seed):
    """With COCO's matching the whole pipeline (matching + 101-point AP) equals COCOeval."""
    data = _make_dataset(seed, duplicates=0.3)
    map50, map_ = _our_map(data, strategy="conf")
    coco50, coco = _coco_map(data, nc=4)
    assert map50 == pytest.approx(coco50, abs=1e-6)
    assert map_ == pytest.approx(coco, abs=1e-6)


def test_matching_strategies_differ_only_on_a_shared_label():
    labels = torch.tensor([[0, 0, 0, 100, 100]], dtype=torch.float32)
    dets = torch.tensor([[0, 0, 100, 60, 0.9, 0],    # confident, IoU 0.6
                         [0, 0, 100, 95, 0.5, 0]])   # less confident, IoU 0.95
    by_iou = match_predictions(dets, labels, IOUV)
    by_conf = match_predictions(dets, labels, IOUV, strategy="conf")
    assert by_iou[:, 0].tolist() == [False, True]
    assert by_conf[:, 0].tolist() == [True, False]
    assert by_conf[:, 3].tolist() == [False, True]  # at IoU 0.65 only the second one qualifies
    with pytest.raises(ValueError, match="strategy"):
        match_predictions(dets, labels, IOUV, strategy="hungarian")


def _reference_greedy(iou: np.ndarray, same_cls: np.ndarray, thr: float) -> set[int]:
    """The textbook loop: take pairs by descending IoU while both ends are free."""
    pairs = sorted(((iou[i, j], i, j) for i, j in zip(*np.nonzero((iou >= thr) & same_cls))),
                   reverse=True)
    used_l, used_d = set(), set()
    for _, i, j in pairs:
        if i not in used_l and j not in used_d:
            used_l.add(i)
            used_d.add(j)
    return used_d


def test_match_predictions_equals_greedy_loop_at_every_threshold():
    for labels, dets in _make_dataset(seed=3, n_images=12, nc=2):
        labels_t, dets_t = torch.from_numpy(labels), torch.from_numpy(dets)
        correct = match_predictions(dets_t, labels_t, IOUV).numpy()
        iou = box_iou(labels_t[:, 1:], dets_t[:, :4]).numpy()
        same_cls = labels[:, :1] == dets[None, :, 5]
        for k, thr in enumerate(IOUV.tolist()):
            expected = _reference_greedy(iou, same_cls, thr)
            assert set(np.nonzero(correct[:, k])[0]) == expected


def test_match_predictions_is_one_to_one_and_class_aware():
    labels = torch.tensor([[0, 0, 0, 100, 100], [1, 200, 200, 300, 300]], dtype=torch.float32)
    dets = torch.tensor([[0, 0, 100, 100, 0.9, 0],       # exact hit
                         [0, 0, 100, 90, 0.95, 0],       # duplicate, IoU 0.9
                         [200, 200, 300, 300, 0.8, 0],   # right place, wrong class
                         [200, 200, 300, 370, 0.7, 1]])  # IoU 1/1.7 = 0.588
    correct = match_predictions(dets, labels, IOUV)
    assert correct[0].all()  # the higher IoU wins the label, whatever its confidence
    assert not correct[1].any()
    assert not correct[2].any()
    assert correct[3].tolist() == [True, True] + [False] * 8
    assert match_predictions(dets[:0], labels, IOUV).shape == (0, 10)
    assert not match_predictions(dets, labels[:0], IOUV).any()


def test_perfect_predictions_give_map_one():
    data = [(labels, np.c_[labels[:, 1:], np.full(len(labels), 0.9), labels[:, 0]])
            for labels, _ in _make_dataset(seed=4)]
    map50, map_ = _our_map(data)
    assert map50 == pytest.approx(1.0) and map_ == pytest.approx(1.0)


def test_no_predictions_give_map_zero():
    data = [(labels, np.zeros((0, 6))) for labels, _ in _make_dataset(seed=5)]
    result = ap_per_class(np.zeros((0, 10), bool), np.zeros(0), np.zeros(0),
                          np.concatenate([labels[:, 0] for labels, _ in data]))
    assert len(result.classes) > 0
    assert (result.map50, result.map, result.mp, result.mr) == (0.0, 0.0, 0.0, 0.0)


def test_ap_result_reports_p_r_at_best_f1():
    # one class, 4 labels; detections by confidence: hit, hit, miss, hit
    tp = np.array([[1], [1], [0], [1]], dtype=bool).repeat(10, 1)
    result = ap_per_class(tp, np.array([0.9, 0.8, 0.7, 0.6]), np.zeros(4), np.zeros(4))
    assert result.classes.tolist() == [0]
    assert result.mp == pytest.approx(0.75, abs=0.02)  # best F1 (0.75) once all are in
    assert result.mr == pytest.approx(0.75, abs=0.02)
    # envelope: P 1 up to R 0.5, 0.75 up to R 0.75, nothing beyond -> (51 + 0.75 * 25) / 101
    assert result.map50 == pytest.approx((51 + 0.75 * 25) / 101)
    # hit, hit, then four false positives: the best F1 (0.67) is at conf 0.8, with P 1 and R 0.5
    tp = np.array([[1], [1], [0], [0], [0], [0]], dtype=bool).repeat(10, 1)
    result = ap_per_class(tp, np.array([0.9, 0.8, 0.5, 0.4, 0.3, 0.2]), np.zeros(6), np.zeros(4))
    assert result.mp == pytest.approx(1.0, abs=0.05)
    assert result.mr == pytest.approx(0.5, abs=0.01)
    assert result.f1[0] == pytest.approx(2 / 3, abs=0.02)


def test_ap_per_class_plots_the_four_curves(tmp_path):
    data = _make_dataset(seed=6, n_images=4)
    labels, dets = data[0] if len(data[0][1]) else data[1]
    tp = match_predictions(torch.from_numpy(dets), torch.from_numpy(labels), IOUV).numpy()
    ap_per_class(tp, dets[:, 4], dets[:, 5], labels[:, 0], plot=True, save_dir=tmp_path,
                 names={0: "crazing", 1: "inclusion"})
    for name in ("PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_confusion_matrix_counts_hand_built_case():
    labels = torch.tensor([[0, 0, 0, 50, 50], [1, 100, 100, 150, 150], [2, 200, 0, 250, 50]],
                          dtype=torch.float32)
    dets = torch.tensor([[0, 0, 50, 50, 0.9, 0],           # correct
                         [100, 100, 150, 150, 0.8, 2],     # label 1 seen as class 2
                         [300, 300, 350, 350, 0.7, 1],     # nothing there
                         [200, 0, 250, 50, 0.1, 2]])       # below conf: label 2 is missed
    cm = ConfusionMatrix(nc=3, conf=0.25, iou_thres=0.45)
    cm.process_batch(dets, labels)
    cm.process_batch(None, labels[:1])  # an image with no detections: its label is missed
    expected = np.zeros((4, 4), dtype=int)  # [predicted, true], index 3 = background
    expected[0, 0] = 1
    expected[2, 1] = 1
    expected[1, 3] = 1
    expected[3, 2] = 1
    expected[3, 0] = 1
    np.testing.assert_array_equal(cm.matrix, expected)
    tp, fp = cm.tp_fp()
    assert tp.tolist() == [1, 0, 0] and fp.tolist() == [0, 1, 1]


def test_confusion_matrix_plot(tmp_path):
    import cv2

    cm = ConfusionMatrix(nc=2)
    cm.matrix[:] = [[5, 1, 2], [0, 3, 1], [1, 0, 0]]
    out = cm.plot(tmp_path, ["scratch", "patch"])
    assert out == tmp_path / "confusion_matrix.png"
    assert cv2.imread(str(out)) is not None


def test_fitness_weights_map():
    x = np.array([[0.9, 0.8, 0.5, 0.3], [0.1, 0.1, 0.6, 0.4]])
    np.testing.assert_allclose(fitness(x), [0.1 * 0.5 + 0.9 * 0.3, 0.1 * 0.6 + 0.9 * 0.4])
