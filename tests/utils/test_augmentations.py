"""Letterbox/stretch geometry, warps that report their matrix, and the extra-map resampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.augmentations import (augment_hsv, box_candidates, letterbox, mixup, mosaic_span, random_perspective,
                                 stretch, warp_map)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_letterbox_pads_to_square_with_equal_ratio():
    im = _image(45, 100)
    out, (rw, rh), (dw, dh) = letterbox(im, 64, auto=False)
    assert out.shape == (64, 64, 3)
    assert rw == rh == pytest.approx(0.64)
    # 45 * 0.64 = 28.8 -> 29 rows; 35 rows of padding: 17 on top, 18 below
    assert (dw, dh) == (0.0, 17.0)
    assert (out[:17] == 114).all() and (out[17 + 29:] == 114).all()
    assert not (out[17:17 + 29] == 114).all()


def test_letterbox_auto_pads_only_to_stride_and_scaleup_false_keeps_small_images():
    out, _, (dw, dh) = letterbox(_image(50, 100), 64, auto=True, stride=32)
    assert out.shape == (32, 64, 3) and (dw, dh) == (0.0, 0.0)  # 64x32 already a stride multiple
    small = _image(20, 30)
    out, (rw, rh), (dw, dh) = letterbox(small, (64, 64), auto=False, scaleup=False)
    assert (rw, rh) == (1.0, 1.0) and (dw, dh) == (17.0, 22.0)
    assert np.array_equal(out[22:42, 17:47], small)


def test_stretch_uses_unequal_ratios():
    out, (rw, rh) = stretch(_image(96, 160), 128)
    assert out.shape == (128, 128, 3)
    assert (rw, rh) == (128 / 160, 128 / 96)


def test_random_perspective_with_nothing_to_do_is_the_identity():
    im = _image(64, 80)
    targets = np.array([[1, 10, 12, 30, 40]], float)
    out, t, M = random_perspective(im, targets, 0, 0, 0, 0, 0, rng=np.random.default_rng(0))
    assert np.array_equal(M, np.eye(3)) and out is im and np.array_equal(t, targets)


def test_random_perspective_moves_boxes_by_the_returned_matrix():
    im = np.full((128, 128, 3), 0, np.uint8)
    im[40:60, 30:70] = 255  # the box's pixels
    targets = np.array([[2, 30, 40, 70, 60]], float)
    out, t, M = random_perspective(im, targets, degrees=0, translate=0.1, scale=0.3, shear=0, perspective=0,
                                   rng=np.random.default_rng(3))
    assert M.shape == (3, 3) and not np.array_equal(M, np.eye(3))
    corners = M @ np.array([[30, 70], [40, 60], [1, 1]], float)
    np.testing.assert_allclose(t[0, 1:], [corners[0, 0], corners[1, 0], corners[0, 1], corners[1, 1]], atol=1e-9)
    x1, y1, x2, y2 = np.round(t[0, 1:]).astype(int)
    inside = out[y1 + 2:y2 - 2, x1 + 2:x2 - 2]
    assert t[0, 0] == 2 and (inside == 255).all()  # the pixels went where the box went


def test_random_perspective_border_crops_a_mosaic_canvas():
    out, _, M = random_perspective(_image(128, 128), np.zeros((0, 5)), 0, 0, 0, 0, 0, border=(-32, -32),
                                   rng=np.random.default_rng(0))
    assert out.shape == (64, 64, 3)
    np.testing.assert_allclose(M, [[1, 0, -32], [0, 1, -32], [0, 0, 1]])


def test_box_candidates_drop_slivers_and_keep_intact_boxes():
    before = np.array([[0, 0, 0], [0, 0, 0], [20, 20, 20], [20, 20, 20]], float)  # (4, n) xyxy
    after = np.array([[0, 0, 0], [0, 0, 0], [20, 1.5, 20], [20, 20, 1]], float)
    assert box_candidates(before, after).tolist() == [True, False, False]


def test_augment_hsv_is_reproducible_from_the_rng_and_off_at_zero_gain():
    im = _image(32, 32)
    a, b, c = im.copy(), im.copy(), im.copy()
    augment_hsv(a, 0.015, 0.7, 0.4, np.random.default_rng(5))
    augment_hsv(b, 0.015, 0.7, 0.4, np.random.default_rng(5))
    augment_hsv(c, 0, 0, 0, np.random.default_rng(5))
    assert np.array_equal(a, b) and not np.array_equal(a, im) and np.array_equal(c, im)


def test_mixup_blends_with_the_reported_weight():
    a, b = np.full((8, 8, 3), 200, np.uint8), np.full((8, 8, 3), 100, np.uint8)
    out, labels, r = mixup(a, np.zeros((2, 5)), b, np.ones((1, 5)), np.random.default_rng(0))
    assert 0 < r < 1 and len(labels) == 3
    assert abs(int(out[0, 0, 0]) - (200 * r + 100 * (1 - r))) < 1


def test_mosaic_span_fits_tiles_around_the_centre():
    assert mosaic_span(100, 60, 256, before=True) == (40, 100, 0, 60)
    assert mosaic_span(30, 60, 256, before=True) == (0, 30, 30, 60)  # cut at the canvas edge
    assert mosaic_span(220, 60, 256, before=False) == (220, 256, 0, 36)


def test_warp_map_follows_a_letterbox_and_zeroes_the_padding():
    """A map stretched over a 64x32 image letterboxed into 64x64 (16 px pad on top), stride 8."""
    u = (torch.arange(16) + 0.5) / 16
    src = torch.stack((u.expand(16, 16), u[:, None].expand(16, 16)))  # (2, 16, 16): x, y
    to_canvas = np.array([[64, 0, 0], [0, 32, 16], [0, 0, 1]], float)
    out = warp_map(src, to_canvas, (0, 16, 64, 48), np.eye(3), (8, 8), 8)
    assert out.shape == (2, 8, 8)
    assert (out[:, :2] == 0).all() and (out[:, 6:] == 0).all()  # padding rows
    centres = (torch.arange(8) + 0.5) / 8
    torch.testing.assert_close(out[0, 3], centres)  # x unchanged
    torch.testing.assert_close(out[1, 2:6, 0], (torch.arange(2, 6) * 8 + 4 - 16) / 32)  # y squeezed


def test_fp16_latents_warp_as_their_float32_values_and_stay_fp16():
    """Latents are stored fp16; the warp samples them in float32 (fast on the CPU) and returns fp16."""
    src = torch.randn(6, 20, 20, generator=torch.Generator().manual_seed(0))
    to_canvas = np.array([[64, 0, 0], [0, 32, 16], [0, 0, 1]], float)
    rotate = np.array([[0.9, -0.2, 9.0], [0.2, 0.9, -4.0], [0, 0, 1]])
    half = warp_map(src.half(), to_canvas, (0, 16, 64, 48), rotate, (8, 8), 8)
    full = warp_map(src.half().float(), to_canvas, (0, 16, 64, 48), rotate, (8, 8), 8)
    assert half.dtype == torch.float16 and full.dtype == torch.float32
    assert torch.equal(half, full.half())
