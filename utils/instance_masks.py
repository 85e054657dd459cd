"""A segmenter's instance masks from its outputs: coefficients @ prototypes, in the original image's pixels.

The Segment head predicts, per detection, nm coefficients that weight its nm prototype maps (1/4 of the
input). `masks_in_image` samples that combination straight at the centres of the original image's pixels
(undoing the letterbox or the `--scale` stretch, as `scale_boxes` does for boxes), thresholds it, and keeps
what lies inside the detection's box. Validation scores these masks, `--save-json` encodes them and
predict draws them, so every consumer sees the same pixels; only the bilinear interpolation of the
prototypes limits how fine an edge can be.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MASK_THRESHOLD = 0.5  # on sigmoid(coefficients @ prototypes), as YOLOv5
CHUNK_PIXELS = 2 ** 23  # masks are assembled a few at a time: at most this many float values at once


def box_windows(xyxy: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(n, h, w) bool: the pixels inside each of n (n, 4) boxes (pixel centres decide), an outer product of
    a row and a column test, so no float map of that size is made."""
    x1, y1, x2, y2 = xyxy[:, :, None].unbind(1)  # each (n, 1)
    cx = torch.arange(w, device=xyxy.device, dtype=xyxy.dtype)[None] + 0.5
    cy = torch.arange(h, device=xyxy.device, dtype=xyxy.dtype)[None] + 0.5
    return ((cy >= y1) & (cy < y2))[:, :, None] & ((cx >= x1) & (cx < x2))[:, None, :]


def crop_to_boxes(maps: torch.Tensor, xyxy: torch.Tensor) -> torch.Tensor:
    """(n, h, w) maps zeroed outside their (n, 4) boxes, in pixels of the maps (pixel centres decide)."""
    return maps * box_windows(xyxy, maps.shape[1], maps.shape[2])


def _sampling_grid(input_hw: tuple[int, int], original_hw: tuple[int, int],
                   ratio_pad, device: torch.device) -> torch.Tensor:
    """(1, h0, w0, 2) grid_sample positions (-1..1 over the prototype maps) of the original pixels' centres."""
    (h, w), (h0, w0) = input_hw, original_hw
    if ratio_pad is None:  # a letterbox with equal gains, as scale_boxes assumes
        gain = min(h / h0, w / w0)
        (gain_h, gain_w), (padw, padh) = (gain, gain), ((w - w0 * gain) / 2, (h - h0 * gain) / 2)
    else:
        (gain_h, gain_w), (padw, padh) = ratio_pad
    xs = ((torch.arange(w0, device=device, dtype=torch.float32) + 0.5) * gain_w + padw) / w  # 0..1 of the input
    ys = ((torch.arange(h0, device=device, dtype=torch.float32) + 0.5) * gain_h + padh) / h
    gy, gx = torch.meshgrid(ys * 2 - 1, xs * 2 - 1, indexing="ij")  # align_corners=False: -1..1 spans the maps
    return torch.stack((gx, gy), -1)[None]


def masks_in_image(protos: torch.Tensor, coefficients: torch.Tensor, boxes: torch.Tensor,
                   input_hw: tuple[int, int], original_hw: tuple[int, int], ratio_pad=None) -> torch.Tensor:
    """(n, h0, w0) bool masks of n detections in the original image.

    protos (nm, mh, mw) of one image; coefficients (n, nm); boxes (n, 4) xyxy in original pixels (as
    validation and prediction already map them); input_hw the network input's (h, w); ratio_pad as the
    loader records it (None: letterbox). Chunked, so hundreds of masks of a large image fit in memory.
    """
    h0, w0 = int(original_hw[0]), int(original_hw[1])
    n = coefficients.shape[0]
    out = torch.zeros((n, h0, w0), dtype=torch.bool, device=protos.device)
    if not n:
        return out
    if coefficients.shape[1] != protos.shape[0]:
        raise ValueError(f"masks_in_image: {coefficients.shape[1]} coefficients for {protos.shape[0]} prototypes")
    grid = _sampling_grid(input_hw, (h0, w0), ratio_pad, protos.device)
    threshold = torch.logit(torch.tensor(MASK_THRESHOLD)).item()
    step = max(1, CHUNK_PIXELS // max(h0 * w0, 1))
    for i in range(0, n, step):
        logits = (coefficients[i:i + step].float() @ protos.float().flatten(1)).view(-1, 1, *protos.shape[1:])
        sampled = F.grid_sample(logits.transpose(0, 1), grid.float(), mode="bilinear", padding_mode="border",
                                align_corners=False)[0]  # (k, h0, w0): each detection is a channel
        out[i:i + step] = (sampled > threshold) & box_windows(boxes[i:i + step].float(), h0, w0)
    return out
