"""Masks <-> normalised polygons: exact round trips, holes filled, specks dropped, parts merged."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from data.polygons import mask_to_polygons, merge_polygons, polygons_to_mask, polygons_to_masks


def filled(mask: np.ndarray) -> np.ndarray:
    """The mask with every hole filled: everything not reachable from the border's background."""
    padded = np.pad((mask > 0).astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 2)
    return (flood != 2)[1:-1, 1:-1].astype(np.uint8)


def ring_and_blobs() -> np.ndarray:
    mask = np.zeros((60, 80), np.uint8)
    cv2.circle(mask, (20, 25), 15, 1, -1)
    cv2.circle(mask, (20, 25), 6, 0, -1)  # a hole
    mask[24:27, 19:22] = 1  # a region inside the hole: part of the ring's polygon
    cv2.ellipse(mask, (60, 40), (14, 8), 30, 0, 360, 1, -1)
    mask[5, 70] = 1  # a one-pixel speck
    mask[55, 40:60] = 1  # a one-pixel-high line
    return mask


def test_outer_contours_give_back_the_regions_with_holes_filled():
    mask = ring_and_blobs()
    polygons, dropped = mask_to_polygons(mask)
    assert len(polygons) == 4 and dropped == 0
    assert all(p.shape[1] == 2 and len(p) >= 3 and p.min() > 0 and p.max() < 1 for p in polygons)
    np.testing.assert_array_equal(polygons_to_mask(polygons, 60, 80), filled(mask))
    assert polygons_to_masks(polygons, 60, 80).sum(0).max() == 1  # the regions are disjoint


def test_vertices_are_pixel_centres():
    mask = np.zeros((10, 20), np.uint8)
    mask[2:5, 4:10] = 1  # pixels x 4..9, y 2..4
    (polygon,), _ = mask_to_polygons(mask)
    assert sorted(map(tuple, polygon)) == sorted([(4.5 / 20, 2.5 / 10), (9.5 / 20, 2.5 / 10),
                                                  (9.5 / 20, 4.5 / 10), (4.5 / 20, 4.5 / 10)])


def test_min_area_drops_small_regions_and_counts_them():
    polygons, dropped = mask_to_polygons(ring_and_blobs(), min_area=21)
    assert len(polygons) == 2 and dropped == 2  # the speck (1 px) and the line (20 px)
    polygons, dropped = mask_to_polygons(ring_and_blobs(), min_area=20)
    assert len(polygons) == 3 and dropped == 1


def test_polygons_rasterise_at_another_size():
    mask = np.zeros((100, 100), np.uint8)
    mask[20:60, 30:90] = 1
    small = polygons_to_mask(mask_to_polygons(mask)[0], 25, 25)
    ys, xs = np.nonzero(small)
    bounds = np.array([ys.min(), ys.max(), xs.min(), xs.max()])
    assert np.abs(bounds - [5, 14, 8, 22]).max() <= 1  # pixels 20..59 and 30..89 at a quarter of the size
    assert small.sum() == pytest.approx(40 * 60 / 16, rel=0.15)


def test_merged_parts_cover_every_part_plus_thin_bridges():
    mask = np.zeros((64, 64), np.uint8)
    for x, y, r in ((10, 10, 5), (50, 12, 4), (30, 50, 6), (55, 55, 2)):
        cv2.circle(mask, (x, y), r, 1, -1)
    parts, _ = mask_to_polygons(mask)
    merged = merge_polygons(parts)
    assert merged.shape == (sum(len(p) for p in parts) + 2 * (len(parts) - 1) + 1, 2)  # each bridge: there, back
    raster = polygons_to_mask([merged], 64, 64)
    assert (raster >= mask).all()
    assert (raster > mask).sum() < 3 * 64  # three one-pixel bridges
    assert cv2.connectedComponents(raster, connectivity=8)[0] == 2  # background + one piece
    np.testing.assert_array_equal(merge_polygons(parts[:1]), np.concatenate([parts[0], parts[0][:1]]))


def test_bad_mask_shape_is_refused():
    with pytest.raises(ValueError, match="must be"):
        mask_to_polygons(np.zeros((2, 4, 4), np.uint8))
