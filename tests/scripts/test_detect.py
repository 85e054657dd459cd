"""detect.py: annotated images and YOLO labels for every readable file; unreadable ones are reported."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import pytest

import detect
from models.loading import save_model
from models.yolo import Model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def weights(tmp_path, tiny_model_yaml) -> Path:
    model = Model(tiny_model_yaml)
    model.names = [f"defect{i}" for i in range(model.detect.nc)]
    for conv in model.detect.m:  # confident everywhere (object of class 0): every image gets detections
        conv.bias.data.view(model.detect.na, -1)[:, 4:6] = 5.0
    path = tmp_path / "tiny.pt"
    save_model(path, model)
    return path


def _source_with_one_corrupt(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for f in sorted((REPO / "data" / "images").glob("*.png"))[:3]:
        shutil.copy(f, src / f.name)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return src


def test_directory_with_a_corrupt_file(tmp_path, weights, caplog):
    src = _source_with_one_corrupt(tmp_path)
    run = detect.main(["--weights", str(weights), "--source", str(src), "--imgsz", "96", "--save-txt", "--save-conf",
                       "--project", str(tmp_path / "runs"), "--max-det", "5"])
    good = sorted(p.name for p in src.iterdir() if p.name != "broken.jpg")
    assert sorted(p.name for p in run.glob("*.png")) == good
    labels = sorted(run.glob("labels/*.txt"))
    assert [p.stem for p in labels] == [Path(g).stem for g in good]
    for lab in labels:
        rows = [r.split() for r in lab.read_text().splitlines()]
        assert 1 <= len(rows) <= 5 and all(len(r) == 6 for r in rows)
        assert all(0 <= float(v) <= 1 for r in rows for v in r[1:5])
    assert "broken.jpg" in caplog.text and "skipped 1 unreadable file" in caplog.text
    assert cv2.imread(str(run / good[0])) is not None


def test_runs_are_numbered_and_nosave_writes_no_images(tmp_path, weights):
    src = _source_with_one_corrupt(tmp_path)
    args = ["--weights", str(weights), "--source", str(src / "*.png"), "--imgsz", "64", "--project", str(tmp_path / "r")]
    first = detect.main(args)
    second = detect.main(args + ["--nosave", "--save-crop", "--scale"])
    assert (first.name, second.name) == ("exp", "exp2")
    assert not list(second.glob("*.png")) and list(second.glob("crops/*/*.jpg"))


def test_video_source_gives_an_annotated_video(tmp_path, weights):
    video = tmp_path / "clip.mp4"
    im = cv2.imread(str(sorted((REPO / "data" / "images").glob("*.png"))[0]))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (im.shape[1], im.shape[0]))
    for _ in range(3):
        writer.write(im)
    writer.release()
    run = detect.main(["--weights", str(weights), "--source", str(video), "--imgsz", "64", "--save-txt",
                       "--project", str(tmp_path / "r")])
    assert (run / "clip.mp4").stat().st_size > 0
    assert sorted(p.name for p in run.glob("labels/*.txt")) == ["clip_0.txt", "clip_1.txt", "clip_2.txt"]


def test_missing_weights_and_empty_source_are_one_line_errors(tmp_path, weights):
    with pytest.raises(SystemExit, match="nope.pt: checkpoint not found"):
        detect.main(["--weights", str(tmp_path / "nope.pt"), "--source", str(REPO / "data" / "images")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no images or videos found"):
        detect.main(["--weights", str(weights), "--source", str(tmp_path / "empty")])
