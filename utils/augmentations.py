"""Image augmentations with YOLOv5's hyp keys, and the geometry to replay them on extra maps.

Every random choice comes from an explicit `np.random.Generator`, so a training sample is
reproducible from (seed, epoch, index). Geometric steps report the matrix they applied, so a
dataset can warp per-image maps (D3N's diffusion latents) exactly like the pixels (`warp_map`).

Coordinates are continuous pixels: pixel i covers [i, i + 1]. A "source-normalised" point (u, v)
lies in [0, 1]² over the whole original image, which is how extra maps are laid out.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

PAD_VALUE = 114  # grey of letterbox borders and of the canvas outside warped images


def _hw(new_shape: int | tuple[int, int]) -> tuple[int, int]:
    return (new_shape, new_shape) if isinstance(new_shape, int) else (int(new_shape[0]), int(new_shape[1]))


def letterbox(im: np.ndarray, new_shape: int | tuple[int, int] = 640, color=(PAD_VALUE,) * 3, auto: bool = True,
              scaleup: bool = True, stride: int = 32) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize keeping the aspect ratio, then pad to `new_shape` (h, w) — or, with `auto`, only to a stride multiple.

    Returns (image, (rw, rh) gain — equal, (dw, dh)): dw, dh are the left and top padding actually
    applied (the right and bottom sides get the remainder), so `x_out = x_in * rw + dw` exactly.
    """
    h, w = im.shape[:2]
    new_h, new_w = _hw(new_shape)
    r = min(new_h / h, new_w / w)
    if not scaleup:  # only shrink: a small image is not blown up (better val mAP, as in YOLOv5)
        r = min(r, 1.0)
    unpad_w, unpad_h = max(1, round(w * r)), max(1, round(h * r))
    dw, dh = new_w - unpad_w, new_h - unpad_h
    if auto:
        dw, dh = dw % stride, dh % stride
    if (unpad_w, unpad_h) != (w, h):
        im = cv2.resize(im, (unpad_w, unpad_h), interpolation=cv2.INTER_LINEAR)
    left, top = dw // 2, dh // 2
    im = cv2.copyMakeBorder(im, top, dh - top, left, dw - left, cv2.BORDER_CONSTANT, value=color)
    return im, (r, r), (float(left), float(top))


