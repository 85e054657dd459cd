"""Binary masks <-> normalised polygons, the geometry of YOLOv5 segment labels (`cls x1 y1 ... xn yn`).

The dataset converters and the synthetic generator write polygons with these functions, and
`utils.masks` (which re-exports them) rasterises them again, so both sides share one convention:
a vertex (x, y) in 0-1 is the centre of a pixel, pixel (px, py) <-> ((px + 0.5) / W, (py + 0.5) / H).
A region's outer contour rasterised back at the same size gives the region with its holes filled,
pixel for pixel. (YOLOv5 itself writes px / W, half a pixel to the top-left of ours.)

Polygons are (k, 2) float64 arrays of x, y with k >= 3: a row with fewer points would read as a box.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

SUBPIXEL_BITS = 4  # fixed-point fraction bits handed to cv2.fillPoly, so vertices keep 1/16 px


def _region_pixels(contour: np.ndarray) -> int:
    """Pixels inside an outer contour (holes included), counted on a crop of its bounding box."""
    x, y, w, h = cv2.boundingRect(contour)
    crop = np.zeros((h, w), np.uint8)
    cv2.drawContours(crop, [contour], -1, 1, thickness=-1, offset=(-x, -y))
    return int(crop.sum())


def _to_polygon(contour: np.ndarray, width: int, height: int) -> np.ndarray:
    """(k, 1, 2) int pixel contour -> (max(k, 3), 2) normalised polygon; short ones repeat their last point."""
    points = contour.reshape(-1, 2).astype(np.float64)
    if len(points) < 3:
        points = np.concatenate([points, np.repeat(points[-1:], 3 - len(points), 0)])
    return (points + 0.5) / (width, height)


def mask_to_polygons(mask: np.ndarray, min_area: int = 1) -> tuple[list[np.ndarray], int]:
    """One polygon per connected region (8-connected) of a binary (H, W) mask: its outer contour.

    Holes are filled and a region lying inside another's hole is part of that one. Regions of
    fewer than `min_area` pixels (counted with their holes filled) are dropped. Returns the
    normalised polygons, in OpenCV's contour order, and the number of regions dropped.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask_to_polygons: mask must be (H, W), got shape {mask.shape}")
    height, width = mask.shape
    contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons, dropped = [], 0
    for contour in contours:
        if _region_pixels(contour) < min_area:
            dropped += 1
            continue
        polygons.append(_to_polygon(contour, width, height))
    return polygons, dropped


def _pixel_points(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalised (k, 2) -> fixed-point pixel-centre coordinates for cv2.fillPoly's `shift`."""
    pixels = np.asarray(polygon, np.float64).reshape(-1, 2) * (width, height) - 0.5
    return np.round(pixels * (1 << SUBPIXEL_BITS)).astype(np.int32)


def polygons_to_masks(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """One (H, W) uint8 0/1 mask per normalised polygon: (n, H, W). Any size, not only the source's."""
    masks = np.zeros((len(polygons), height, width), np.uint8)
    for mask, polygon in zip(masks, polygons):
        cv2.fillPoly(mask, [_pixel_points(polygon, height, width)], 1, cv2.LINE_8, SUBPIXEL_BITS)
    return masks


def polygons_to_mask(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """The union of the polygons as one (H, W) uint8 0/1 mask."""
    mask = np.zeros((height, width), np.uint8)
    for polygon in polygons:
        cv2.fillPoly(mask, [_pixel_points(polygon, height, width)], 1, cv2.LINE_8, SUBPIXEL_BITS)
    return mask


def _closest_pair(a: np.ndarray, b: np.ndarray) -> tuple[float, int, int]:
    """Squared distance and indices of the closest points of two (k, 2) point sets."""
    d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(d.argmin()), d.shape)
    return float(d[i, j]), int(i), int(j)


def merge_polygons(polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Several polygons of one instance as one polygon, the parts joined by zero-width bridges.

    A label row holds one polygon per instance, so an instance painted in several pieces (a
    string of inclusions, a cluster of pits) is written as YOLOv5 writes multi-part COCO objects:
    parts linked along the shortest links (a spanning tree grown from the first part), each
    visited from its parent's nearest vertex and left back to it. Rasterised, the bridges add a
    one-pixel line each and nothing else.
    """
    parts = [np.asarray(p, np.float64).reshape(-1, 2) for p in polygons]
    if not parts:
        raise ValueError("merge_polygons: no polygons")
    n = len(parts)
    links = {(a, b): _closest_pair(parts[a], parts[b]) for a in range(n) for b in range(a + 1, n)}
    children: dict[int, list[tuple[int, int, int]]] = {i: [] for i in range(n)}  # (vertex, child, its entry)
    joined = {0}
    while len(joined) < n:
        (_, i, j), a, b = min((links[a, b], a, b) for a, b in links if (a in joined) != (b in joined))
        parent, vertex, child, entry = (a, i, b, j) if a in joined else (b, j, a, i)
        children[parent].append((vertex, child, entry))
        joined.add(child)
    return np.concatenate(_walk(parts, children, 0, 0))


def _walk(parts: list[np.ndarray], children: dict, index: int, start: int) -> list[np.ndarray]:
    """Part `index` from vertex `start` round to it again, each child's walk inserted at its vertex."""
    part = parts[index]
    order = np.roll(np.arange(len(part)), -start)
    out = []
    for v in order:
        out.append(part[v:v + 1])
        for vertex, child, child_start in children[index]:
            if vertex == v:
                out += _walk(parts, children, child, child_start)
                out.append(part[v:v + 1])
    out.append(part[start:start + 1])
    return out
