"""NMS keeps the same boxes with torchvision's kernel and with the pure-torch fallback."""

from __future__ import annotations

import pytest
import torch

from utils import nms as nms_module
from utils.nms import nms, nms_torch, non_max_suppression


def _random_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    wh = torch.rand(n, 2, generator=g) * 60 + 2
    scores = torch.rand(n, generator=g)
    scores[: n // 10] = scores[n // 10: 2 * (n // 10)]  # some exact ties
    return torch.cat((xy, xy + wh), 1), scores


@pytest.mark.skipif(nms_module._TORCHVISION_NMS is None, reason="torchvision ops unusable here")
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("iou", [0.3, 0.45, 0.7])
def test_fallback_keeps_exactly_torchvisions_indices(seed, iou):
    boxes, scores = _random_boxes(300, seed)
    assert torch.equal(nms(boxes, scores, iou, use_torchvision=False), nms(boxes, scores, iou, use_torchvision=True))


def test_fallback_suppresses_overlaps_by_score():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float32)
    assert nms_torch(boxes, torch.tensor([0.5, 0.9, 0.3]), 0.5).tolist() == [1, 2]


def test_runs_where_torchvision_ops_do_not_load(monkeypatch):
    monkeypatch.setattr(nms_module, "_TORCHVISION_NMS", None)
    pred = torch.zeros(1, 3, 7)  # xywh, obj, 2 classes
    pred[0, :, :4] = torch.tensor([[50, 50, 20, 20], [51, 51, 20, 20], [150, 150, 20, 20]])
    pred[0, :, 4] = 0.9
    pred[0, :, 5] = torch.tensor([0.9, 0.8, 0.7])
    out = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.45)[0]
    assert out.shape == (2, 6) and out[:, 4].tolist() == pytest.approx([0.81, 0.63])


def test_class_aware_vs_agnostic_and_max_det():
    pred = torch.zeros(1, 2, 7)
    pred[0, :, :4] = torch.tensor([[50, 50, 20, 20], [51, 51, 20, 20]])
    pred[0, :, 4] = 1.0
    pred[0, 0, 5], pred[0, 1, 6] = 0.9, 0.8  # same place, different classes
    assert len(non_max_suppression(pred, 0.25, 0.45)[0]) == 2
    assert len(non_max_suppression(pred, 0.25, 0.45, agnostic=True)[0]) == 1
    assert len(non_max_suppression(pred, 0.25, 0.45, max_det=1)[0]) == 1
    assert non_max_suppression(pred, 0.25, 0.45, classes=[1])[0][:, 5].tolist() == [1.0]


@pytest.mark.parametrize("multi_label", [False, True])
def test_mask_coefficients_ride_along_and_never_score_as_classes(multi_label):
    pred = torch.zeros(1, 3, 5 + 2 + 4)  # xywh, obj, 2 classes, 4 coefficients
    pred[0, :, :4] = torch.tensor([[50, 50, 20, 20], [51, 51, 20, 20], [150, 150, 20, 20]])
    pred[0, :, 4] = 0.9
    pred[0, :, 5] = torch.tensor([0.9, 0.8, 0.7])
    pred[0, :, 7:] = torch.arange(12.0).view(3, 4) + 5  # large enough to win any class max
    out = non_max_suppression(pred, 0.25, 0.45, multi_label=multi_label, nm=4)[0]
    assert out.shape == (2, 10)
    assert out[:, 5].tolist() == [0.0, 0.0]
    assert out[:, 6:].tolist() == (pred[0, [0, 2], 7:]).tolist()
    empty = non_max_suppression(torch.zeros(2, 3, 11), 0.25, 0.45, nm=4)
    assert [tuple(e.shape) for e in empty] == [(0, 10), (0, 10)]


def test_more_coefficients_than_columns_is_refused():
    with pytest.raises(ValueError, match="cannot hold"):
        non_max_suppression(torch.zeros(1, 3, 8), nm=4)


@pytest.mark.parametrize("use_torchvision", [False, True])
@pytest.mark.parametrize("n, max_det", [(3000, 300), (3000, 10), (500, 300), (40, 300), (0, 300)])
def test_nms_over_a_prefix_keeps_the_first_max_det_of_the_full_run(use_torchvision, n, max_det):
    if use_torchvision and nms_module._TORCHVISION_NMS is None:
        pytest.skip("torchvision ops unusable here")
    boxes, scores = _random_boxes(n, n + max_det)
    boxes = boxes / 3 + torch.arange(n).remainder(7)[:, None] * 20  # clusters: heavy and light suppression
    order = scores.sort(descending=True, stable=True).indices
    boxes, scores = boxes[order], scores[order]
    full = nms(boxes, scores, 0.5, use_torchvision)
    assert len(full) > max_det or n < 1000  # the big cases do stop early
    assert torch.equal(nms_module.nms_first(boxes, scores, 0.5, max_det, use_torchvision), full[:max_det])
