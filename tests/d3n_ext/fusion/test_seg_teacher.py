"""The hybrid segmentation teacher (paper Table IV): segment/train.py --latents trains a D3N seg YAML on polygon
labels and the repository's latents, segment/val.py scores it with --latents, and --resume rebuilds its task."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

import train
from d3n_ext.fusion.task import D3NSegmentationTask
from engine.segment_validator import SegmentValResult
from segment import train as segment_train
from segment import val as segment_val
from tests.d3n_ext.stage1_fixtures import one_thread  # noqa: F401  (fixture)
from tests.d3n_ext.teacher_fixtures import teacher_repo  # noqa: F401  (fixture)
from utils.checkpoints import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def polygon_copy(paths: dict, root: Path) -> Path:
    """The repository's images (same bytes, so their latents are found) with each box label as a rectangle polygon."""
    source = paths["data"].parent
    for image in sorted((source / "images").rglob("*.png")):
        split = image.parent.name
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, root / "images" / split / image.name)
        rows = []
        for row in (source / "labels" / split / f"{image.stem}.txt").read_text().split("\n"):
            if row.strip():
                c, x, y, w, h = (float(v) for v in row.split())
                x1, y1, x2, y2 = x - w / 2, y - h / 2, x + w / 2, y + h / 2
                rows.append(f"{int(c)} {x1} {y1} {x2} {y1} {x2} {y2} {x1} {y2}")
        (root / "labels" / split / f"{image.stem}.txt").write_text("\n".join(rows) + "\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: [dark, light]\n")
    return data


def test_seg_teacher_trains_validates_and_resumes(teacher_repo, tmp_path):
    data, repo = polygon_copy(teacher_repo, tmp_path / "seg"), str(teacher_repo["repo"])
    run = segment_train.main(["--data", str(data), "--cfg", "yolov5n-seg-d3n-gated.yaml", "--latents", repo,
                              "--imgsz", "128", "--batch-size", "4", "--epochs", "1", "--workers", "0", "--project",
                              str(tmp_path), "--name", "seg-teacher", "--noplots", "--quiet", "--mask-ratio", "2"])
    opts = load_checkpoint(run / "weights" / "last.pt")["train_opts"]
    assert opts["task"] == "d3n-seg-teacher" and opts["scale"]  # the latents imply the stretched input
    assert opts["task_state"] == {"repository": repo, "plots": False, "mask_ratio": 2, "overlap": True}
    with open(run / "results.csv", newline="") as f:
        header = next(csv.reader(f))
    assert "metrics/mAP_0.5(M)" in header and "train/seg_loss" in header
    assert any(c.startswith("fusion/L27/") for c in header)  # Fig. 11's fusion weights, as the detection teacher

    result = segment_val.main(["--data", str(data), "--weights", str(run / "weights" / "best.pt"), "--latents", repo,
                               "--imgsz", "128", "--workers", "0", "--project", str(tmp_path / "val"), "--quiet"])
    assert isinstance(result, SegmentValResult) and 0.0 <= result.mask_map50 <= 1.0

    _, task = train.task_for(segment_train.parse_opt(["--resume", str(run / "weights" / "last.pt")]), "segment")
    assert isinstance(task, D3NSegmentationTask) and (task.mask_ratio, task.root) == (2, teacher_repo["repo"])
    with pytest.raises(SystemExit) as e:
        train.main(["--resume", str(run / "weights" / "last.pt")])
    assert "python -m segment.train" in str(e.value.code) and "\n" not in str(e.value.code)
