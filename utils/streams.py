"""Live sources for detect.py, as YOLOv5 takes them: a camera index (`--source 0`) or a stream URL
(rtsp://, rtmp://, http(s)://; file:// plays a local video through the same path), read with OpenCV.

A camera or stream that cannot be opened is a one-line error naming it. A live stream that drops is
reopened, up to `reconnect` times in a row, a second apart, before the run ends with a warning — a factory
camera that reboots does not end a shift's inspection. A source that reports a frame count (a video
served as a file) simply ends after its last frame.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Callable, Iterator

import cv2

from utils.sources import Frame

LOGGER = logging.getLogger(__name__)
STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://", "file://")
RECONNECTS = 5  # consecutive failed reads/reopens before a live stream counts as gone
RECONNECT_WAIT_S = 1.0


def is_stream(source: str | Path) -> bool:
    """A camera index or a stream URL (not a file path, directory or glob)."""
    s = str(source).strip()
    return s.isdigit() or s.lower().startswith(STREAM_PREFIXES)


def stream_name(source: str) -> str:
    """A file-name-safe name for the stream's outputs: camera0, or the URL's host and path."""
    s = str(source).strip()
    if s.isdigit():
        return f"camera{s}"
    bare = re.sub(r"^[a-z]+://", "", s.lower()).split("?")[0]
    return re.sub(r"[^a-z0-9._-]+", "_", bare).strip("_.")[:80] or "stream"


def _open(source: str, opener: Callable) -> cv2.VideoCapture:
    return opener(int(source) if source.isdigit() else source)


def stream_frames(source: str, reconnect: int = RECONNECTS, wait_s: float = RECONNECT_WAIT_S,
                  opener: Callable = cv2.VideoCapture) -> Iterator[Frame]:
    """Frames of a camera or stream until it ends (or stays gone through `reconnect` attempts). The stream is
    opened by this call, so one that is absent fails here, before any output is written."""
    source = str(source).strip()
    cap = _open(source, opener)
    if not cap.isOpened():
        what = "no camera at that index" if source.isdigit() else "it does not answer or is not a video stream"
        raise ValueError(f"{source}: cannot open the stream ({what})")
    return _frames(source, cap, reconnect, wait_s, opener)


def _frames(source: str, cap, reconnect: int, wait_s: float, opener: Callable) -> Iterator[Frame]:
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    finite = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) > 0  # a video served as a file has an end
    path, n, failures = Path(f"{stream_name(source)}.mp4"), 0, 0
    try:
        while True:
            ok, image = cap.read()
            if ok and image is not None:
                failures = 0
                yield Frame(path, image, n, 0, fps)
                n += 1
                continue
            if finite:
                return
            failures += 1
            if failures > reconnect:
                LOGGER.warning("WARNING: %s: no frames after %d reconnect attempts; the stream has ended", source,
                               reconnect)
                return
            LOGGER.warning("WARNING: %s: no frame; reconnecting (%d/%d)", source, failures, reconnect)
            cap.release()
            time.sleep(wait_s)
            cap = _open(source, opener)
    finally:
        cap.release()
