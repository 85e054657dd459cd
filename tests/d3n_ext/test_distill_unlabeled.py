"""Distillation on unlabelled images: they get the distillation terms only, never YOLOv5's ground-truth loss."""

from __future__ import annotations

import copy

import pytest
import torch

from d3n_ext.distill import DistillationTask, DistillOptions, labelled_loss
from models.yolo import Model
from utils.dataloaders import UNLABELED, join_batches
from utils.hyp import Hyp
from utils.loss import ComputeLoss


def _task(model: Model, teacher: Model, weight: float = 1.0) -> DistillationTask:
    task = DistillationTask(DistillOptions("teacher.pt", unlabeled_share=0.5, unlabeled_weight=weight))
    task.teacher = teacher.eval()
    task.compute_loss = ComputeLoss(model, Hyp(), 64)
    return task


def _pair(tiny_cfg) -> tuple[Model, Model]:
    torch.manual_seed(0)
    student = Model(tiny_cfg)
    torch.manual_seed(1)
    return student, Model(tiny_cfg)


def test_an_unlabelled_image_contributes_only_the_distillation_term(tiny_cfg):
    student, teacher = _pair(tiny_cfg)
    task = _task(student, teacher)
    img = torch.rand(1, 3, 64, 64)
    no_boxes = torch.zeros(0, 6)
    preds = student.train()(img)
    loss, items = task.loss(preds, no_boxes, img, {UNLABELED: torch.ones(1)})
    assert torch.equal(items[:3], torch.zeros(3))  # box, obj, cls: nothing from ground truth
    assert items[3] > 0 and torch.allclose(loss, items[3])  # the whole loss is the distillation term
    as_labelled, items_l = task.loss(preds, no_boxes, img, {UNLABELED: torch.zeros(1)})
    assert items_l[1] > 0  # the same image taken as labelled: "no defect here" would be taught (objectness)
    torch.testing.assert_close(as_labelled - items_l[:3].sum(), loss)


def test_unlabeled_weight_scales_only_unlabelled_images(tiny_cfg):
    student, teacher = _pair(tiny_cfg)
    imgs = torch.rand(2, 3, 64, 64)
    preds = student.train()(imgs)
    flags = torch.tensor([0.0, 1.0])
    full = _task(student, teacher, 1.0).loss(preds, torch.zeros(0, 6), imgs, {UNLABELED: flags})[1][3]
    none = _task(student, teacher, 0.0).loss(preds, torch.zeros(0, 6), imgs, {UNLABELED: flags})[1][3]
    first = _task(student, teacher, 1.0).loss([p[:1] for p in preds], torch.zeros(0, 6), imgs[:1], {})[1][3]
    torch.testing.assert_close(none, first)  # weight 0: as if the unlabelled image were not there
    assert full > none


def test_ground_truth_loss_sees_the_labelled_images_with_their_own_indices(tiny_cfg):
    model = Model(tiny_cfg)
    compute = ComputeLoss(model, Hyp(), 64)
    imgs = torch.rand(3, 3, 64, 64)
    preds = model.train()(imgs)
    targets = torch.tensor([[1, 0, 0.5, 0.5, 0.3, 0.3]])  # a box on image 1
    flags = torch.tensor([1.0, 0.0, 1.0])  # images 0 and 2 unlabelled
    loss, items = labelled_loss(compute, preds, targets, flags)
    alone, items_alone = compute([p[1:2] for p in preds], torch.tensor([[0, 0, 0.5, 0.5, 0.3, 0.3]]))
    torch.testing.assert_close(loss, alone)
    torch.testing.assert_close(items, items_alone)


def test_joined_batch_keeps_labelled_first_and_flags_the_rest():
    labelled = (torch.zeros(2, 3, 8, 8), torch.tensor([[1, 0, 0.5, 0.5, 0.1, 0.1]]), ("a", "b"), (None, None),
                {"p3": torch.zeros(2, 4, 1, 1)})
    unlabeled = (torch.ones(3, 3, 8, 8), torch.zeros(0, 6), ("c", "d", "e"), (None,) * 3, {"p3": torch.ones(3, 4, 1, 1)})
    imgs, targets, paths, _, extras = join_batches(labelled, unlabeled)
    assert imgs.shape[0] == 5 and paths == ("a", "b", "c", "d", "e")
    assert torch.equal(targets, labelled[1])
    assert extras[UNLABELED].tolist() == [0, 0, 1, 1, 1] and extras["p3"][2:].eq(1).all()
    with pytest.raises(ValueError, match="differ in size"):
        join_batches(labelled, (torch.ones(1, 3, 16, 16), *unlabeled[1:]))


def test_unlabelled_share_sets_the_images_per_batch():
    share = lambda s: DistillationTask(DistillOptions("t.pt", unlabeled_share=s)).unlabeled_batch(16)  # noqa: E731
    assert (share(0.0), share(0.5), share(0.2)) == (0, 16, 4)
    with pytest.raises(ValueError, match="--unlabeled-share 1"):
        DistillOptions("t.pt", unlabeled_share=1.0)


def test_identical_teacher_gives_zero_loss_on_unlabelled_images(tiny_cfg):
    student, _ = _pair(tiny_cfg)
    task = _task(student, copy.deepcopy(student))
    img = torch.rand(1, 3, 64, 64)
    raw = student.eval()(img)[1]  # the teacher runs in eval mode: compare like with like
    loss, _ = task.loss(raw, torch.zeros(0, 6), img, {UNLABELED: torch.ones(1)})
    assert loss.item() == 0
