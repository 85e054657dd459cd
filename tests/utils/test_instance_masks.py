"""A detection's mask lands on the original image's pixels, through a letterbox or a stretch, inside its box."""

from __future__ import annotations

import pytest
import torch

from utils import instance_masks
from utils.instance_masks import crop_to_boxes, masks_in_image
from utils.masks import mask_iou


def _protos_of_rectangle(input_hw: tuple[int, int], rect: tuple[int, int, int, int], stride: int = 4) -> torch.Tensor:
    """(2, h/4, w/4): prototype 0 is +10 inside `rect` (input pixels x1, y1, x2, y2) and -10 outside; prototype 1
    is -10 everywhere."""
    h, w = input_hw[0] // stride, input_hw[1] // stride
    protos = torch.full((2, h, w), -10.0)
    x1, y1, x2, y2 = (v // stride for v in rect)
    protos[0, y1:y2, x1:x2] = 10.0
    return protos


def _rectangle(hw: tuple[int, int], rect: tuple[int, int, int, int]) -> torch.Tensor:
    mask = torch.zeros(1, *hw, dtype=torch.bool)
    x1, y1, x2, y2 = rect
    mask[0, y1:y2, x1:x2] = True
    return mask


def test_crop_keeps_pixels_whose_centres_lie_in_the_box():
    cropped = crop_to_boxes(torch.ones(1, 4, 6), torch.tensor([[1.0, 0.4, 3.6, 2.5]]))
    assert cropped[0].nonzero().tolist() == [[r, c] for r in (0, 1) for c in (1, 2, 3)]


def test_mask_follows_a_letterbox_back_to_the_original_pixels():
    # a 100 x 50 (h x w) image letterboxed into 128 x 128: gain 1.28, 32 px of padding left and right
    protos = _protos_of_rectangle((128, 128), (48, 32, 80, 96))  # input pixels of original x 12.5..37.5, y 25..75
    box = torch.tensor([[0.0, 0.0, 50.0, 100.0]])
    mask = masks_in_image(protos, torch.tensor([[1.0, 0.0]]), box, (128, 128), (100, 50), ((1.28, 1.28), (32.0, 0.0)))
    assert mask.shape == (1, 100, 50) and mask.dtype == torch.bool
    assert mask_iou(mask, _rectangle((100, 50), (12, 25, 38, 75))).item() > 0.9
    default = masks_in_image(protos, torch.tensor([[1.0, 0.0]]), box, (128, 128), (100, 50))  # ratio_pad None
    assert torch.equal(default, mask)


def test_mask_follows_a_stretch_back_to_the_original_pixels():
    # --scale: a 100 x 200 image stretched to 128 x 128, gains 1.28 (h) and 0.64 (w), no padding
    protos = _protos_of_rectangle((128, 128), (64, 32, 96, 96))
    box = torch.tensor([[0.0, 0.0, 200.0, 100.0]])
    mask = masks_in_image(protos, torch.tensor([[1.0, 0.0]]), box, (128, 128), (100, 200), ((1.28, 0.64), (0.0, 0.0)))
    assert mask_iou(mask, _rectangle((100, 200), (100, 25, 150, 75))).item() > 0.9


def test_nothing_outside_the_box_and_an_empty_set_keeps_its_shape():
    protos = _protos_of_rectangle((64, 64), (0, 0, 64, 64))
    mask = masks_in_image(protos, torch.tensor([[1.0, 0.0]]), torch.tensor([[10.0, 20.0, 30.0, 40.0]]), (64, 64), (64, 64),
                          ((1.0, 1.0), (0.0, 0.0)))
    assert torch.equal(mask, _rectangle((64, 64), (10, 20, 30, 40)))
    none = masks_in_image(protos, torch.zeros(0, 2), torch.zeros(0, 4), (64, 64), (64, 64))
    assert none.shape == (0, 64, 64)


def test_many_masks_are_assembled_in_chunks_with_the_same_result(monkeypatch):
    g = torch.Generator().manual_seed(0)
    protos, coefficients = torch.randn(4, 16, 16, generator=g), torch.randn(9, 4, generator=g)
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0]]).repeat(9, 1)
    whole = masks_in_image(protos, coefficients, boxes, (64, 64), (64, 64))
    monkeypatch.setattr(instance_masks, "CHUNK_PIXELS", 2 * 64 * 64)
    assert torch.equal(masks_in_image(protos, coefficients, boxes, (64, 64), (64, 64)), whole)


def test_coefficients_must_match_the_prototypes():
    with pytest.raises(ValueError, match="3 coefficients for 4 prototypes"):
        masks_in_image(torch.zeros(4, 8, 8), torch.zeros(1, 3), torch.zeros(1, 4), (32, 32), (32, 32))
