"""Sliced inference for images much larger than the network input (`detect.py --tile 640 --tile-overlap 0.2`).

A 2048 x 1000 GC10-DET image shrunk to 640 loses defects a few pixels wide. Tiling runs the detector on
overlapping tile x tile windows at full resolution, plus (as SAHI's "full-image" pass) the whole image
shrunk to the tile size for the large defects no window holds; every box is moved back to the image's
pixels and duplicates across windows are merged:

- "nms": class-wise NMS over all windows' boxes (IoU), keeping the best-scored copy;
- "nmm": greedy non-maximum *merging* (SAHI's GREEDYNMM idea): boxes of one class whose intersection covers
  `merge_ios` of the smaller box become their union, scored by the best — a scratch cut by a window border
  comes back whole instead of as two half boxes.

Why our own and not SAHI: the work is window arithmetic and one merge, ~100 lines over the Predictor we
already have; SAHI would add a dependency whose model adapters expect its own detection-model class.
"""

from __future__ import annotations

import math

import torch

from utils.boxes import box_area, box_intersection
from utils.nms import nms

MERGE_MODES = ("nms", "nmm")


def tile_windows(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """(x1, y1, x2, y2) windows of at most tile x tile covering the image, neighbours overlapping by
    `overlap` of a tile; the last window of a row/column is shifted back inside the image, not cut short."""
    if tile < 1 or not 0 <= overlap < 1:
        raise ValueError(f"--tile {tile} --tile-overlap {overlap}: expected a positive tile and an overlap in [0, 1)")

    def starts(size: int) -> list[int]:
        if size <= tile:
            return [0]
        step = max(1, int(tile * (1 - overlap)))
        n = math.ceil((size - tile) / step) + 1
        return sorted({min(i * step, size - tile) for i in range(n)})

    return [(x, y, min(x + tile, width), min(y + tile, height)) for y in starts(height) for x in starts(width)]


def merge_detections(det: torch.Tensor, mode: str = "nms", iou_thres: float = 0.45,
                     merge_ios: float = 0.5) -> torch.Tensor:
    """(n, 6) [x1, y1, x2, y2, conf, cls] boxes from several windows -> the merged set, best first."""
    if mode not in MERGE_MODES:
        raise ValueError(f"--tile-merge {mode!r}: expected one of {', '.join(MERGE_MODES)}")
    if not len(det):
        return det
    det = det[det[:, 4].argsort(descending=True)]
    if mode == "nms":
        offsets = det[:, 5:6] * (det[:, :4].max() + 1)  # class-wise
        return det[nms(det[:, :4] + offsets, det[:, 4], iou_thres)]
    merged, used = [], torch.zeros(len(det), dtype=torch.bool)
    for i in range(len(det)):
        if used[i]:
            continue
        box = det[i].clone()
        group = (~used) & (det[:, 5] == box[5])
        inter = box_intersection(box[None, :4], det[:, :4])[0]
        smaller = torch.minimum(box_area(box[None, :4]), box_area(det[:, :4])).clamp_min(1e-9)
        group &= inter / smaller >= merge_ios
        members = det[group]
        box[:2] = members[:, :2].min(0).values
        box[2:4] = members[:, 2:4].max(0).values
        used |= group
        merged.append(box)
    return torch.stack(merged)
