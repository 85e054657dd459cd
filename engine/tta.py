"""Test-time augmentation (`--augment` in val.py and detect.py), YOLOv5's recipe: the batch at full size,
flipped left-right at 0.83x, and at 0.67x; each pass's boxes are mapped back to the input's pixels and the
three sets joined before NMS, so NMS merges what the passes agree on.

As YOLOv5, each pass keeps the levels that suit its scale: the full-size pass drops its coarsest level
(large objects, which the smaller passes see better) and the 0.67x pass its finest (small objects, which
it has shrunk). The wrapper takes any model with `stride` whose eval output starts with the decoded
(B, N, 5 + nc) tensor — a checkpoint or an export — and returns the same kind of output.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.augmentations import PAD_VALUE

PASSES = ((1.0, False), (0.83, True), (0.67, False))  # (scale, flip left-right), as YOLOv5


def scale_batch(imgs: torch.Tensor, ratio: float, stride: int) -> torch.Tensor:
    """(B, 3, H, W) resized by `ratio`, then padded right and bottom to a multiple of the stride with the
    letterbox grey (so box coordinates keep their origin)."""
    if ratio == 1.0:
        return imgs
    h, w = imgs.shape[2:]
    size = (int(h * ratio), int(w * ratio))
    resized = F.interpolate(imgs, size=size, mode="bilinear", align_corners=False)
    ph, pw = (math.ceil(s / stride) * stride - s for s in size)
    return F.pad(resized, (0, pw, 0, ph), value=PAD_VALUE / 255.0)


def level_sizes(model: nn.Module, hw: tuple[int, int]) -> list[int]:
    """Rows of the decoded output per detection level for an input of hw: anchors x grid cells."""
    na = int(getattr(getattr(model, "detect", None), "na", 3))
    return [na * math.ceil(hw[0] / s) * math.ceil(hw[1] / s) for s in model.stride.tolist()]


class TTA(nn.Module):
    """A model seen through YOLOv5's test-time augmentation; eval output (decoded, None)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if getattr(model, "side_inputs", None):
            raise ValueError("--augment: a D3N teacher's latents describe the unflipped, unscaled image; run it "
                             "without test-time augmentation")
        if getattr(model, "nm", 0):
            raise ValueError("--augment: test-time augmentation is for detectors, not segmenters")
        self.model = model
        self.stride, self.names = model.stride, model.names
        self.side_inputs = {}
        self.fixed_hw = getattr(model, "fixed_hw", None)

    def forward(self, imgs: torch.Tensor) -> tuple[torch.Tensor, None]:
        width = imgs.shape[3]
        stride = int(self.stride.max())
        outputs = []
        for i, (ratio, flip) in enumerate(PASSES):
            x = scale_batch(imgs.flip(3) if flip else imgs, ratio, stride)
            out = self.model(x)
            decoded = (out[0] if isinstance(out, (tuple, list)) else out).float().clone()
            decoded[..., :4] /= ratio
            if flip:
                decoded[..., 0] = width - decoded[..., 0]
            sizes = level_sizes(self.model, self.fixed_hw or tuple(x.shape[2:]))  # a static export pads to its size
            if sum(sizes) != decoded.shape[1]:
                raise ValueError(f"--augment: {decoded.shape[1]} output rows, expected {sum(sizes)} for levels "
                                 f"{self.stride.tolist()}; this model's output is not laid out as Detect's")
            if i == 0:
                decoded = decoded[:, :decoded.shape[1] - sizes[-1]]  # full size: not the coarsest level
            elif i == len(PASSES) - 1:
                decoded = decoded[:, sizes[0]:]  # the smallest pass: not the finest level
            outputs.append(decoded)
        return torch.cat(outputs, 1), None
