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
MIN_IMAGE_SIDE = 10  # px; smaller images are treated as corrupt by every reader (training skips them, so does detect)
NARROW_BITS = 12  # a 16-bit image whose values all fit in this many bits is probably 12-bit sensor data
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
    return im, TRUNCATED_JPEG if truncated else narrow_16bit(data, im)


def narrow_16bit(data: bytes, im: np.ndarray) -> str | None:
    """A warning for a 16-bit image whose values use only the low 12 bits (a 12-bit camera's data stored as is):
    decoded by the 16-bit range, as every reader does, it comes out nearly black. Checked only when the 8-bit
    image is that dark, so ordinary images are decoded once."""
    if im.max() >= 1 << (16 - NARROW_BITS):
        return None
    try:
        deep = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error:
        return None
    if deep is None or deep.dtype != np.uint16 or not deep.max() or deep.max() >= 1 << NARROW_BITS:
        return None
    return (f"16-bit image with values only up to {int(deep.max())} ({NARROW_BITS}-bit data?): it reads nearly black; "
            f"scale it to the full 16-bit range (x{1 << (16 - NARROW_BITS)}) or save it as 8-bit")