def stretch(im: np.ndarray, new_shape: int | tuple[int, int]) -> tuple[np.ndarray, tuple[float, float]]:
    """Letterbox-free resize of the whole image to `new_shape` (h, w), as the D3N paper feeds it.

    Returns (image, (rw, rh)); the gains differ when the aspect ratio changes.
    """
    h, w = im.shape[:2]
    new_h, new_w = _hw(new_shape)
    if (new_h, new_w) != (h, w):
        shrink = new_h < h and new_w < w
        im = cv2.resize(im, (new_w, new_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return im, (new_w / w, new_h / h)


def augment_hsv(im: np.ndarray, hgain: float = 0.5, sgain: float = 0.5, vgain: float = 0.5,
                rng: np.random.Generator | None = None) -> None:
    """Random hue, saturation and value gains, in place on a BGR uint8 image (photometric only)."""
    if not (hgain or sgain or vgain):
        return
    rng = rng if rng is not None else np.random.default_rng()
    r = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(im, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)  # OpenCV hue runs 0-179
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=im)


def box_candidates(box1: np.ndarray, box2: np.ndarray, wh_thr: float = 2, ar_thr: float = 100,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Which boxes survive a warp: (4, n) xyxy before (scaled by the warp gain) and after -> (n,) bool.

    A box must stay wider and taller than `wh_thr` px, keep `area_thr` of its area and an aspect
    ratio below `ar_thr`; slivers cut off at the border would only teach noise.
    """
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    aspect = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (aspect < ar_thr)


def perspective_matrix(in_hw: tuple[int, int], out_hw: tuple[int, int], degrees: float, translate: float,
                       scale: float, shear: float, perspective: float,
                       rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Draw YOLOv5's random warp: (3, 3) matrix input px -> output px, and its scale gain.

    Centre the input, then perspective, rotation + scale, shear, and a translation that puts the
    centre at (0.5 ± translate) of the output. All zeros and equal sizes give the identity.
    """
    C = np.eye(3)
    C[0, 2], C[1, 2] = -in_hw[1] / 2, -in_hw[0] / 2
    P = np.eye(3)
    P[2, 0], P[2, 1] = rng.uniform(-perspective, perspective, 2)
    angle, gain = rng.uniform(-degrees, degrees), rng.uniform(1 - scale, 1 + scale)
    R = np.eye(3)
    R[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=angle, scale=gain)
    S = np.eye(3)
    S[0, 1], S[1, 0] = np.tan(rng.uniform(-shear, shear, 2) * math.pi / 180)
    T = np.eye(3)
    T[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_hw[1]
    T[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_hw[0]
    return T @ S @ R @ P @ C, float(gain)


def warp_boxes(boxes: np.ndarray, M: np.ndarray, width: int, height: int) -> np.ndarray:
    """(n, 4) xyxy px through a (3, 3) warp -> the (n, 4) xyxy hull of the warped corners, clipped."""
    n = len(boxes)
    corners = np.ones((n * 4, 3))
    corners[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
    corners = corners @ M.T
    xy = (corners[:, :2] / corners[:, 2:3]).reshape(n, 8)
    x, y = xy[:, 0::2], xy[:, 1::2]
    out = np.stack((x.min(1), y.min(1), x.max(1), y.max(1)), 1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def random_perspective(im: np.ndarray, targets: np.ndarray = (), degrees: float = 10.0, translate: float = 0.1,
                       scale: float = 0.1, shear: float = 10.0, perspective: float = 0.0,
                       border: tuple[int, int] = (0, 0),
                       rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random rotation, scale, shear, translation and perspective of an image and its boxes.

    targets: (n, 5) [cls, x1, y1, x2, y2] px. A negative `border` crops (a 2s mosaic canvas -> s).
    Returns (image, surviving targets, M): M (3, 3) float64 is the map input px -> output px that
    was applied (the identity when nothing changed), for replaying the warp on extra maps.
    """
    rng = rng if rng is not None else np.random.default_rng()
    targets = np.asarray(targets, dtype=np.float64).reshape(-1, 5)
    in_hw = im.shape[:2]
    height, width = in_hw[0] + 2 * border[0], in_hw[1] + 2 * border[1]
    M, gain = perspective_matrix(in_hw, (height, width), degrees, translate, scale, shear, perspective, rng)
    if tuple(border) == (0, 0) and np.array_equal(M, np.eye(3)):
        return im, targets, np.eye(3)
    pad = (PAD_VALUE,) * 3
    if perspective:
        im = cv2.warpPerspective(im, M, dsize=(width, height), borderValue=pad)
    else:
        im = cv2.warpAffine(im, M[:2], dsize=(width, height), borderValue=pad)
    if len(targets):
        boxes = warp_boxes(targets[:, 1:5], M, width, height)
        keep = box_candidates(targets[:, 1:5].T * gain, boxes.T, area_thr=0.10)
        targets = np.concatenate((targets[keep, :1], boxes[keep]), 1)
    return im, targets, M


def mixup(im: np.ndarray, labels: np.ndarray, im2: np.ndarray, labels2: np.ndarray,
          rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Blend two equally sized images with a Beta(32, 32) weight r; keep both label sets.

    Returns (image, labels, r): image = r * im + (1 - r) * im2, so extra maps can be mixed alike.
    """
    rng = rng if rng is not None else np.random.default_rng()
    r = float(rng.beta(32.0, 32.0))
    out = (im.astype(np.float32) * r + im2.astype(np.float32) * (1 - r)).astype(np.uint8)
    return out, np.concatenate((labels, labels2), 0), r


def mosaic_span(centre: int, size: int, limit: int, before: bool) -> tuple[int, int, int, int]:
    """One axis of a mosaic tile of `size` px meeting the mosaic centre from before/after it.

    Returns (a1, a2, b1, b2): canvas span [a1, a2) inside [0, limit) shows the tile's [b1, b2).
    """
    if before:
        a1, a2 = max(centre - size, 0), centre
        return a1, a2, size - (a2 - a1), size
    a1, a2 = centre, min(centre + size, limit)
    return a1, a2, 0, a2 - a1


def warp_map(src: torch.Tensor, to_canvas: np.ndarray, rect: tuple[float, float, float, float],
             to_output: np.ndarray, out_hw: tuple[int, int], stride: int) -> torch.Tensor:
    """Resample a map laid over a whole source image onto an output grid, as its pixels were moved.

    src: (C, h, w), any resolution, stretched over the source image. `to_canvas` (3, 3) maps
    source-normalised (u, v) to canvas px, where the source is visible inside `rect` (x1, y1, x2, y2,
    half-open); `to_output` (3, 3) maps canvas px to output px. Output cell (i, j) of `out_hw` sits at
    ((j + 0.5), (i + 0.5)) * stride px. Bilinear, align_corners=False; zeros where the source is not
    visible. Returns (C, *out_hw) in src's dtype (float32 for integer maps). Sampling runs in float32 even
    for fp16 latents: PyTorch's CPU grid_sample is 2.5-5x slower in half precision than converting there
    and back (a 48 x 40 x 40 map onto 20 x 20 cells: 0.32 ms against 0.07).
    """
    ho, wo = out_hw
    dtype = src.dtype if src.is_floating_point() else torch.float32
    out = torch.zeros((src.shape[0], ho, wo), dtype=dtype)
    ys, xs = np.mgrid[0:ho, 0:wo]
    cells = np.stack(((xs + 0.5) * stride, (ys + 0.5) * stride, np.ones((ho, wo))), -1)  # (ho, wo, 3) output px
    canvas = cells @ np.linalg.inv(to_output).T
    canvas = canvas / canvas[..., 2:]
    visible = ((canvas[..., 0] >= rect[0]) & (canvas[..., 0] < rect[2])
               & (canvas[..., 1] >= rect[1]) & (canvas[..., 1] < rect[3]))  # (ho, wo)
    rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
    if not len(rows):
        return out
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # sample only where the tile shows
    uv = canvas[box] @ np.linalg.inv(to_canvas).T
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    grid = torch.from_numpy(2 * uv[..., :2] / uv[..., 2:] - 1).to(work)[None]  # (1, h', w', 2)
    sampled = F.grid_sample(src[None].to(work), grid, mode="bilinear", padding_mode="border", align_corners=False)
    out[:, box[0], box[1]] = (sampled[0] * torch.from_numpy(visible[box]).to(work)).to(dtype)
    return out
