"""Segment labels in the label scan, polygons through every geometric augmentation, and their masks."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.dataloaders import LoadImagesAndLabels, Placement, Sample, create_dataloader
from utils.hyp import Hyp
from data.polygons import polygons_to_mask
from utils.segment_dataset import MASKS, LoadImagesAndMasks, clip_polygon, downsampled_mask, overlap_mask

OBJECT_BGR, BACKGROUND_BGR = (40, 220, 250), (90, 60, 30)  # both far from the letterbox grey 114


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 24) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t)))


# (w, h) and objects as (class, normalised polygon); shapes differ per image, no two objects overlap
IMAGES = [
    ((160, 120), [(0, [(0.1, 0.15), (0.5, 0.1), (0.45, 0.6), (0.15, 0.5)]), (1, _ellipse(0.72, 0.6, 0.2, 0.3))]),
    ((128, 128), [(2, [(0.2, 0.2), (0.8, 0.3), (0.5, 0.85)])]),
    ((120, 160), [(1, _ellipse(0.5, 0.3, 0.35, 0.2)), (0, [(0.2, 0.6), (0.8, 0.6), (0.8, 0.9), (0.2, 0.9)])]),
    ((150, 100), [(2, [(0.05, 0.2), (0.6, 0.05), (0.9, 0.5), (0.5, 0.95), (0.3, 0.6)])]),
]
STILL = Hyp(hsv_h=0, hsv_s=0, hsv_v=0, translate=0, scale=0, fliplr=0, mosaic=0)
WARPED = Hyp(hsv_h=0, hsv_s=0, hsv_v=0, degrees=15, translate=0.1, scale=0.3, shear=5, perspective=0.0005,
             fliplr=0.5, flipud=0.5, mosaic=1.0)


def _polygon_row(cls: int, points) -> str:
    return f"{cls} " + " ".join(f"{x:.6f} {y:.6f}" for x, y in points) + "\n"


@pytest.fixture
def seg_dir(tmp_path: Path) -> Path:
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    for i, ((w, h), objects) in enumerate(IMAGES):
        im = np.full((h, w, 3), BACKGROUND_BGR, np.uint8)
        for _, points in objects:
            px = (np.array(points) * (w, h) - 0.5) * 16  # cv2 puts pixel centres on integers; 4 fraction bits
            cv2.fillPoly(im, [px.round().astype(np.int32)], OBJECT_BGR, shift=4)
        cv2.imwrite(str(tmp_path / "images" / "train" / f"im{i}.png"), im)
        (tmp_path / "labels" / "train" / f"im{i}.txt").write_text("".join(_polygon_row(c, p) for c, p in objects))
    return tmp_path


def _files(root: Path) -> list[Path]:
    return sorted((root / "images" / "train").glob("*.png"))


def _painted_mask(img: torch.Tensor, ratio: int) -> np.ndarray:
    """Pixels nearer the object colour than the background's or the padding's in an output image (3, H, W) RGB,
    averaged over ratio x ratio cells and thresholded at half, as the masks are."""
    im = img.permute(1, 2, 0).numpy()[..., ::-1].astype(int)  # BGR
    distance = [np.abs(im - np.array(colour)).sum(-1) for colour in (OBJECT_BGR, BACKGROUND_BGR, (114,) * 3)]
    painted = (distance[0] < np.minimum(distance[1], distance[2])).astype(np.float32)  # mostly object colour
    h, w = painted.shape
    return cv2.resize(painted, (w // ratio, h // ratio), interpolation=cv2.INTER_AREA) > 0.5


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# ---------------------------------------------------------------- labels

def test_polygon_rows_give_boxes_and_mixed_or_bad_rows_are_dropped_by_name(seg_dir, caplog):
    labels = seg_dir / "labels" / "train"
    (labels / "im1.txt").write_text("2 0.2 0.2 0.8 0.3 0.5 0.85\n"
                                    "1 0.5 0.5 0.2 0.2\n"  # a box row among polygons
                                    "0 0.1 0.1 0.5 0.1 0.3\n"  # odd coordinate count
                                    "0 0.5 0.1 0.5 0.5 0.5 0.9\n"  # a one-pixel-wide vertical scratch: kept
                                    "0 0.1 0.1 1.5 0.1 0.3 0.4\n"  # outside the image
                                    "2 0.2 0.2 0.8 0.3 0.5 0.85\n")  # duplicate
    (labels / "im2.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.1 0.1 0.3 0.1 0.2 0.3\n")  # a polygon among boxes
    with caplog.at_level(logging.INFO, logger="utils.dataloaders"):
        ds = LoadImagesAndLabels(_files(seg_dir), imgsz=128, nc=3)
    assert "5 label rows dropped" in caplog.text
    for line, why in ((2, "a box row in a polygon label file"), (3, "expected a polygon"),
                      (5, "coordinates outside [0, 1]"), (6, "duplicate row")):
        assert f"{labels / 'im1.txt'}:{line}: {why}" in caplog.text
    assert f"{labels / 'im2.txt'}:2: a polygon row in a box label file" in caplog.text
    px = 1 / 128  # vertices are pixel centres: a region reaches half a pixel beyond them (image 1 is 128 px)
    np.testing.assert_allclose(ds.labels[1], [[2, 0.5, 0.525, 0.6 + px, 0.65 + px], [0, 0.5, 0.5, px, 0.8 + px]],
                               atol=1e-6)
    np.testing.assert_allclose(ds.segments[1][0], [[0.2, 0.2], [0.8, 0.3], [0.5, 0.85]], atol=1e-6)
    assert ds.segments[2] == [] and len(ds.labels[2]) == 1  # a box file keeps its box
    cached = LoadImagesAndLabels(_files(seg_dir), imgsz=128, nc=3)
    assert cached.from_cache and all(np.array_equal(a, b) for a, b in zip(cached.segments[0], ds.segments[0]))


def test_synthetic_segment_labels_give_the_synthetic_detection_boxes(tmp_path):
    """The generator writes each instance as a box (task detect) and as its outline (task segment); the scan
    turns the outline back into the same box."""
    from data.synthetic import generate_dataset

    kwargs = dict(seed=0, size=96, n_train=4, n_val=1)
    boxes = LoadImagesAndLabels(sorted((generate_dataset(tmp_path / "det", **kwargs) / "images" / "train").glob("*")))
    polys = LoadImagesAndLabels(sorted((generate_dataset(tmp_path / "seg", task="segment", **kwargs) / "images" /
                                        "train").glob("*")))
    assert sum(len(lb) for lb in boxes.labels) > 4
    assert all(len(seg) == len(lb) for seg, lb in zip(polys.segments, polys.labels))
    for a, b in zip(boxes.labels, polys.labels):
        np.testing.assert_allclose(b, a, atol=1e-5)
    masks = LoadImagesAndMasks(polys.im_files, imgsz=96, augment=True, hyp=WARPED)  # thin scratches, crops
    for i in range(len(masks)):
        _, targets, _, _, extras = masks[i]
        assert extras[MASKS].shape == (1, 24, 24) and extras[MASKS].max() <= len(targets)


def test_a_segmentation_dataset_refuses_box_labels_by_file(seg_dir):
    (seg_dir / "labels" / "train" / "im3.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(ValueError, match=r"im3.txt: box labels .* as in 1 of 4 label files"):
        LoadImagesAndMasks(_files(seg_dir), imgsz=128)


# ---------------------------------------------------------------- rasterising

def test_masks_are_the_projects_rasterisation_averaged_over_cells():
    region = np.array([[0.5, 0.5], [5.5, 0.5], [5.5, 2.5], [0.5, 2.5]])  # pixels 0-5 x 0-2 (vertices: centres)
    full = downsampled_mask(region, (8, 8), ratio=1)
    np.testing.assert_array_equal(full, polygons_to_mask([region / 8], 8, 8))
    assert full.sum() == 18 and full[:3, :6].all()
    np.testing.assert_array_equal(downsampled_mask(region, (8, 8), ratio=2), [[1, 1, 1, 0], [1, 1, 1, 0],
                                                                            [0, 0, 0, 0], [0, 0, 0, 0]])
    scratch = np.array([[3.5, 0.5], [3.5, 7.5], [3.5, 4.0]])  # one pixel wide, no area
    assert downsampled_mask(scratch, (8, 8)).sum() == 8  # kept at full size ...
    assert downsampled_mask(scratch, (8, 8), ratio=2).sum() == 4  # ... in cells it half covers ...
    assert downsampled_mask(scratch, (8, 8), ratio=4).sum() == 0  # ... and gone from cells it covers a quarter of
    square = np.array([[1.0, 1.0], [3.0, 1.0], [3.0, 5.0], [1.0, 5.0]])
    assert (clip_polygon(square * 2, (0, 0, 4, 5)) == [[2, 5], [2, 2], [4, 2], [4, 5]]).all()


def test_overlap_mask_paints_larger_objects_first():
    big = np.array([[0.5, 0.5], [15.5, 0.5], [15.5, 15.5], [0.5, 15.5]])
    small = np.array([[4.5, 4.5], [7.5, 4.5], [7.5, 7.5], [4.5, 7.5]])
    mask, order = overlap_mask([small, big], (16, 16), ratio=2)
    assert order.tolist() == [1, 0] and mask.dtype == np.int32
    assert (mask[2:4, 2:4] == 2).all() and (mask == 1).sum() == 64 - 4  # the small one stays on top
    empty, order = overlap_mask([], (16, 16), ratio=4)  # a background image, or every object cropped away
    assert empty.shape == (4, 4) and not empty.any() and len(order) == 0


# ---------------------------------------------------------------- geometry

@pytest.mark.parametrize("scale_mode", [False, True])
def test_letterboxed_or_stretched_masks_match_the_painted_objects(seg_dir, scale_mode):
    ds = LoadImagesAndMasks(_files(seg_dir), imgsz=160, hyp=STILL, rect=not scale_mode, scale_mode=scale_mode,
                            batch_size=2, pad=0.5)
    for i in range(len(ds)):
        img, targets, _, _, extras = ds[i]
        masks = extras[MASKS]
        assert masks.shape == (1, img.shape[1] // 4, img.shape[2] // 4)
        assert sorted(masks.unique().tolist()) == list(range(len(targets) + 1))
        assert _iou(masks[0].numpy() > 0, _painted_mask(img, 4)) >= 0.9


def test_polygons_keep_only_the_visible_part_of_their_tile(seg_dir):
    ds = LoadImagesAndMasks(_files(seg_dir), imgsz=128, hyp=STILL)
    left_half = Placement(1, np.diag([128.0, 128.0, 1.0]), (0, 0, 64, 128))  # image 1 (128 x 128), cut at x = 64
    labels, polygons = ds.placed_polygons(Sample(np.zeros((128, 128, 3), np.uint8), np.zeros((0, 5)), [left_half]),
                                          (128, 128))
    y_cut = 108.8 + (63.5 - 64) / (25.6 - 64) * (25.6 - 108.8)  # the edge (64, 108.8)-(25.6, 25.6) at x = 63.5
    np.testing.assert_allclose(labels, [[2, 25.6 - 0.5, 25.6 - 0.5, 64, y_cut + 0.5]], atol=1e-4)
    assert polygons[0][:, 0].max() == 63.5  # cut through the centres of the last visible pixels


class RecordingMasks(LoadImagesAndMasks):
    """Notes each sample's flips and tile count, which __getitem__ draws internally."""

    def _finish(self, index, sample):
        self.record.append((sample.flip_lr, sample.flip_ud, len(sample.placements)))
        return super()._finish(index, sample)


