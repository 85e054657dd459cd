"""Label rows, the one rule for every label file: YOLO boxes (`cls x y w h`) or YOLOv5 segment polygons
(`cls x1 y1 ... xn yn`), normalised to the image; boxes of polygons follow data.polygons' convention.

The label scan (utils.dataloaders) calls `parse_label_text` once per file and caches the result.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

COORD_TOLERANCE = 1e-3  # label coordinates this far outside [0, 1] are clipped rather than dropped


def _row_problem(fields: list[str], nc: int | None, polygon: bool) -> str | None:
    """Why a label row is unusable, or None when it is a good `cls x y w h` row (or, in a polygon file, a good
    `cls x1 y1 x2 y2 x3 y3 ...` row)."""
    if polygon and len(fields) == 5:
        return "a box row in a polygon label file (a file holds boxes or polygons, not both)"
    if polygon and (len(fields) < 7 or len(fields) % 2 == 0):
        return f"expected a polygon: class and 3 or more x y pairs (an odd count of 7+ numbers), got {len(fields)}"
    if not polygon and len(fields) > 6:
        return "a polygon row in a box label file (a file holds boxes or polygons, not both)"
    if not polygon and len(fields) != 5:
        return f"expected 5 numbers (class x y w h), got {len(fields)}"
    try:
        cls, *coords = (float(f) for f in fields)
    except ValueError:
        return "not a number"
    if not all(math.isfinite(v) for v in (cls, *coords)):
        return "not finite"
    if cls != int(cls) or cls < 0 or (nc is not None and cls >= nc):
        return f"class {fields[0]} is not an integer in [0, {nc if nc is not None else 'nc'})"
    if min(coords) < -COORD_TOLERANCE or max(coords) > 1 + COORD_TOLERANCE:
        what = "x y pairs" if polygon else "x y w h"
        return f"coordinates outside [0, 1] (labels must be normalised {what})"
    if not polygon and (coords[2] <= 0 or coords[3] <= 0):
        return "width and height must be > 0"
    return None


def polygon_box(xy: np.ndarray, image_wh: tuple[int, int]) -> np.ndarray:
    """(4,) normalised x y w h of the region a polygon (m, 2) outlines: how segment labels give detection boxes.

    Vertices are pixel centres (data.polygons), so the region reaches half a pixel beyond them; a polygon of
    no area (a one-pixel scratch) still has a box one pixel wide.
    """
    half = 0.5 / np.asarray(image_wh, np.float64)
    lo, hi = np.clip(xy.min(0) - half, 0, 1), np.clip(xy.max(0) + half, 0, 1)
    return np.concatenate(((lo + hi) / 2, hi - lo))


def parse_label_text(text: str, label_file: str | Path, nc: int | None,
                     image_wh: tuple[int, int]) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """Label file text of a (w, h) image -> ((k, 5) float32 [cls, x, y, w, h], polygons, one message per
    dropped row and one for a box file that also holds polygon rows).

    A file holds YOLO boxes (`cls x y w h`) or YOLOv5 segment polygons (`cls x1 y1 ... xn yn`, normalised),
    whichever most rows are; rows of the other kind are dropped with a message. For polygons, `polygons`
    holds one (m, 2) float32 array per kept row and the boxes are their regions' (`polygon_box`); for boxes
    it is [].
    """
    lines = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.split()]
    polygon = sum(len(f) > 6 for _, f in lines) > sum(len(f) == 5 for _, f in lines)
    rows, polygons, msgs, seen = [], [], [], set()
    for lineno, fields in lines:
        problem = _row_problem(fields, nc, polygon)
        if problem is None:
            values = np.array(fields, np.float32)
            values[1:] = values[1:].clip(0, 1)  # tiny overshoot from rounding in converters
            key = tuple(values.tolist())
            if key not in seen:
                seen.add(key)
                if polygon:
                    xy = values[1:].reshape(-1, 2)
                    polygons.append(xy)
                    values = np.concatenate((values[:1], polygon_box(xy, image_wh))).astype(np.float32)
                rows.append(values)
                continue
            problem = "duplicate row"
        msgs.append(f"{label_file}:{lineno}: {problem}; row dropped")
    if not polygon and any(len(f) > 6 for _, f in lines):
        msgs.append(mixed_file_note(label_file, [n for n, f in lines if len(f) == 5]))
    return np.array(rows, np.float32).reshape(-1, 5), polygons, msgs


def mixed_file_note(label_file: str | Path, box_lines: list[int]) -> str:
    """A box file with polygon rows: its 5-number rows may be 2-point segments (`cls x1 y1 x2 y2`, as YOLOv5 reads
    them in such a file) that a box reading turns into a wrong box, so the user is told which rows were kept."""
    return (f"{label_file}: mixes polygon rows with 5-number rows; lines {', '.join(map(str, box_lines))} were read as "
            "boxes (cls x y w h): if any is a 2-point segment, it is now a wrong box; give segments 3 or more points")
