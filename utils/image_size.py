"""Image sizes a model can take: the input side must be a multiple of the model's largest stride.

The detector's levels are joined by ×2 up-sampling and concatenation, so an input whose side is not
a multiple of the coarsest stride (32) gives grids that do not line up and fails deep inside the
network. As YOLOv5 does, every script rounds such a size up to the next multiple, with a warning,
instead of failing; a size below one pixel is a mistake no rounding can fix.
"""

from __future__ import annotations

import logging
import math
import numbers

LOGGER = logging.getLogger(__name__)


def check_img_size(imgsz: int, stride: int, flag: str = "--imgsz") -> int:
    """`imgsz` rounded up to a multiple of `stride` (a warning names the change); a ValueError below 1 px."""
    if isinstance(imgsz, bool) or not isinstance(imgsz, numbers.Integral) or imgsz < 1:
        raise ValueError(f"{flag} {imgsz}: expected a positive image size in pixels (e.g. 640)")
    imgsz, stride = int(imgsz), max(int(stride), 1)
    rounded = int(math.ceil(imgsz / stride) * stride)
    if rounded != imgsz:
        LOGGER.warning("WARNING: %s %d is not a multiple of the model's stride %d; using %d", flag, imgsz, stride,
                       rounded)
    return rounded
