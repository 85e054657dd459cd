"""AutoAnchor: recall is measured with the loss's matching rule, and poor anchors get replaced."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from models.yolo import Model
from utils.autoanchor import anchor_fitness, best_possible_recall, check_anchors, dataset_box_sizes, kmean_anchors

DEFAULT_ANCHORS = np.array([[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119],
                            [116, 90], [156, 198], [373, 326]], dtype=float)


def _scratches(n: int, seed: int = 0) -> np.ndarray:
    """(n, 2) long thin boxes, 200-400 x 3-6 px: no default anchor reaches them."""
    rng = np.random.default_rng(seed)
    return np.stack((rng.uniform(200, 400, n), rng.uniform(3, 6, n)), 1)


def _labels_from_wh(wh: np.ndarray, per_image: int, size: float, seed: int = 0) -> list[np.ndarray]:
    """Normalised [cls, x, y, w, h] label arrays for square images of `size` pixels."""
    rng = np.random.default_rng(seed)
    rows = np.column_stack((np.zeros(len(wh)), rng.uniform(0.3, 0.7, (len(wh), 2)), wh / size))
    return [rows[i:i + per_image] for i in range(0, len(rows), per_image)]


def test_bpr_is_one_for_boxes_equal_to_the_anchors():
    bpr, aat = best_possible_recall(DEFAULT_ANCHORS, DEFAULT_ANCHORS, thr=4.0)
    assert bpr == 1.0 and aat >= 1.0
    far = DEFAULT_ANCHORS[:3] / 5  # 5x smaller than the smallest anchor: out of reach at thr 4
    assert best_possible_recall(far, DEFAULT_ANCHORS[6:], thr=4.0) == (0.0, 0.0)
    assert best_possible_recall(_scratches(50), DEFAULT_ANCHORS, thr=4.0)[0] == 0.0


def test_kmeans_returns_n_anchors_sorted_by_area_and_is_deterministic():
    wh = _scratches(300)
    a = kmean_anchors(wh, n=6, thr=4.0, gen=200, seed=0)
    assert a.shape == (6, 2)
    assert np.all(np.diff(a.prod(1)) >= 0)
    np.testing.assert_array_equal(a, kmean_anchors(wh, n=6, thr=4.0, gen=200, seed=0))
    assert not np.array_equal(a, kmean_anchors(wh, n=6, thr=4.0, gen=200, seed=1))
    assert best_possible_recall(wh, a, 4.0)[0] == 1.0


def test_evolution_never_lowers_the_kmeans_fitness():
    rng = np.random.default_rng(3)
    wh = np.concatenate((_scratches(100), rng.uniform(10, 60, (100, 2))))
    start = kmean_anchors(wh, n=4, gen=0, seed=0)
    evolved = kmean_anchors(wh, n=4, gen=300, seed=0)
    assert anchor_fitness(wh, evolved, 4.0) >= anchor_fitness(wh, start, 4.0)


def test_too_few_boxes_fall_back_to_random_anchors(caplog):
    with caplog.at_level(logging.WARNING, logger="utils.autoanchor"):
        a = kmean_anchors(np.array([[20.0, 30.0], [40.0, 10.0], [1.0, 1.0]]), n=9, gen=50, seed=0)
    assert a.shape == (9, 2) and np.all(a >= 2.0)
    assert "fewer than 9 anchors" in caplog.text and "smaller than 3 pixels" in caplog.text
    with pytest.raises(ValueError, match="no box"):
        kmean_anchors(np.array([[1.0, 1.0]]), n=3)


@pytest.fixture()
def model() -> Model:
    torch.manual_seed(0)
    return Model("yolov5n.yaml", nc=2)


def test_check_anchors_keeps_anchors_that_fit(model, caplog):
    rng = np.random.default_rng(0)
    wh = DEFAULT_ANCHORS[rng.integers(0, 9, 200)] * rng.uniform(0.8, 1.25, (200, 2))  # near the defaults
    labels = _labels_from_wh(wh, per_image=5, size=640)
    before = model.detect.anchors.clone()
    with caplog.at_level(logging.INFO, logger="utils.autoanchor"):
        assert check_anchors(labels, np.full((len(labels), 2), 640.0), model, imgsz=640) is False
    assert torch.equal(model.detect.anchors, before)
    assert "good fit" in caplog.text


def test_check_anchors_replaces_anchors_that_miss_the_boxes(model, caplog):
    wh = _scratches(200)
    labels = _labels_from_wh(wh, per_image=5, size=1280)  # 1280 px originals, trained at 640
    shapes = np.full((len(labels), 2), 1280.0)
    d = model.detect
    model.eval()
    model(torch.zeros(1, 3, 64, 64))  # fills the decoder's anchor-grid cache with the old anchors
    with caplog.at_level(logging.INFO, logger="utils.autoanchor"):
        assert check_anchors(labels, shapes, model, imgsz=640) is True
    assert "Anchors replaced" in caplog.text
    anchors_px = (d.anchors * d.stride.view(-1, 1, 1)).view(-1, 2).numpy()  # stored in stride units
    wh_at_640 = wh / 2
    new_bpr = best_possible_recall(wh_at_640, anchors_px, 4.0)[0]
    assert new_bpr > 0.98 and new_bpr > best_possible_recall(wh_at_640, DEFAULT_ANCHORS, 4.0)[0]
    area = anchors_px.prod(1)
    assert np.all(np.diff(area) >= 0)  # smallest anchors on the finest level
    decoded, raw = model(torch.zeros(1, 3, 64, 64))
    expected_wh = (raw[0][0, 0, 0, 0, 2:4].sigmoid() * 2) ** 2 * torch.from_numpy(anchors_px[0])
    assert torch.allclose(decoded[0, 0, 2:4], expected_wh.float())  # eval decodes with the new anchors


def test_scale_mode_sizes_boxes_of_wide_images_as_stretched_not_letterboxed():
    """GC10-DET-like 2048x1000 images: under --scale a box's w and h scale by imgsz/W and imgsz/H separately."""
    rows = np.array([[0, 0.5, 0.5, 0.05, 0.3], [1, 0.3, 0.6, 0.2, 0.1]])  # normalised [cls, x, y, w, h]
    labels, shapes = [rows, rows], np.array([[2048.0, 1000.0], [2048.0, 1000.0]])
    stretched = dataset_box_sizes(labels, shapes, 640, seed=0, stretch=True)
    letterboxed = dataset_box_sizes(labels, shapes, 640, seed=0)
    factor = np.random.default_rng(0).uniform(0.9, 1.1, size=(2, 1)).repeat(2, 0)  # per image, as the function
    np.testing.assert_allclose(stretched, np.tile(rows[:, 3:5], (2, 1)) * 640 * factor)  # 640x640 canvas
    np.testing.assert_allclose(letterboxed, np.tile(rows[:, 3:5], (2, 1)) * [640, 312.5] * factor)  # 640x312.5


