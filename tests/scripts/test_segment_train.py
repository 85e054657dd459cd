"""segment/train.py: a thin wrapper that runs the segmentation task on the shared trainer."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict

import pytest
import yaml

from engine.trainer import TrainOptions
from models.loading import save_model
from models.yolo import Model
from segment import train as segment_train
from tests.segment_fixtures import NAMES, write_segment_dataset
from utils.checkpoints import load_checkpoint


def test_trains_a_segmenter_with_its_mask_options(tmp_path):
    data = write_segment_dataset(tmp_path / "seg", n_train=8, n_val=4)
    cfg = yaml.safe_load((segment_train.ROOT / "models" / "yolov5n-seg.yaml").read_text())
    (tmp_path / "tiny-seg.yaml").write_text(yaml.safe_dump({**cfg, "nc": len(NAMES)}))
    run = segment_train.main(["--data", str(data), "--cfg", str(tmp_path / "tiny-seg.yaml"), "--imgsz", "64",
                              "--batch-size", "4", "--epochs", "2", "--workers", "0", "--project", str(tmp_path),
                              "--noplots", "--quiet", "--mask-ratio", "2", "--no-overlap"])
    header = (run / "results.csv").read_text().splitlines()[0].split(",")
    assert header[1:5] == ["train/box_loss", "train/seg_loss", "train/obj_loss", "train/cls_loss"]
    opts = load_checkpoint(run / "weights" / "last.pt")["train_opts"]
    assert (opts["task"], opts["task_state"]) == ("segment", {"mask_ratio": 2, "overlap": False})


def test_resuming_a_detection_run_is_refused_in_one_line(tmp_path, tiny_cfg):
    path = tmp_path / "last.pt"
    save_model(path, Model(tiny_cfg), train_opts=asdict(TrainOptions(task="detect")), epoch=0)
    with pytest.raises(SystemExit, match=r"error: .*last.pt: a 'detect' run; resume it with train.py$"):
        segment_train.main(["--resume", str(path), "--quiet"])


@pytest.mark.parametrize("script", ["train", "val", "predict"])
def test_segment_scripts_run_as_files_as_yolov5_users_type_them(script):
    """`python segment/<script>.py` from the repository root finds the core, as `python -m segment.<script>`."""
    proc = subprocess.run([sys.executable, f"segment/{script}.py", "--help"], cwd=segment_train.ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert f"segment.{script}" in proc.stdout
