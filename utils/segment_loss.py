"""YOLOv5-seg's training loss: the detection loss of utils.loss plus a mask term per matched anchor.

Every anchor the detection loss matches to a target also predicts that target's mask, as a combination of
the prototypes: mask = sigmoid(coefficients @ protos). Its BCE against the target's ground-truth mask is
taken inside the target's box only (on the prototype grid) and divided by the box's normalised area, so a
small object counts as much as a large one:

    seg = box gain / B * sum over levels and images of mean over the image's matches of
          sum over box pixels BCE / (mask pixels * box w * h)

The mask loss weight is the (layer-scaled) box gain, as in YOLOv5: segmentation hyp files need no key of
their own, and a hyp tuned for boxes scales both terms alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.boxes import xywh2xyxy
from utils.instance_masks import crop_to_boxes
from utils.loss import ComputeLoss, Matches

MIN_BOX_AREA = 1e-9  # normalised; a box this small holds no mask pixel anyway


def instance_numbers(targets: torch.Tensor) -> torch.Tensor:
    """(n,) 1-based number of each (n, 6) target row among its image's rows, in row order: the value of
    that instance in the image's overlap mask (utils.segment_dataset)."""
    img = targets[:, 0].long()
    if not len(img):
        return img
    order = torch.argsort(img, stable=True)
    counts = torch.bincount(img)
    first = torch.cumsum(counts, 0) - counts  # first sorted position of each image
    numbers = torch.empty_like(img)
    numbers[order] = torch.arange(len(img), device=img.device) - first[img[order]]
    return numbers + 1


def box_mask_loss(gt: torch.Tensor, coefficients: torch.Tensor, protos: torch.Tensor, xyxy: torch.Tensor,
                  area: torch.Tensor) -> torch.Tensor:
    """Mean over m instances of one image of their box-cropped mask BCE over box area.

    gt (m, h, w) {0, 1}; coefficients (m, nm); protos (nm, h, w); xyxy (m, 4) in proto pixels; area (m,)
    normalised box areas.
    """
    logits = (coefficients @ protos.flatten(1)).view(-1, *protos.shape[1:])  # (m, h, w)
    bce = F.binary_cross_entropy_with_logits(logits, gt, reduction="none")
    return (crop_to_boxes(bce, xyxy).mean((1, 2)) / area.clamp_min(MIN_BOX_AREA)).mean()


class ComputeSegmentLoss:
    """Call with a Segment head's train output (raw maps, protos), (n, 6) targets and the batch's masks.

    Masks are (B, h, w) instance numbers with `overlap` (YOLOv5's default) or (n, h, w), one per target.
    Returns (total x batch size, (1,)) and the detached [box, seg, obj, cls] parts (4,).
    """

    def __init__(self, detection: ComputeLoss, overlap: bool = True):
        self.detection, self.overlap = detection, overlap
        self.gains = detection.gains  # the mask term weighs gains.box, as YOLOv5's

    def __call__(self, preds: tuple[list[torch.Tensor], torch.Tensor], targets: torch.Tensor,
                 masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw, protos = preds
        matches = self.detection.build_targets(raw, targets)
        lbox, lobj, lcls = self.detection.detection_losses(raw, matches)
        bs = raw[0].shape[0]
        lseg = self.mask_loss(raw, protos, targets, masks, matches) * (self.gains.box / bs)
        return (lbox + lseg + lobj + lcls) * bs, torch.cat((lbox, lseg, lobj, lcls)).detach()

    def mask_loss(self, raw: list[torch.Tensor], protos: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor,
                  matches: Matches) -> torch.Tensor:
        """Sum over levels and images of box_mask_loss, before the gain; (1,)."""
        _, nm, mh, mw = protos.shape
        targets = targets.to(protos.device, torch.float32)
        masks = masks.to(protos.device)
        if tuple(masks.shape[-2:]) != (mh, mw):  # --mask-ratio other than the prototypes' stride 4
            masks = F.interpolate(masks[None].float(), (mh, mw), mode="nearest")[0]
        numbers = instance_numbers(targets)
        nc = self.detection.nc
        total = torch.zeros(1, device=protos.device)
        for p, (b, a, gj, gi), rows in zip(raw, matches.indices, matches.rows):
            if not len(b):
                continue
            coefficients = p[b, a, gj, gi, 5 + nc:5 + nc + nm]  # (m, nm)
            xywhn = targets[rows, 2:6]
            xyxy = xywh2xyxy(xywhn * xywhn.new_tensor([mw, mh, mw, mh]))
            area = xywhn[:, 2:].prod(1)
            for image in b.unique():
                j = b == image
                if self.overlap:
                    gt = (masks[image] == numbers[rows[j]].view(-1, 1, 1)).to(protos.dtype)
                else:
                    gt = masks[rows[j]].to(protos.dtype)
                total = total + box_mask_loss(gt, coefficients[j], protos[image], xyxy[j], area[j])
        return total
