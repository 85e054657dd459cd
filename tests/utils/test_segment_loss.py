"""The segmentation loss: detection terms unchanged, the mask term reaches zero on a perfect mask, weighs
like YOLOv5's (box gain, per box area), and agrees between overlap and per-instance masks."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml

from models.yolo import Model
from utils.hyp import Hyp
from utils.loss import ComputeLoss
from utils.segment_loss import ComputeSegmentLoss, instance_numbers

IMGSZ = 64  # prototypes 16 x 16


@pytest.fixture(scope="module")
def seg_model() -> Model:
    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "models" / "yolov5n-seg.yaml").read_text())
    cfg.update(nc=3)
    torch.manual_seed(0)
    return Model(cfg).train()


def _targets() -> torch.Tensor:
    """Two images: image 0 holds a big and a small box, image 1 one box (normalised xywh)."""
    return torch.tensor([[0, 0, 0.5, 0.5, 0.75, 0.75], [0, 1, 0.3, 0.3, 0.25, 0.25], [1, 2, 0.6, 0.4, 0.5, 0.5]])


def _overlap_masks() -> torch.Tensor:
    """(2, 16, 16) instance numbers: rectangles inside each box, the small one on top of the big one."""
    masks = torch.zeros(2, 16, 16, dtype=torch.int32)
    masks[0, 3:13, 3:13] = 1
    masks[0, 3:6, 3:6] = 2
    masks[1, 4:9, 6:13] = 1
    return masks


def _per_instance(overlap: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.stack([(overlap[int(img)] == k).to(torch.uint8)
                        for img, k in zip(targets[:, 0], instance_numbers(targets))])


def test_instance_numbers_count_rows_within_each_image():
    targets = torch.zeros(6, 6)
    targets[:, 0] = torch.tensor([0, 0, 1, 0, 2, 2])
    assert instance_numbers(targets).tolist() == [1, 2, 1, 3, 1, 2]
    assert instance_numbers(torch.zeros(0, 6)).tolist() == []


def test_matches_name_the_target_row_they_train(seg_model):
    loss = ComputeLoss(seg_model, Hyp(), IMGSZ)
    raw, _ = seg_model(torch.zeros(2, 3, IMGSZ, IMGSZ))
    targets = _targets()
    m = loss.build_targets(raw, targets)
    for level, rows in enumerate(m.rows):
        assert len(rows) == len(m.indices[level][0])
        assert torch.equal(targets[rows, 1].long(), m.tcls[level])
        assert torch.equal(targets[rows, 0].long(), m.indices[level][0])


def test_detection_terms_are_compute_loss_on_the_box_channels(seg_model):
    torch.manual_seed(1)
    raw, protos = seg_model(torch.rand(2, 3, IMGSZ, IMGSZ))
    targets = _targets()
    detection = ComputeLoss(seg_model, Hyp(), IMGSZ)
    _, items = ComputeSegmentLoss(detection)((raw, protos), targets, _overlap_masks())
    _, det_items = detection([r[..., :5 + 3] for r in raw], targets)
    torch.testing.assert_close(items[[0, 2, 3]], det_items)


def _perfect_predictions(seg_model, targets: torch.Tensor, overlap: torch.Tensor):
    """Raw maps whose matched coefficients pick prototype k for target k; prototype k = +/-20 on its mask."""
    raw, protos = seg_model(torch.zeros(2, 3, IMGSZ, IMGSZ))
    raw, protos = [torch.zeros_like(r) for r in raw], torch.full_like(protos, -20.0)
    m = ComputeLoss(seg_model, Hyp(), IMGSZ).build_targets(raw, targets)
    per_instance = _per_instance(overlap, targets)
    for k, img in enumerate(targets[:, 0].long()):
        protos[img, k][per_instance[k] > 0] = 20.0
    for r, (b, a, gj, gi), rows in zip(raw, m.indices, m.rows):
        r[b, a, gj, gi, 5 + 3 + rows] = 1.0
    return raw, protos


def test_a_perfect_mask_costs_nothing_and_an_undecided_one_log_2(seg_model):
    targets, overlap = _targets(), _overlap_masks()
    loss = ComputeSegmentLoss(ComputeLoss(seg_model, Hyp(), IMGSZ))
    raw, protos = _perfect_predictions(seg_model, targets, overlap)
    assert loss((raw, protos), targets, overlap)[1][1] < 1e-6
    undecided = [r.clone() for r in raw]
    for r in undecided:
        r[..., 8:] = 0  # logits 0: BCE log 2 on every pixel of every box
    levels_with_matches = 3  # every target matches some anchor on every level at this size
    expected = loss.gains.box / 2 * levels_with_matches * 2 * math.log(2)  # two images, box-area normalised
    assert loss((undecided, protos), targets, overlap)[1][1].item() == pytest.approx(expected, rel=0.1)


def test_overlap_and_per_instance_masks_give_the_same_loss(seg_model):
    torch.manual_seed(2)
    raw, protos = seg_model(torch.rand(2, 3, IMGSZ, IMGSZ))
    targets, overlap = _targets(), _overlap_masks()
    detection = ComputeLoss(seg_model, Hyp(), IMGSZ)
    a = ComputeSegmentLoss(detection, overlap=True)((raw, protos), targets, overlap)
    b = ComputeSegmentLoss(detection, overlap=False)((raw, protos), targets, _per_instance(overlap, targets))
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


def test_mask_term_scales_with_the_box_gain_and_trains_coefficients_and_prototypes(seg_model):
    torch.manual_seed(3)
    model = copy.deepcopy(seg_model)
    raw, protos = model(torch.rand(2, 3, IMGSZ, IMGSZ))
    targets, overlap = _targets(), _overlap_masks()
    base = ComputeSegmentLoss(ComputeLoss(model, Hyp(), IMGSZ))((raw, protos), targets, overlap)[1]
    doubled = ComputeSegmentLoss(ComputeLoss(model, Hyp(box=0.1), IMGSZ))((raw, protos), targets, overlap)[1]
    torch.testing.assert_close(doubled[:2], base[:2] * 2)
    total, _ = ComputeSegmentLoss(ComputeLoss(model, Hyp(box=0, obj=0, cls=0), IMGSZ))((raw, protos), targets,
                                                                                      overlap)
    assert total.item() == 0  # with all gains 0 nothing is left, the mask term included
    total, _ = ComputeSegmentLoss(ComputeLoss(model, Hyp(obj=0, cls=0), IMGSZ))((raw, protos), targets, overlap)
    total.backward()
    assert model.detect.proto.cv3.conv.weight.grad.abs().sum() > 0
    assert model.detect.m[0].weight.grad.view(3, 5 + 3 + 32, -1)[:, 8:].abs().sum() > 0
