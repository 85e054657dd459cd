"""Images, segment polygons and their masks for instance segmentation (YOLOv5-seg's data).

`LoadImagesAndMasks` is the detection dataset plus masks: the base class builds each sample (letterbox or
`--scale` stretch, mosaic, random affine/perspective, mixup) and records where every source image landed
(`Placement`); the polygons then follow the same placements, are clipped to what stays visible, flipped
with the image, and rasterised at 1/mask_ratio of the input. Boxes come from the moved polygons, so box
and mask always describe the same visible part of an object.

Masks ride in the batch's extras under `MASKS`, so the shared training loop and validator carry them
unchanged; the segmentation task keeps them away from the model's side inputs.
"""

from __future__ import annotations

import numpy as np
import torch

from utils.augmentations import box_candidates
from utils.dataloaders import LoadImagesAndLabels, Placement, Sample, collate_fn
from utils.polygons import (clip_polygon, polygon_area, polygons_to_masks, polygons_to_overlap_mask,
                            transform_points)

MASKS = "masks"  # the extras key of the masks: (B, h, w) instance numbers, or (N, h, w) one per target
MIN_AREA_KEPT = 0.10  # a warped object keeping less of its (scaled) box area than this is dropped, as boxes are


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
            mask, order = polygons_to_overlap_mask(polygons, (h, w), self.mask_ratio)
            masks, labels = torch.from_numpy(mask[None]), labels[order]
        else:
            masks = torch.from_numpy(polygons_to_masks(polygons, (h, w), self.mask_ratio))
        sample.labels = labels
        img, labels_out, path, shapes, extras = super()._finish(index, sample)
        extras[MASKS] = masks
        return img, labels_out, path, shapes, extras

    def placed_polygons(self, sample: Sample, out_hw: tuple[int, int]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Every source polygon of the sample in output pixels (before flips) -> ((n, 5) [cls, xyxy], polygons).

        A polygon is clipped to its tile's visible part on the canvas, warped, and clipped to the output;
        under augmentation it is dropped, as a box is, when too little of it stays (utils.augmentations).
        """
        rows, kept = [], []
        for placement in sample.placements:
            classes = self.labels[placement.index][:, 0]
            for cls, polygon in zip(classes, self.segments[placement.index]):
                moved = self._place(polygon, placement, out_hw)
                if moved is not None:
                    rows.append((cls, *moved.min(0), *moved.max(0)))
                    kept.append(moved)
        return np.array(rows, np.float64).reshape(-1, 5), kept

    def _place(self, polygon: np.ndarray, p: Placement, out_hw: tuple[int, int]) -> np.ndarray | None:
        """One normalised polygon through placement p -> output pixels, or None when nothing usable is left."""
        canvas = clip_polygon(transform_points(polygon.astype(np.float64), p.to_canvas), p.rect)
        if polygon_area(canvas) <= 0:
            return None
        out = clip_polygon(transform_points(canvas, p.to_output), (0, 0, out_hw[1], out_hw[0]))
        if polygon_area(out) <= 0:
            return None
        if self.augment:
            gain = np.sqrt(abs(np.linalg.det(p.to_output[:2, :2])))  # the warp's scale (1 without a warp)
            before = np.concatenate((canvas.min(0), canvas.max(0)))[:, None] * gain
            after = np.concatenate((out.min(0), out.max(0)))[:, None]
            if not box_candidates(before, after, area_thr=MIN_AREA_KEPT)[0]:
                return None
        return out