def test_check_anchors_in_scale_mode_judges_the_stretched_boxes(model):
    """Anchors that fit the letterboxed boxes of 2048x1000 images exactly miss the same boxes stretched (2x taller)."""
    rng = np.random.default_rng(1)
    wh_norm = np.column_stack((rng.uniform(0.095, 0.105, 200), rng.uniform(0.19, 0.21, 200)))
    labels = [np.column_stack((np.zeros(5), np.full((5, 2), 0.5), wh_norm[i:i + 5])) for i in range(0, 200, 5)]
    shapes = np.full((len(labels), 2), [2048.0, 1000.0])
    d = model.detect
    d.anchors[:] = torch.tensor([64.0, 62.5]) / d.stride.view(-1, 1, 1)  # the letterboxed box size, in pixels
    assert check_anchors(labels, shapes, model, thr=1.5, imgsz=640) is False  # letterbox: a perfect fit, kept
    assert check_anchors(labels, shapes, model, thr=1.5, imgsz=640, stretch=True) is True  # 64 x 128: replaced
    anchors_px = (d.anchors * d.stride.view(-1, 1, 1)).view(-1, 2).numpy()
    stretched = dataset_box_sizes(labels, shapes, 640, stretch=True)
    assert best_possible_recall(stretched, anchors_px, 1.5)[0] > 0.98
