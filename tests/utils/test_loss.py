"""The YOLOv5 loss: matching counts, the anchor_t filter, gains scaling and that it trains a model."""

from __future__ import annotations

import math

import pytest
import torch

from models.yolo import Model
from utils.hyp import Hyp
from utils.loss import ComputeLoss, LossGains, level_balance

IMGSZ = 128  # grids 16, 8, 4 at strides 8, 16, 32


@pytest.fixture(scope="module")
def model() -> Model:
    torch.manual_seed(0)
    return Model("yolov5n.yaml", nc=3).train()


def _zero_preds(model: Model, bs: int = 2, imgsz: int = IMGSZ) -> list[torch.Tensor]:
    d = model.detect
    return [torch.zeros(bs, d.na, imgsz // int(s), imgsz // int(s), d.no) for s in d.stride]


def _target(gx: float, gy: float, w_px: float, h_px: float, grid: int = 16, img: int = 0, cls: int = 1):
    """One (1, 6) target with its centre given in level-0 grid cells and its size in pixels."""
    return torch.tensor([[img, cls, gx / grid, gy / grid, w_px / IMGSZ, h_px / IMGSZ]])


def _matching_anchors(model: Model, level: int, w_px: float, h_px: float, anchor_t: float = 4.0) -> set[int]:
    """The anchors the matching rule should accept, computed independently of the loss code."""
    d = model.detect
    anchors_px = (d.anchors[level] * d.stride[level]).tolist()
    return {a for a, (aw, ah) in enumerate(anchors_px)
            if max(w_px / aw, aw / w_px, h_px / ah, ah / h_px) < anchor_t}


def test_target_in_a_cell_trains_three_cells_per_matching_anchor(model):
    loss = ComputeLoss(model, Hyp(), IMGSZ)
    preds = _zero_preds(model)
    # centre at (5.25, 5.75) cells: nearest edges are the left and the bottom one
    m = loss.build_targets(preds, _target(5.25, 5.75, 10, 13))
    for level in range(3):
        expected = _matching_anchors(model, level, 10, 13)
        b, a, gj, gi = m.indices[level]
        assert len(b) == 3 * len(expected)
        assert set(a.tolist()) == expected
        assert len(m.tbox[level]) == len(m.tcls[level]) == len(m.anchors[level]) == len(b)
    b, a, gj, gi = m.indices[0]
    for anchor in _matching_anchors(model, 0, 10, 13):
        cells = {(j, i) for j, i, k in zip(gj.tolist(), gi.tolist(), a.tolist()) if k == anchor}
        assert cells == {(5, 5), (5, 4), (6, 5)}  # (gj, gi): own, left, below
    # the target box is relative to each cell's corner, inside the reach (-0.5, 1.5) of 2σ - 0.5
    assert m.tbox[0][:, :2].min() >= -0.5 and m.tbox[0][:, :2].max() <= 1.5
    assert torch.equal(m.tcls[0], torch.ones_like(m.tcls[0]))


def test_centred_target_and_grid_border_train_only_their_own_cell(model):
    loss = ComputeLoss(model, Hyp(), IMGSZ)
    centred = loss.build_targets(_zero_preds(model), _target(5.5, 5.5, 10, 13))
    assert len(centred.indices[0][0]) == len(_matching_anchors(model, 0, 10, 13))
    corner = loss.build_targets(_zero_preds(model), _target(0.25, 0.25, 10, 13))  # no cell left of or above it
    assert set(zip(corner.indices[0][2].tolist(), corner.indices[0][3].tolist())) == {(0, 0)}
    assert len(corner.indices[0][0]) == len(_matching_anchors(model, 0, 10, 13))


def test_anchor_t_drops_an_anchor_of_mismatched_size(model):
    # an 8x8 px box is 4.125x narrower than the (33, 23) P3 anchor: dropped at anchor_t 4, kept at 5
    assert _matching_anchors(model, 0, 8, 8) == {0, 1}
    m = ComputeLoss(model, Hyp(), IMGSZ).build_targets(_zero_preds(model), _target(5.25, 5.75, 8, 8))
    assert set(m.indices[0][1].tolist()) == {0, 1}
    assert len(m.indices[2][0]) == 0  # the P5 anchors are all far larger than 8 px
    loose = ComputeLoss(model, Hyp(anchor_t=5.0), IMGSZ).build_targets(_zero_preds(model), _target(5.25, 5.75, 8, 8))
    assert set(loose.indices[0][1].tolist()) == {0, 1, 2}


def _random_targets(n: int, bs: int, nc: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
    return torch.cat((torch.randint(0, bs, (n, 1), generator=g).float(),
                      torch.randint(0, nc, (n, 1), generator=g).float(), xy, wh), 1)


def test_loss_is_finite_and_positive_for_random_predictions(model):
    torch.manual_seed(0)
    preds = [torch.randn_like(p, requires_grad=True) for p in _zero_preds(model, bs=4)]
    total, items = ComputeLoss(model, Hyp(), IMGSZ)(preds, _random_targets(10, 4, 3))
    assert total.shape == (1,) and items.shape == (3,)
    assert torch.isfinite(total).all() and total.item() > 0 and (items > 0).all()
    assert total.item() == pytest.approx(items.sum().item() * 4, rel=1e-5)  # x batch size
    assert not items.requires_grad
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in preds)


def _encode_matches(loss: ComputeLoss, preds: list[torch.Tensor], targets: torch.Tensor) -> None:
    """Write into preds raw values that decode exactly onto every matched target box, objectness on."""
    m = loss.build_targets(preds, targets)
    for p, (b, a, gj, gi), tbox, anchors in zip(preds, m.indices, m.tbox, m.anchors):
        xy = torch.logit((tbox[:, :2] + 0.5) / 2)  # inverse of 2σ - 0.5
        wh = torch.logit((tbox[:, 2:] / anchors).sqrt() / 2)  # inverse of (2σ)^2 * anchor
        p[..., 4] = -12.0  # confident background everywhere ...
        p[b, a, gj, gi, :5] = torch.cat((xy, wh, torch.full_like(xy[:, :1], 12.0)), 1)  # ... object where matched


def test_perfect_prediction_has_lower_box_loss_than_a_shifted_one(model):
    loss = ComputeLoss(model, Hyp(), IMGSZ)
    targets = _target(5.25, 5.75, 20, 30)
    perfect = _zero_preds(model)
    _encode_matches(loss, perfect, targets)
    shifted = [p.clone() for p in perfect]
    for p in shifted:
        p[..., :2] += 1.0
    box_perfect = loss(perfect, targets)[1][0].item()
    box_shifted = loss(shifted, targets)[1][0].item()
    assert box_perfect < 1e-5
    assert box_shifted > box_perfect + 1e-3
    # a perfect box has IoU 1, the objectness target, so confident objectness there costs ~nothing
    assert loss(perfect, targets)[1][1].item() < 1e-3


def test_empty_targets_give_objectness_loss_only(model):
    torch.manual_seed(0)
    preds = [torch.randn_like(p) for p in _zero_preds(model)]
    total, items = ComputeLoss(model, Hyp(), IMGSZ)(preds, torch.zeros(0, 6))
    assert items[0].item() == 0 and items[2].item() == 0
    assert items[1].item() > 0 and total.item() > 0


def test_single_class_model_has_no_class_loss():
    m = Model("yolov5n.yaml", nc=1)
    preds = [torch.randn_like(p) for p in _zero_preds(m)]
    _, items = ComputeLoss(m, Hyp(), IMGSZ)(preds, _random_targets(5, 2, 1))
    assert items[2].item() == 0 and items[0].item() > 0


def test_label_smoothing_and_focal_loss_change_the_terms(model):
    torch.manual_seed(0)
    preds = [torch.randn_like(p) for p in _zero_preds(model)]
    targets = _random_targets(6, 2, 3)
    plain = ComputeLoss(model, Hyp(), IMGSZ)(preds, targets)[1]
    smooth_loss = ComputeLoss(model, Hyp(label_smoothing=0.2), IMGSZ)
    assert (smooth_loss.cp, smooth_loss.cn) == pytest.approx((0.9, 0.1))
    smooth = smooth_loss(preds, targets)[1]
    focal = ComputeLoss(model, Hyp(fl_gamma=1.5), IMGSZ)(preds, targets)[1]
    assert smooth[0] == plain[0] and smooth[2] != plain[2]  # smoothing touches only the class term
    assert focal[1] < plain[1] and focal[2] < plain[2]  # α_t (1 - p_t)^γ <= 0.75 scales BCE down


def test_loss_gains_scale_with_levels_classes_and_image_size():
    g = LossGains.from_hyp(Hyp(), nl=3, nc=6, imgsz=320)
    assert g.box == pytest.approx(0.05, rel=1e-12)
    assert g.cls == pytest.approx(0.5 * 6 / 80, rel=1e-12)  # 0.0375
    assert g.obj == pytest.approx(0.25, rel=1e-12)  # (320 / 640)^2
    assert g.balance == (4.0, 1.0, 0.4)
    assert (g.anchor_t, g.label_smoothing, g.fl_gamma, g.cls_pw, g.obj_pw) == (4.0, 0.0, 0.0, 1.0, 1.0)
    g4 = LossGains.from_hyp(Hyp(), nl=4, nc=80, imgsz=640)
    assert (g4.box, g4.cls, g4.obj) == pytest.approx((0.0375, 0.375, 0.75))
    assert g4.balance == (4.0, 1.0, 0.25, 0.06)
    with pytest.raises(ValueError, match="output levels"):
        level_balance(6)


def test_hyp_is_unchanged_after_use(model):
    hyp = Hyp(label_smoothing=0.1)
    before = hyp.as_dict()
    loss = ComputeLoss(model, hyp, 320)
    loss(_zero_preds(model), _random_targets(4, 2, 3))
    assert hyp.as_dict() == before
    assert loss.gains.obj == pytest.approx(0.25) and hyp.obj == 1.0


def test_bad_target_shape_is_reported(model):
    with pytest.raises(ValueError, match=r"\(n, 6\)"):
        ComputeLoss(model, Hyp(), IMGSZ)(_zero_preds(model), torch.zeros(3, 5))


def test_loss_decreases_when_overfitting_a_tiny_batch():
    torch.manual_seed(0)
    model = Model("yolov5n.yaml", nc=3).train()
    imgs = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 0, 0.3, 0.4, 0.3, 0.4], [0, 2, 0.7, 0.6, 0.2, 0.3], [1, 1, 0.5, 0.5, 0.6, 0.5]])
    loss = ComputeLoss(model, Hyp(), 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)  # YOLOv5's gains are small
    history = []
    for _ in range(20):
        total, _ = loss(model(imgs), targets)
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item())
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < 0.85 * history[0]  # measured: 0.342 -> 0.260

