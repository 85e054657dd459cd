"""Live sources: a camera index or stream URL is read frame by frame, a dropped live stream is reopened, an
absent one is a one-line error, and a local video served as a file:// URL plays through detect.py."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import detect
from models.loading import save_model
from models.yolo import Model
from utils.streams import is_stream, stream_frames, stream_name


class FlakyCamera:
    """A capture that gives `bursts[k]` frames after its k-th opening, then fails reads; openings past the
    bursts fail."""

    opened: list[int] = []

    def __init__(self, bursts: list[int], target):
        FlakyCamera.opened.append(target)
        k = len(FlakyCamera.opened) - 1
        self.left = bursts[k] if k < len(bursts) else -1

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.left >= 0

    def get(self, prop) -> float:
        return 0.0  # live: no frame count, fps unknown

    def read(self):
        if self.left > 0:
            self.left -= 1
            return True, np.zeros((8, 8, 3), np.uint8)
        return False, None

    def release(self) -> None:
        pass


def test_sources_that_are_streams():
    assert is_stream("0") and is_stream("rtsp://10.0.0.5/line3") and is_stream("HTTP://cam/video")
    assert not is_stream("data/images") and not is_stream("clip.mp4")
    assert stream_name("0") == "camera0" and stream_name("rtsp://10.0.0.5:554/line3?x=1") == "10.0.0.5_554_line3"


def test_a_dropped_live_stream_is_reopened_until_it_stays_gone():
    FlakyCamera.opened = []
    frames = list(stream_frames("0", reconnect=2, wait_s=0.0, opener=lambda t: FlakyCamera([3, 0, 2], t)))
    assert [f.frame for f in frames] == [0, 1, 2, 3, 4]  # 3 frames, a reopen giving none, a reopen giving 2
    assert FlakyCamera.opened == [0, 0, 0, 0, 0] and frames[0].path.name == "camera0.mp4"


def test_an_absent_stream_is_one_line(tmp_path):
    FlakyCamera.opened = []
    with pytest.raises(ValueError, match="^7: cannot open the stream \\(no camera at that index\\)$"):
        stream_frames("7", opener=lambda t: FlakyCamera([], t))
    model = Model("yolov5n.yaml", nc=2)
    save_model(tmp_path / "m.pt", model)
    missing = f"file://{tmp_path / 'nothing.mp4'}"
    with pytest.raises(SystemExit) as e:
        detect.main(["--weights", str(tmp_path / "m.pt"), "--source", missing, "--imgsz", "64", "--project",
                     str(tmp_path), "--quiet"])
    assert str(e.value.code).startswith(f"error: {missing}: cannot open the stream") and "\n" not in str(e.value.code)


def test_a_video_served_as_a_file_plays_through_detect(tmp_path, tiny_cfg):
    video = tmp_path / "line.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    for i in range(6):
        writer.write(np.full((64, 96, 3), 40 * i, np.uint8))
    writer.release()
    model = Model(tiny_cfg)
    model.names = ["a", "b", "c"]
    save_model(tmp_path / "m.pt", model)
    run = detect.main(["--weights", str(tmp_path / "m.pt"), "--source", f"file://{video}", "--imgsz", "64",
                       "--project", str(tmp_path), "--save-txt", "--quiet"])
    out = cv2.VideoCapture(str(next(run.glob("*.mp4"))))
    assert int(out.get(cv2.CAP_PROP_FRAME_COUNT)) == 6  # every frame, once: a file ends, it is not reopened
