"""Reading an image file: one rule for every reader (the label scan, the loaders, detect.py, stage 1).

A JPEG cut short (a copy or download that stopped early) has no end-of-image marker. As YOLOv5
repairs such files, it is decoded as far as its data goes, the missing part grey, and used with a
warning naming the file; the file itself is never rewritten. Anything else that does not decode is
unreadable, and each caller skips it with its own warning.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
TRUNCATED_JPEG = "truncated JPEG (no end-of-image marker): its missing part reads as grey"


def is_truncated_jpeg(data: bytes) -> bool:
    """A JPEG stream (by its start marker) that does not end with the end-of-image marker (NUL padding allowed)."""
    return data[:2] == JPEG_START and data.rstrip(b"\x00")[-2:] != JPEG_END


def decode_image(path: str | Path) -> tuple[np.ndarray | None, str | None]:
    """(BGR uint8 (H, W, 3) or None, a problem to warn about or None); grey and alpha images come as BGR."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return None, f"cannot be read ({e.strerror or type(e).__name__})"
    truncated = is_truncated_jpeg(data)
    if truncated:
        data += JPEG_END  # lets the decoder finish; the rows it never got stay grey
    try:
        im = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        im = None
    if im is None or not im.size:
        return None, "cannot be decoded"
    return im, TRUNCATED_JPEG if truncated else None
