"""Distillation of segmenters (paper Table IV): the class term leaves the mask coefficients out, the coefficient
term scales by the teacher's objectness, and train_distill.py distils a seg teacher into a seg student."""

from __future__ import annotations

import csv

import pytest
import torch

import train_distill
from d3n_ext.distill import coefficient_term, distillation_terms
from models.loading import save_model
from models.yolo import Model
from tests.segment_fixtures import NAMES, write_tiny_seg_yaml
from utils.checkpoints import load_checkpoint

NM = 4


def _maps(seed: int, obj: float = 5.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(2, 3, 4, 4, 5 + len(NAMES) + NM, generator=g)
    m[..., 4] = obj
    return [m]


def test_coefficients_are_not_classes_and_have_their_own_term():
    teacher, student = _maps(0), _maps(1)
    same_classes = [s.clone() for s in student]
    same_classes[0][..., 5:5 + len(NAMES)] = teacher[0][..., 5:5 + len(NAMES)]
    assert distillation_terms(same_classes, teacher, nm=NM)[2] == 0  # coefficients differ, the class term is 0
    assert coefficient_term(student, teacher, NM) > 0
    same_coefficients = [t.clone() for t in teacher]
    same_coefficients[0][..., :-NM] = student[0][..., :-NM]  # boxes, objectness and classes differ
    assert coefficient_term(same_coefficients, teacher, NM) == 0
    background = _maps(0, obj=-30.0)
    assert coefficient_term(student, background, NM) < 1e-9  # where the teacher sees nothing, nothing to copy


def _flags(teacher, data, tmp_path, cfg, *extra) -> list[str]:
    return ["--teacher", str(teacher), "--cfg", str(cfg), "--data", str(data), "--imgsz", "64", "--batch-size", "4",
            "--epochs", "1", "--workers", "0", "--project", str(tmp_path), "--noplots", "--quiet", "--dist-lambda",
            "0.1", "--noautoanchor", *extra]


def test_a_seg_teacher_distils_into_a_seg_student(trained_segmenter, tmp_path):
    trainer, data = trained_segmenter
    teacher = trainer.save_dir / "weights" / "best.pt"
    cfg = write_tiny_seg_yaml(tmp_path / "student.yaml")
    run = train_distill.main(_flags(teacher, data, tmp_path, cfg, "--dist-proto", "0.5", "--name", "student"))
    ckpt = load_checkpoint(run / "weights" / "last.pt")
    assert ckpt["train_opts"]["task"] == "distill-seg"
    assert ckpt["train_opts"]["task_state"]["dist_proto"] == 0.5 and ckpt["train_opts"]["task_state"]["mask_ratio"] == 4
    with open(run / "results.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert float(row["train/dist_loss"]) > 0 and float(row["train/seg_loss"]) > 0 and "metrics/mAP_0.5(M)" in row


def test_a_detector_student_of_a_seg_teacher_is_refused_in_one_line(trained_segmenter, tmp_path):
    trainer, data = trained_segmenter
    with pytest.raises(SystemExit) as e:
        train_distill.main(_flags(trainer.save_dir / "weights" / "best.pt", data, tmp_path, "yolov5n.yaml"))
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message and "Segment head" in message


def test_a_seg_student_of_a_detection_teacher_is_refused_in_one_line(trained_segmenter, tmp_path):
    _, data = trained_segmenter
    detector = tmp_path / "detector.pt"
    model = Model("yolov5n.yaml", nc=len(NAMES))
    model.names = list(NAMES)
    save_model(detector, model)
    with pytest.raises(SystemExit) as e:
        train_distill.main(_flags(detector, data, tmp_path, write_tiny_seg_yaml(tmp_path / "s.yaml")))
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message and "Segment head" in message
