"""Instance masks for segmentation metrics: mask IoU, matching, and COCO run-length encoding.

Mask mAP is the detection mAP with mask IoU in place of box IoU: `match_mask_predictions` feeds
`utils.metrics.match_iou` (the matching `match_predictions` uses) and its flags go to
`ap_per_class` unchanged. `mask_to_rle` writes the `segmentation` of a `--save-json` entry as
pycocotools reads it. The polygon helpers live in `data.polygons` (the converters below utils
use them) and are re-exported here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from data.polygons import mask_to_polygons, merge_polygons, polygons_to_mask, polygons_to_masks
from utils.metrics import match_iou

IOU_CHUNK_VALUES = 2 ** 24  # float values of masks2 held at once by mask_iou (64 MB)

__all__ = ["mask_to_polygons", "merge_polygons", "polygons_to_mask", "polygons_to_masks", "mask_iou",
           "match_mask_predictions", "mask_to_rle", "rle_to_mask", "encode_rle_counts", "decode_rle_counts"]


def mask_iou(masks1: torch.Tensor, masks2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """IoU of every pair of binary masks: (N, H, W) x (M, H, W) -> (N, M) float32.

    One matrix product of the flattened masks gives all intersections; pixel counts are exact
    in float32 up to 2**24 pixels per mask. Two empty masks have IoU 0.
    """
    if masks1.shape[1:] != masks2.shape[1:]:
        raise ValueError(f"mask_iou: mask sizes differ, {tuple(masks1.shape[1:])} vs {tuple(masks2.shape[1:])}")
    a = (masks1.flatten(1) > 0).float()  # (N, HW)
    pixels = max(a.shape[1], 1)
    step = max(1, IOU_CHUNK_VALUES // pixels)  # masks2 a few at a time: hundreds of large masks stay in memory
    columns = []
    for j in range(0, masks2.shape[0], step):
        b = (masks2[j:j + step].flatten(1) > 0).float().to(a.device)  # (k, HW)
        inter = a @ b.T  # (N, k)
        columns.append(inter / (a.sum(1)[:, None] + b.sum(1)[None, :] - inter).clamp(min=eps))
    return torch.cat(columns, 1) if columns else a.new_zeros((a.shape[0], 0))


def match_mask_predictions(pred_masks: torch.Tensor, conf: torch.Tensor, pred_cls: torch.Tensor,
                           gt_masks: torch.Tensor, gt_cls: torch.Tensor, iouv: torch.Tensor,
                           strategy: str = "conf") -> torch.Tensor:
    """True-positive flags of one image's predicted masks at each IoU threshold.

    pred_masks (n, H, W), conf (n,), pred_cls (n,), gt_masks (m, H, W), gt_cls (m,), iouv (t,),
    masks at one common size. "conf" is COCO's matching, the one the validator uses, so
    `ap_per_class` of these flags is pycocotools' segm mAP. Returns (n, t) bool on iouv's device.
    IoU is computed only between masks of one class (the matching never pairs two classes): with
    hundreds of low-confidence detections per image, that is most of validation's mask cost.
    """
    iou = torch.zeros((gt_masks.shape[0], pred_masks.shape[0]), device=pred_masks.device)
    for c in torch.unique(gt_cls):
        g = (gt_cls == c).nonzero().flatten().to(iou.device)
        d = (pred_cls == c).nonzero().flatten().to(iou.device)
        if len(d):
            iou[g[:, None], d[None]] = mask_iou(gt_masks[g], pred_masks[d])
    return match_iou(iou, gt_cls, pred_cls, conf, iouv, strategy)


def _run_lengths(mask: np.ndarray) -> list[int]:
    """Alternating run lengths of 0s and 1s down the columns (COCO's order), starting with 0s."""
    flat = np.asarray(mask).ravel(order="F") > 0
    if flat.size == 0:
        return []
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], edges, [flat.size]))).tolist()
    return [0] + runs if flat[0] else runs


def encode_rle_counts(counts: Sequence[int]) -> str:
    """COCO's compressed RLE string of run lengths.

    Each count after the second is stored as its difference to the count two before, in 5-bit
    groups (least significant first) as characters from '0' (48): bit 0x20 says another group
    follows, bit 0x10 of the last group is the sign.
    """
    chars = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            group = x & 0x1F
            x >>= 5  # arithmetic shift: a negative difference ends at -1
            more = x != -1 if group & 0x10 else x != 0
            chars.append(chr(48 + (group | (0x20 if more else 0))))
    return "".join(chars)


def decode_rle_counts(text: str) -> list[int]:
    """Run lengths of a COCO compressed RLE string (the inverse of `encode_rle_counts`)."""
    counts, pos = [], 0
    while pos < len(text):
        x, shift, more = 0, 0, True
        while more:
            group = ord(text[pos]) - 48
            x |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            pos, shift = pos + 1, shift + 5
            if not more and group & 0x10:
                x |= -1 << shift
        counts.append(x + (counts[-2] if len(counts) > 2 else 0))
    return counts


def mask_to_rle(mask: np.ndarray | torch.Tensor, compress: bool = True) -> dict:
    """COCO RLE {'size': [H, W], 'counts': ...} of a binary (H, W) mask.

    compress=True gives the string pycocotools' `mask.encode` makes (what `loadRes` needs for
    results), False the plain list of run lengths (accepted in ground-truth annotations).
    """
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if mask.ndim != 2:
        raise ValueError(f"mask_to_rle: mask must be (H, W), got shape {mask.shape}")
    counts = _run_lengths(mask)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])],
            "counts": encode_rle_counts(counts) if compress else counts}


def rle_to_mask(rle: dict) -> np.ndarray:
    """The (H, W) uint8 0/1 mask of a COCO RLE, compressed (str or bytes) or a list of counts."""
    height, width = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        counts = decode_rle_counts(counts)
    if sum(counts) != height * width:
        raise ValueError(f"rle_to_mask: counts cover {sum(counts)} pixels, size {height}x{width} has {height * width}")
    values = np.arange(len(counts)) % 2  # runs alternate 0, 1, 0, ...
    flat = np.repeat(values.astype(np.uint8), counts)
    return flat.reshape((height, width), order="F")
