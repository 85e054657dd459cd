"""Every script that takes --weights takes an ultralytics/yolov5 file: detect.py, segment/predict.py, val.py,
torch.hub's custom and train_distill.py --teacher (here the genuine fixtures, 3 classes)."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import detect
import train_distill
import val
from engine.hub import load_custom
from models.loading import imported_yolov5
from segment import predict as segment_predict
from tests.models.yolov5_files import genuine
from tests.scripts.conftest import make_dataset


@pytest.fixture
def three_class_data(tmp_path) -> Path:
    """The synthetic set with its six classes folded onto the fixtures' three."""
    data = make_dataset(tmp_path / "synth", n_train=8, n_val=4, size=64)
    for label in (tmp_path / "synth").rglob("labels/*/*.txt"):
        rows = [r.split() for r in label.read_text().splitlines() if r.strip()]
        label.write_text("".join(f"{int(r[0]) % 3} {' '.join(r[1:])}\n" for r in rows))
    cfg = yaml.safe_load(data.read_text())
    cfg["names"] = ["class0", "class1", "class2"]
    data.write_text(yaml.safe_dump(cfg))
    return data


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8))
    return folder


@pytest.mark.parametrize("script, stem", [(detect, "det-pip-last"), (segment_predict, "seg-git-last")])
def test_prediction_scripts_run_an_imported_file(script, stem, images, tmp_path, caplog):
    imported_yolov5.cache_clear()  # a process announces each file once; earlier tests read these
    with caplog.at_level(logging.INFO):
        out = script.main(["--weights", str(genuine(stem)), "--source", str(images), "--imgsz", "64",
                           "--conf-thres", "0.0", "--project", str(tmp_path / "runs"), "--save-txt"])
    assert "imported ultralytics/yolov5 checkpoint" in caplog.text
    assert (Path(out) / "a.jpg").exists() and (Path(out) / "labels" / "a.txt").read_text().strip()


def test_val_scores_an_imported_file(three_class_data, tmp_path):
    result = val.main(["--data", str(three_class_data), "--weights", str(genuine("det-git-best")), "--imgsz", "64",
                       "--quiet", "--project", str(tmp_path / "val"), "--workers", "0"])
    assert 0.0 <= result.map50 <= 1.0


def test_hub_custom_loads_an_imported_file(images):
    model = load_custom(genuine("det-git-best"), imgsz=64, conf=0.0)
    assert model.names == ["class0", "class1", "class2"]
    assert len(model(str(images / "a.jpg"))) == 1


def test_an_imported_file_is_a_teacher(three_class_data, tmp_path):
    """Self-distillation from the imported detector into a student started from it (the pipeline's setting)."""
    run = train_distill.main(["--data", str(three_class_data), "--weights", str(genuine("det-git-best")),
                              "--teacher", str(genuine("det-git-best")), "--imgsz", "64", "--batch-size", "4",
                              "--epochs", "1", "--workers", "0", "--project", str(tmp_path), "--name", "student",
                              "--noplots", "--quiet", "--noautoanchor", "--no-tensorboard"])
    assert (run / "weights" / "best.pt").exists()
