"""The distillation loss of eqs. 6-7: objectness-scaled, zero for an identical teacher."""

from __future__ import annotations

import copy

import pytest
import torch

from d3n_ext.distill import DistillOptions, distillation_terms, load_teacher
from models.loading import save_model
from models.yolo import Model
from utils.hyp import Hyp
from utils.loss import ComputeLoss


def _raw(model, x):
    return model.train()(x)


def test_teacher_equal_to_student_gives_zero_distillation(tiny_cfg):
    student = Model(tiny_cfg)
    teacher = copy.deepcopy(student)
    x = torch.rand(2, 3, 64, 64)
    terms = distillation_terms(_raw(student, x), [t.detach() for t in _raw(teacher, x)])
    assert torch.equal(terms, torch.zeros(3))
    kl = distillation_terms(_raw(student, x), _raw(teacher, x), "kl")  # log-softmax rounding only
    torch.testing.assert_close(kl, torch.zeros(3), atol=1e-5, rtol=0)


def _maps(seed: int, obj_logit: float | None = None) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(2, 3, n, n, 8, generator=g) for n in (8, 4, 2)]
    if obj_logit is not None:
        for m in maps:
            m[..., 4] = obj_logit
    return maps


def test_background_only_teacher_gives_no_cls_or_box_gradient():
    student = [m.requires_grad_() for m in _maps(0)]
    teacher = _maps(1, obj_logit=-200.0)  # sigmoid underflows to exactly 0: "no object anywhere"
    box, obj, cls = distillation_terms(student, teacher)
    (box + cls).backward(retain_graph=True)
    assert all(torch.count_nonzero(s.grad) == 0 for s in student)
    obj.backward()  # objectness is always distilled (eq. 7): the student learns "background"
    assert all(torch.count_nonzero(s.grad[..., 4]) > 0 for s in student)
    assert all(torch.count_nonzero(s.grad[..., :4]) == 0 and torch.count_nonzero(s.grad[..., 5:]) == 0 for s in student)


def test_confident_teacher_teaches_boxes_and_classes():
    student, teacher = _maps(0), _maps(1, obj_logit=20.0)
    box, obj, cls = distillation_terms(student, teacher)
    expected_box = sum(((s[..., :4] - t[..., :4]) ** 2).mean() for s, t in zip(student, teacher))
    torch.testing.assert_close(box, expected_box)
    assert cls > 0 and obj > 0


def test_obj_scaled_option_scales_objectness_by_teacher_confidence():
    student, teacher = _maps(0), _maps(1, obj_logit=-200.0)
    assert distillation_terms(student, teacher, obj_scaled=True)[1] == 0
    assert distillation_terms(student, teacher, obj_scaled=False)[1] > 0


def test_temperature_changes_only_the_kl_variant():
    student, teacher = _maps(0), _maps(1, obj_logit=3.0)
    l2 = [distillation_terms(student, teacher, "l2", t) for t in (1.0, 20.0)]
    kl = [distillation_terms(student, teacher, "kl", t) for t in (1.0, 20.0)]
    assert torch.equal(l2[0], l2[1])
    assert not torch.allclose(kl[0][2], kl[1][2])


def test_options_are_checked():
    with pytest.raises(ValueError, match="--dist-loss 'l1'"):
        DistillOptions("t.pt", "repo", dist_loss="l1")
    with pytest.raises(ValueError, match="--temperature"):
        DistillOptions("t.pt", "repo", temperature=0)


def test_feature_term_is_zero_for_equal_maps_and_scale_free():
    from d3n_ext.distill import feature_term

    maps = _maps(0)
    assert feature_term(maps, maps).item() == 0.0
    shifted = [m + 1 for m in maps]
    scaled = feature_term([10 * m for m in shifted], [10 * m for m in maps])
    torch.testing.assert_close(scaled, feature_term(shifted, maps))  # relative to the teacher's energy


def test_feature_hook_sees_what_detect_reads(tiny_cfg):
    from d3n_ext.distill import DetectInputs

    model = Model(tiny_cfg).train()
    hook = DetectInputs(model.detect)
    raw = model(torch.rand(1, 3, 64, 64))
    assert [m.shape[-2:] for m in hook.maps] == [r.shape[2:4] for r in raw]
    assert [m.shape[1] for m in hook.maps] == [conv.in_channels for conv in model.detect.m]


def test_a_teacher_with_other_anchors_is_refused(tiny_cfg):
    from d3n_ext.distill import check_same_head

    student = Model(tiny_cfg)
    teacher = copy.deepcopy(student)
    check_same_head(student, teacher, "t.pt")
    teacher.detect.anchors.mul_(1.5)
    with pytest.raises(ValueError, match=r"t.pt: the teacher's anchors .* differ from the student's"):
        check_same_head(student, teacher, "t.pt")


def test_the_loaded_teacher_is_folded_for_speed_and_predicts_what_its_checkpoint_does(tiny_cfg, tmp_path):
    """The frozen teacher runs forward only: BatchNorms folded, NHWC weights; raw maps equal up to rounding."""
    model = Model(tiny_cfg).eval()
    for m in model.modules():  # BatchNorms with statistics of their own, so that folding has work to do
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
    save_model(tmp_path / "teacher.pt", model, model)  # the EMA is what a teacher loads
    teacher = load_teacher(tmp_path / "teacher.pt", torch.device("cpu"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    conv = next(m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for got, want in zip(teacher(x)[1], model(x)[1], strict=True):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
