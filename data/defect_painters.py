"""What each synthetic defect class looks like: one painter per NEU-DET class.

A painter draws one instance into an (h, w) region and returns a signed float pattern with peak
|value| 1 (negative = darker than the steel, positive = brighter); `data.synthetic` scales it by a
contrast, places it and derives the exact box from its non-zero pixels. The rolling direction is
x. `scale` is image side / 200, so strokes keep their look at other image sizes.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

Painter = Callable[[np.random.Generator, int, int, float], np.ndarray]


def _finish(canvas: np.ndarray, sigma: float, sign: float) -> np.ndarray:
    """Soften the strokes and normalise the peak to |1|."""
    pattern = cv2.GaussianBlur(canvas.astype(np.float32), (0, 0), sigma) if sigma > 0 else canvas.astype(np.float32)
    peak = float(np.abs(pattern).max())
    return pattern * (sign / peak) if peak > 0 else pattern


def _random_walk(rng: np.random.Generator, start: np.ndarray, heading: float, steps: int,
                 step_len: tuple[float, float], wobble: float) -> np.ndarray:
    points = [start]
    for _ in range(steps):
        heading += rng.normal(0.0, wobble)
        length = rng.uniform(*step_len)
        points.append(points[-1] + length * np.array([np.cos(heading), np.sin(heading)]))
    return np.round(np.array(points)).astype(np.int32)


def paint_crazing(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """A dense net of fine, wavy dark cracks across a wide area."""
    canvas = np.zeros((h, w), np.uint8)
    across = rng.random() < 0.5  # cracks run mostly along or mostly across the rolling direction
    for _ in range(max(6, h * w // int(110 * scale * scale))):
        start = rng.uniform((0, 0), (w, h))
        heading = rng.normal(np.pi / 2 if across else 0.0, 0.5)
        walk = _random_walk(rng, start, heading, int(rng.integers(2, 6)), (3 * scale, 8 * scale), 0.6)
        cv2.polylines(canvas, [walk], False, 255, max(1, round(scale)), cv2.LINE_AA)
    return _finish(canvas, 0.6 * scale, -1.0)


def paint_inclusion(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Dark slender blobs strung along the rolling direction, with a few specks beside them."""
    canvas = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        y, tilt = rng.uniform(0.35, 0.65) * h, rng.normal(0.0, 0.08) * h
        for x in np.linspace(rng.uniform(0.15, 0.3), rng.uniform(0.7, 0.85), int(rng.integers(3, 7))):
            centre = (int(x * w), int(y + (x - 0.5) * tilt))
            axes = (max(2, int(rng.uniform(0.08, 0.18) * w)), max(1, int(rng.uniform(0.1, 0.35) * h)))
            cv2.ellipse(canvas, centre, axes, rng.normal(0.0, 8.0), 0, 360, int(rng.integers(170, 256)), -1,
                        cv2.LINE_AA)
    for _ in range(int(rng.integers(2, 7))):
        centre = (int(rng.uniform(0.05, 0.95) * w), int(rng.uniform(0.2, 0.8) * h))
        cv2.circle(canvas, centre, max(1, int(rng.uniform(1, 2.5) * scale)), 200, -1, cv2.LINE_AA)
    return _finish(canvas, 1.0 * scale, -1.0)


def paint_patches(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """A large soft blotch with a ragged edge, usually darker, sometimes lighter."""
    field = cv2.resize(rng.normal(0.0, 1.0, (5, 5)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    blob = np.clip((np.exp(-1.5 * r2) * (1.0 + 0.45 * field) - 0.35) / 0.3, 0.0, 1.0)
    return _finish(blob, 1.5 * scale, -1.0 if rng.random() < 0.75 else 1.0)


def paint_pitted_surface(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """A cluster of small round dark pits, densest in the middle."""
    canvas = np.zeros((h, w), np.uint8)
    count = int(rng.integers(10, 18) + h * w / (60 * scale * scale))
    for _ in range(count):
        x = int(np.clip(rng.normal(0.5, 0.22), 0.03, 0.97) * w)
        y = int(np.clip(rng.normal(0.5, 0.22), 0.03, 0.97) * h)
        cv2.circle(canvas, (x, y), max(1, int(round(rng.uniform(0.8, 2.5) * scale))), 255, -1, cv2.LINE_AA)
    return _finish(canvas, 0.5 * scale, -1.0)


def paint_rolled_in_scale(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Flakes of oxide scale pressed into the strip: small irregular shards stretched along x."""
    canvas = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(6, 14) + h * w / (250 * scale * scale))):
        cx, cy = rng.uniform(0.08, 0.92) * w, rng.uniform(0.1, 0.9) * h
        length, height = rng.uniform(4, 11) * scale, rng.uniform(1.5, 4) * scale
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(5, 8))))
        radii = rng.uniform(0.6, 1.0, len(angles))
        shard = np.stack([cx + length * radii * np.cos(angles), cy + height * radii * np.sin(angles)], 1)
        cv2.fillPoly(canvas, [np.round(shard).astype(np.int32)], int(rng.integers(140, 256)), cv2.LINE_AA)
    return _finish(canvas, 0.7 * scale, -1.0 if rng.random() < 0.6 else 1.0)


def paint_scratches(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """One to three long, thin, nearly straight lines corner to corner, usually bright."""
    canvas = np.zeros((h, w), np.uint8)
    flip = rng.random() < 0.5  # run from top-left to bottom-right, or the other diagonal
    for k in range(int(rng.integers(1, 4))):
        offset = rng.uniform(-0.15, 0.15)
        ends = np.array([[0.0, offset], [1.0, 1.0 + offset]]) if k else np.array([[0.0, 0.0], [1.0, 1.0]])
        middle = ends.mean(0) + rng.normal(0.0, 0.06, 2)
        pts = np.stack([ends[0], middle, ends[1]])
        if flip:
            pts[:, 1] = 1.0 - pts[:, 1]
        pixels = np.round(np.clip(pts, 0, 1) * [w - 1, h - 1]).astype(np.int32)
        cv2.polylines(canvas, [pixels], False, 255, max(1, round(scale * rng.uniform(1, 2))), cv2.LINE_AA)
    return _finish(canvas, 0.5 * scale, 1.0 if rng.random() < 0.7 else -1.0)


# class index -> painter, ((w_min, w_max), (h_min, h_max)) of its region as shares of the image side,
# and a contrast gain: thin strokes need more contrast than broad areas to be as visible
PAINTERS: tuple[Painter, ...] = (paint_crazing, paint_inclusion, paint_patches, paint_pitted_surface,
                                 paint_rolled_in_scale, paint_scratches)
REGION_SIZES: tuple[tuple[tuple[float, float], tuple[float, float]], ...] = (
    ((0.25, 0.6), (0.2, 0.5)),
    ((0.15, 0.45), (0.09, 0.2)),
    ((0.2, 0.55), (0.2, 0.55)),
    ((0.12, 0.35), (0.12, 0.35)),
    ((0.2, 0.6), (0.1, 0.3)),
    ((0.3, 0.8), (0.1, 0.7)),
)
CONTRAST_GAINS: tuple[float, ...] = (1.5, 1.0, 0.9, 1.3, 1.1, 1.3)