@pytest.mark.parametrize("scale_mode", [False, True])
def test_a_polygon_survives_mosaic_affine_and_flips(seg_dir, scale_mode):
    """Paint, augment, threshold the image: the rasterised masks cover what the warped image shows."""
    ds = RecordingMasks(_files(seg_dir), imgsz=160, augment=True, hyp=WARPED, seed=3, scale_mode=scale_mode)
    ds.record, ious = [], []
    for epoch in range(3):
        for i in range(len(ds)):
            img, targets, _, _, extras = ds[(epoch, i)]
            painted = _painted_mask(img, 4)
            if painted.sum() < 20:  # the crop showed (almost) no object
                continue
            ious.append(_iou(extras[MASKS][0].numpy() > 0, painted))
            _check_boxes_hug_masks(targets, extras[MASKS][0])
    assert all(tiles == 4 for *_, tiles in ds.record)
    assert any(lr for lr, _, _ in ds.record) and any(ud for _, ud, _ in ds.record)
    assert len(ious) >= 8 and min(ious) >= 0.9, ious


def _check_boxes_hug_masks(targets: torch.Tensor, overlap: torch.Tensor) -> None:
    """Instance k + 1 of the overlap map lies inside target k's box (mask px), touching it within 1 px."""
    mh, mw = overlap.shape
    for k, (_, _, x, y, w, h) in enumerate(targets.tolist()):
        ys, xs = np.nonzero(overlap.numpy() == k + 1)
        if not len(xs):
            continue  # fully covered by smaller objects (none in this fixture) or sub-pixel
        x1, y1, x2, y2 = (x - w / 2) * mw, (y - h / 2) * mh, (x + w / 2) * mw, (y + h / 2) * mh
        assert x1 - 1 <= xs.min() and xs.max() + 1 <= x2 + 1 and y1 - 1 <= ys.min() and ys.max() + 1 <= y2 + 1


# ---------------------------------------------------------------- batches

@pytest.mark.parametrize("overlap", [True, False])
def test_batches_carry_masks_in_target_order(seg_dir, overlap):
    loader, ds = create_dataloader(_files(seg_dir), 128, 4, 32, hyp=WARPED, augment=True, workers=0,
                                   dataset_cls=LoadImagesAndMasks, dataset_kwargs={"overlap": overlap})
    imgs, targets, _, _, extras = next(iter(loader))
    masks = extras[MASKS]
    if overlap:
        assert masks.shape == (4, 32, 32) and masks.dtype == torch.int32
        for b in range(4):  # image b's k-th target is instance k + 1 of its map
            assert masks[b].max() == (targets[:, 0] == b).sum()
    else:
        assert masks.shape == (len(targets), 32, 32) and masks.dtype == torch.uint8
        for t, m in zip(targets.tolist(), masks):  # each target's mask lies inside its own box
            ys, xs = np.nonzero(m.numpy())
            assert len(xs) and abs((xs.min() + xs.max() + 1) / 2 - t[2] * 32) <= 1
            assert abs((ys.min() + ys.max() + 1) / 2 - t[3] * 32) <= 1
