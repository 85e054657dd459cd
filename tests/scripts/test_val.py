"""val.py end to end on a random-weight tiny checkpoint: run directory, table, speed, one-line errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

import val
from engine.validator import ValResult
from models.loading import save_model
from models.yolo import Model
from tests.conftest import TINY, write_image

NAMES = ["crazing", "inclusion", "scratches"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "models" / "yolov5n.yaml").read_text())
    cfg.update(nc=len(NAMES), **TINY)
    model = Model(cfg)
    model.names = NAMES
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_model(path, model)
    return path


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory) -> Path:
    """Five images of two sizes, each with one dark box of a class, and one without labels."""
    tmp_path = tmp_path_factory.mktemp("dataset")
    root = tmp_path / "data"
    for i in range(5):
        write_image(root / "images" / "val" / f"{i:06d}.png", size=(96, 128) if i % 2 else (128, 96), seed=i)
        label = root / "labels" / "val" / f"{i:06d}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("" if i == 4 else f"{i % 3} 0.375 0.375 0.25 0.25\n")
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump({"path": str(root), "train": "images/val", "val": "images/val", "names": NAMES}))
    return path


def args(data_yaml: Path, weights: Path, project: Path, *extra: str) -> list[str]:
    return ["--data", str(data_yaml), "--weights", str(weights), "--imgsz", "64", "--batch-size", "4",
            "--device", "cpu", "--workers", "0", "--project", str(project), *extra]


def test_val_writes_run_dir_table_and_speed(data_yaml, checkpoint, tmp_path, caplog):
    project = tmp_path / "runs"
    with caplog.at_level(logging.INFO):
        result = val.main(args(data_yaml, checkpoint, project, "--save-json", "--save-txt", "--verbose"))
    assert isinstance(result, ValResult) and result.seen == 5
    assert 0.0 <= result.map <= result.map50 <= 1.0 and result.maps.shape == (3,)
    run = project / "exp"
    assert (run / "confusion_matrix.png").is_file() and (run / "val_batch0_labels.jpg").is_file()
    assert isinstance(json.loads((run / "predictions.json").read_text()), list)
    first_words = [m.split()[0] for m in caplog.messages if m.split()]
    assert "all" in first_words and "crazing" in first_words and "scratches" in first_words
    speed_lines = [m for m in caplog.messages if m.startswith("Speed:")]
    assert len(speed_lines) == 1 and "per image at shape (4, 3," in speed_lines[0]

    caplog.clear()
    with caplog.at_level(logging.INFO):
        speed = val.main(args(data_yaml, checkpoint, project, "--task", "speed", "--scale"))
    assert (project / "exp2").is_dir() and not any((project / "exp2").iterdir())  # no plots
    assert any(m.startswith("Speed:") for m in caplog.messages)
    assert not any(m.split()[:1] == ["all"] for m in caplog.messages)  # no metrics table
    assert np.isfinite(speed.speed).all()


def test_truncated_checkpoint_is_one_line_naming_the_file(data_yaml, checkpoint, tmp_path):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    with pytest.raises(SystemExit) as e:
        val.main(args(data_yaml, bad, tmp_path / "runs"))
    message = str(e.value.code)
    assert message.startswith("error: ") and str(bad) in message and "\n" not in message


@pytest.mark.parametrize("problem", ["missing-weights", "bad-yaml", "latents"])
def test_bad_inputs_exit_with_one_line(problem, data_yaml, checkpoint, tmp_path):
    weights, data, extra = checkpoint, data_yaml, []
    if problem == "missing-weights":
        weights = tmp_path / "nope.pt"
    elif problem == "bad-yaml":
        data = tmp_path / "bad.yaml"
        data.write_text("train: images\nval: [unclosed\n")
    else:
        extra = ["--latents", str(tmp_path / "repo")]
    with pytest.raises(SystemExit) as e:
        val.main(args(data, weights, tmp_path / "runs", *extra))
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message
    named = {"missing-weights": str(weights), "bad-yaml": str(data), "latents": "--latents"}
    assert named[problem] in message


def test_tile_scores_each_whole_image(data_yaml, checkpoint, tmp_path):
    result = val.main(args(data_yaml, checkpoint, tmp_path / "runs", "--tile", "64", "--tile-overlap", "0.25"))
    assert isinstance(result, ValResult) and result.seen == 5 and 0.0 <= result.map50 <= 1.0
