"""Polygons of segment labels: moved by the geometry a sample recorded, clipped, and rasterised to masks.

Coordinates are continuous pixels, as in utils.augmentations: pixel i covers [i, i + 1]. A polygon is an
(m, 2) float array of x y vertices. A mask pixel belongs to a polygon when its centre lies inside it
(even-odd rule), so a mask at 1/ratio of the image is the polygon divided by ratio, rasterised.
"""

from __future__ import annotations

import numpy as np

Rect = tuple[float, float, float, float]  # x1, y1, x2, y2


def transform_points(xy: np.ndarray, M: np.ndarray) -> np.ndarray:
    """(m, 2) points through a (3, 3) projective map (affine maps have [0, 0, 1] as last row)."""
    h = np.column_stack((xy, np.ones(len(xy)))) @ M.T
    return h[:, :2] / h[:, 2:3]


def _clip_half_plane(xy: np.ndarray, axis: int, bound: float, keep_below: bool) -> np.ndarray:
    """Sutherland-Hodgman step: the part of a polygon with xy[:, axis] <= bound (or >= bound)."""
    if not len(xy):
        return xy
    inside = xy[:, axis] <= bound if keep_below else xy[:, axis] >= bound
    out = []
    for k in range(len(xy)):
        a, b = xy[k - 1], xy[k]  # the edge arriving at vertex k
        a_in, b_in = inside[k - 1], inside[k]
        if a_in != b_in:  # the edge crosses the bound: keep the crossing point
            t = (bound - a[axis]) / (b[axis] - a[axis])
            out.append(a + t * (b - a))
        if b_in:
            out.append(b)
    return np.array(out, dtype=xy.dtype).reshape(-1, 2)


def clip_polygon(xy: np.ndarray, rect: Rect) -> np.ndarray:
    """The part of a polygon inside an axis-aligned rectangle (a convex clip: the result may be empty)."""
    x1, y1, x2, y2 = rect
    for axis, bound, below in ((0, x1, False), (0, x2, True), (1, y1, False), (1, y2, True)):
        xy = _clip_half_plane(xy, axis, bound, below)
    return xy


def polygon_area(xy: np.ndarray) -> float:
    """|Area| of a polygon (m, 2) by the shoelace formula, in its own units (0 below 3 vertices)."""
    if len(xy) < 3:
        return 0.0
    x, y = xy[:, 0], xy[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def polygon_box(xy: np.ndarray) -> np.ndarray:
    """(4,) x y w h of the box around a polygon (m, 2): how segment labels give detection boxes."""
    lo, hi = xy.min(0), xy.max(0)
    return np.concatenate(((lo + hi) / 2, hi - lo))


def rasterise_polygon(xy: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(h, w) bool mask of the pixels whose centres lie inside polygon xy (pixel units), by scanlines.

    Every row centre y + 0.5 meets the edges at sorted x crossings; the pixels between crossings 2k and
    2k + 1 are inside. Edges are half-open in y, so a vertex on a row is counted once.
    """
    h, w = hw
    mask = np.zeros((h, w), bool)
    if len(xy) < 3:
        return mask
    rows = np.arange(max(int(np.floor(xy[:, 1].min() - 0.5)), 0), min(int(np.ceil(xy[:, 1].max())), h))
    if not len(rows):
        return mask
    a, b = xy, np.roll(xy, -1, 0)  # (E, 2) edge ends
    y = rows[:, None] + 0.5  # (R, 1)
    crosses = (np.minimum(a[:, 1], b[:, 1]) <= y) & (y < np.maximum(a[:, 1], b[:, 1]))  # (R, E)
    dy = np.where(b[:, 1] == a[:, 1], 1.0, b[:, 1] - a[:, 1])  # horizontal edges never cross
    x = np.where(crosses, a[:, 0] + (y - a[:, 1]) / dy * (b[:, 0] - a[:, 0]), np.inf)
    x = np.sort(x, 1)[:, :len(xy) // 2 * 2]  # a row meets an even number of edges, at most E - 1 when E is odd
    first = np.clip(np.ceil(x[:, 0::2] - 0.5), 0, w)  # (R, E // 2): first pixel whose centre is past the entry
    last = np.clip(np.ceil(x[:, 1::2] - 0.5), 0, w)  # one past the last pixel before the exit
    spans = np.isfinite(x[:, 1::2])
    diff = np.zeros((len(rows), w + 1), np.int32)
    r = np.broadcast_to(np.arange(len(rows))[:, None], spans.shape)[spans]
    np.add.at(diff, (r, first[spans].astype(int)), 1)
    np.add.at(diff, (r, last[spans].astype(int)), -1)
    mask[rows] = np.cumsum(diff, 1)[:, :w] > 0
    return mask


def polygons_to_masks(polygons: list[np.ndarray], hw: tuple[int, int], ratio: int = 1) -> np.ndarray:
    """(n, h // ratio, w // ratio) uint8 {0, 1}: one mask per polygon (pixels of the hw image)."""
    mh, mw = hw[0] // ratio, hw[1] // ratio
    masks = [rasterise_polygon(np.asarray(p, np.float64) / ratio, (mh, mw)) for p in polygons]
    return np.stack(masks).astype(np.uint8) if masks else np.zeros((0, mh, mw), np.uint8)


def polygons_to_overlap_mask(polygons: list[np.ndarray], hw: tuple[int, int],
                             ratio: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """YOLOv5's overlap masks: one (h // ratio, w // ratio) int32 map of instance numbers, and their order.

    Instances are sorted by mask area, largest first (stable), and painted in that order, so a smaller
    object on top of a larger one keeps its pixels. Pixel value k + 1 marks instance order[k]; 0 is
    background. Labels must be reordered by `order` to match.
    """
    masks = polygons_to_masks(polygons, hw, ratio)
    order = np.argsort(-masks.reshape(len(masks), -1).sum(1), kind="stable")
    overlap = np.zeros(masks.shape[1:], np.int32)
    for k, i in enumerate(order):
        overlap[masks[i] > 0] = k + 1
    return overlap, order
