"""Images, segment polygons and their masks for instance segmentation (YOLOv5-seg's data).

`LoadImagesAndMasks` is the detection dataset plus masks: the base class builds each sample (letterbox or
`--scale` stretch, mosaic, random affine/perspective, mixup) and records where every source image landed
(`Placement`); the polygons then follow the same placements, are clipped to what stays visible, flipped
with the image, and rasterised at 1/mask_ratio of the input. Boxes come from the moved polygons, so box
and mask always describe the same visible part of an object.

Coordinates are continuous pixels, as in utils.augmentations: pixel i covers [i, i + 1]. As in
data.polygons (the project's one polygon convention), vertices are pixel centres: a region's polygon runs
through the centres of its boundary pixels, so the region reaches half a pixel beyond the vertices, and a
one-pixel-wide scratch is a polygon of no area. Masks are rasterised by data.polygons at the full input
size and averaged down to 1/mask_ratio: a mask cell is set when at least half of its pixels are, so
structures much thinner than mask_ratio pixels fade, as in YOLOv5.

Masks ride in the batch's extras under `MASKS`, so the shared training loop and validator carry them
unchanged; the segmentation task keeps them away from the model's side inputs.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from data.polygons import polygons_to_mask
from utils.augmentations import box_candidates
from utils.dataloaders import LoadImagesAndLabels, Placement, Sample, collate_fn

MASKS = "masks"  # the extras key of the masks: (B, h, w) instance numbers, or (N, h, w) one per target
MIN_AREA_KEPT = 0.10  # a warped object keeping less of its (scaled) box area than this is dropped, as boxes are
MASK_COVERAGE = 0.5  # share of a mask cell's pixels the object must cover for the cell to be set
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
        if inside[k - 1] != inside[k]:  # the edge crosses the bound: keep the crossing point
            t = (bound - a[axis]) / (b[axis] - a[axis])
            out.append(a + t * (b - a))
        if inside[k]:
            out.append(b)
    return np.array(out, dtype=xy.dtype).reshape(-1, 2)


def clip_polygon(xy: np.ndarray, rect: Rect) -> np.ndarray:
    """The part of a polygon inside an axis-aligned rectangle (a convex clip: the result may be empty)."""
    x1, y1, x2, y2 = rect
    for axis, bound, below in ((0, x1, False), (0, x2, True), (1, y1, False), (1, y2, True)):
        xy = _clip_half_plane(xy, axis, bound, below)
    return xy


def downsampled_mask(xy: np.ndarray, hw: tuple[int, int], ratio: int = 1) -> np.ndarray:
    """(h // ratio, w // ratio) uint8 {0, 1} mask of a polygon in pixels of an (h, w) image.

    Only the polygon's neighbourhood is rasterised at full size (data.polygons), then averaged over
    ratio x ratio cells.
    """
    mh, mw = hw[0] // ratio, hw[1] // ratio
    mask = np.zeros((mh, mw), np.uint8)
    if not len(xy):
        return mask
    x1, y1 = (max(math.floor((v - 1) / ratio), 0) for v in xy.min(0))  # mask cells around the polygon
    x2, y2 = (min(math.ceil((v + 1) / ratio), m) for v, m in zip(xy.max(0), (mw, mh)))
    if x2 <= x1 or y2 <= y1:
        return mask
    ch, cw = (y2 - y1) * ratio, (x2 - x1) * ratio
    local = (xy - (x1 * ratio, y1 * ratio)) / (cw, ch)  # normalised to the crop, as data.polygons reads it
    full = polygons_to_mask([local], ch, cw)
    cells = full.reshape(y2 - y1, ratio, x2 - x1, ratio).mean((1, 3))
    mask[y1:y2, x1:x2] = cells >= MASK_COVERAGE
    return mask


def instance_masks(polygons: list[np.ndarray], hw: tuple[int, int], ratio: int = 1) -> np.ndarray:
    """(n, h // ratio, w // ratio) uint8 {0, 1}: one mask per polygon (pixels of the hw image)."""
    masks = [downsampled_mask(np.asarray(p, np.float64), hw, ratio) for p in polygons]
    return np.stack(masks) if masks else np.zeros((0, hw[0] // ratio, hw[1] // ratio), np.uint8)


def overlap_mask(polygons: list[np.ndarray], hw: tuple[int, int], ratio: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """YOLOv5's overlap masks: one (h // ratio, w // ratio) int32 map of instance numbers, and their order.

    Instances are sorted by mask area, largest first (stable), and painted in that order, so a smaller
    object on top of a larger one keeps its pixels. Pixel value k + 1 marks instance order[k]; 0 is
    background. Labels must be reordered by `order` to match.
    """
    masks = instance_masks(polygons, hw, ratio)
    order = np.argsort(-masks.sum((1, 2)), kind="stable")
    overlap = np.zeros(masks.shape[1:], np.int32)
    for k, i in enumerate(order):
        overlap[masks[i] > 0] = k + 1
    return overlap, order


class LoadImagesAndMasks(LoadImagesAndLabels):
    """YOLOv5 segment labels -> augmented images, targets and masks at 1/mask_ratio of the input.

    With `overlap` (YOLOv5's default) each image has one (h, w) int32 map of instance numbers: value k + 1
    marks the image's k-th target (larger objects painted first, so smaller ones stay on top; targets are
    ordered to match). Without it, every target has its own (h, w) uint8 {0, 1} mask, in target order.
    """

    def __init__(self, img_files, *args, mask_ratio: int = 4, overlap: bool = True, **kwargs) -> None:
        if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, int) or mask_ratio < 1:
            raise ValueError(f"mask_ratio={mask_ratio!r}: expected a positive integer (YOLOv5: 4)")
        self.mask_ratio, self.overlap = mask_ratio, bool(overlap)
        super().__init__(img_files, *args, **kwargs)
        boxes_only = [f for f, lb, seg in zip(self.label_files, self.labels, self.segments) if len(lb) and not seg]
        if boxes_only:
            labelled = sum(len(lb) > 0 for lb in self.labels)
            raise ValueError(f"{self.prefix}{boxes_only[0]}: box labels (class x y w h) in a segmentation dataset, "
                             f"as in {len(boxes_only)} of {labelled} label files; segmentation needs YOLOv5 polygon "
                             "rows `class x1 y1 x2 y2 x3 y3 ...`")

    @staticmethod
    def collate_fn(batch: list[tuple]) -> tuple:
        """As utils.dataloaders.collate_fn, with extras[MASKS] concatenated: (B, h, w) overlap maps or
        (N, h, w) per-target masks in the order of the targets."""
        masks = [sample[4][MASKS] for sample in batch]
        rest = [(*sample[:4], {k: v for k, v in sample[4].items() if k != MASKS}) for sample in batch]
        imgs, targets, paths, shapes, extras = collate_fn(rest)
        extras[MASKS] = torch.cat(masks, 0)
        return imgs, targets, paths, shapes, extras

    def _finish(self, index: int, sample: Sample) -> tuple:
        """Move the polygons as the pixels were moved, rasterise them, then finish as the base class."""
        h, w = sample.image.shape[:2]
        labels, polygons = self.placed_polygons(sample, (h, w))
        for p in polygons:  # the base class flips the image and the boxes
            if sample.flip_lr:
                p[:, 0] = w - p[:, 0]
            if sample.flip_ud:
                p[:, 1] = h - p[:, 1]
        if self.overlap:
            mask, order = overlap_mask(polygons, (h, w), self.mask_ratio)
            masks, labels = torch.from_numpy(mask[None]), labels[order]
        else:
            masks = torch.from_numpy(instance_masks(polygons, (h, w), self.mask_ratio))
        sample.labels = labels
        img, labels_out, path, shapes, extras = super()._finish(index, sample)
        extras[MASKS] = masks
        return img, labels_out, path, shapes, extras

    def placed_polygons(self, sample: Sample, out_hw: tuple[int, int]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Every source polygon of the sample in output pixels (before flips) -> ((n, 5) [cls, xyxy], polygons).

        A polygon is cut to its tile's visible part on the canvas, warped, and cut to the output;
        under augmentation it is dropped, as a box is, when too little of it stays (utils.augmentations).
        Its box reaches half a pixel beyond its vertices (they are pixel centres).
        """
        rows, kept = [], []
        for placement in sample.placements:
            classes = self.labels[placement.index][:, 0]
            for cls, polygon in zip(classes, self.segments[placement.index]):
                moved = self._place(polygon, placement, out_hw)
                if moved is not None:
                    rows.append((cls, *_region_box(moved, out_hw)))
                    kept.append(moved)
        return np.array(rows, np.float64).reshape(-1, 5), kept

    def _place(self, polygon: np.ndarray, p: Placement, out_hw: tuple[int, int]) -> np.ndarray | None:
        """One normalised polygon through placement p -> output pixels, or None when nothing usable is left."""
        canvas = clip_polygon(transform_points(polygon.astype(np.float64), p.to_canvas), _pixel_centres(p.rect))
        if not len(canvas):
            return None
        out = clip_polygon(transform_points(canvas, p.to_output), _pixel_centres((0, 0, out_hw[1], out_hw[0])))
        if not len(out):
            return None
        if self.augment:
            gain = np.sqrt(abs(np.linalg.det(p.to_output[:2, :2])))  # the warp's scale (1 without a warp)
            before = _region_box(canvas, (math.inf, math.inf))[:, None] * gain
            if not box_candidates(before, _region_box(out, out_hw)[:, None], area_thr=MIN_AREA_KEPT)[0]:
                return None
        return out


def _pixel_centres(rect: Rect) -> Rect:
    """The rectangle through the centres of a pixel rectangle's edge pixels: where a polygon whose vertices are
    pixel centres is cut so that its region ends at the rectangle's edge."""
    x1, y1, x2, y2 = rect
    return x1 + 0.5, y1 + 0.5, x2 - 0.5, y2 - 0.5


def _region_box(xy: np.ndarray, limit_hw: tuple[float, float]) -> np.ndarray:
    """(4,) x1 y1 x2 y2 px of the region a polygon outlines: its vertices' extent and half a pixel more each
    side, within [0, w] x [0, h]."""
    lo = np.maximum(xy.min(0) - 0.5, 0)
    hi = np.minimum(xy.max(0) + 0.5, (limit_hw[1], limit_hw[0]))
    return np.concatenate((lo, hi))
