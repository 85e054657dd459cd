"""pipeline --weights: the baseline, the teacher's detector part and both students start from one file (the
paper's setting: YOLOv5 weights), ours or an ultralytics/yolov5 checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

import d3n_ext  # noqa: F401  (registers the teacher's blocks)
from d3n_ext.experiments.pipeline import PipelineOptions, teacher_weights, train_options
from models.loading import read_detector_checkpoint, transfer_weights
from models.yolo import Model, load_model_yaml
from tests.models.yolov5_files import genuine


def test_every_stage_starts_from_the_weights():
    p = PipelineOptions(weights="yolov5n.pt")
    assert [train_options(p, name, p.cfg).weights for name in ("baseline", "self-distilled", "student")] == \
        ["yolov5n.pt"] * 3
    assert teacher_weights(p, Path("runs/x/baseline")) == "yolov5n.pt"
    warm = PipelineOptions(weights="yolov5n.pt", teacher_init="baseline")
    assert teacher_weights(warm, Path("runs/x/baseline")) == str(Path("runs/x/baseline/weights/best.pt"))
    assert train_options(PipelineOptions(), "baseline", "yolov5n.yaml").weights == ""


def test_the_teacher_takes_every_detector_tensor_of_an_imported_file():
    state = read_detector_checkpoint(genuine("det-git-best"))["state_dict"]  # a stripped file: the EMA
    cfg = load_model_yaml("yolov5n-d3n-lite.yaml")[0]
    cfg.update(width_multiple=1 / 128, nc=3)  # the fixture's scale
    teacher = Model(cfg)
    loaded, total, _ = transfer_weights(teacher, state)
    assert loaded == len(state) < total  # the fusion rows stay as initialised
    assert torch.equal(teacher.state_dict()[f"model.{len(teacher.model) - 1}.m.0.weight"], state["model.24.m.0.weight"])
