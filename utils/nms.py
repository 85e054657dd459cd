"""Non-maximum suppression: torchvision's kernel when its ops load, an exact pure-torch twin otherwise.

Some torch builds ship without a matching torchvision (its ops fail with "operator torchvision::nms
does not exist"); detection must still run there and give the same kept boxes.
"""

from __future__ import annotations

import logging

import torch

from utils.boxes import box_iou, xywh2xyxy

LOGGER = logging.getLogger(__name__)


def _load_torchvision_nms():
    try:
        import torchvision

        boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        torchvision.ops.nms(boxes, torch.ones(1), 0.5)  # raises where the compiled ops are missing
        return torchvision.ops.nms
    except Exception as e:  # ImportError, RuntimeError for missing operators
        LOGGER.debug("torchvision NMS unavailable (%s); using the pure-torch NMS", e)
        return None


_TORCHVISION_NMS = _load_torchvision_nms()


def nms_torch(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float) -> torch.Tensor:
    """Greedy NMS in plain torch with torchvision's semantics: indices kept, by descending score.

    A box is dropped when its IoU with a higher-scored kept box is strictly greater than iou_thres;
    ties in score keep torchvision's order (stable descending sort).
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = box_iou(boxes[order].float(), boxes[order].float())
    n = order.numel()
    suppressed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    keep = []
    over = (iou > iou_thres).cpu()
    sup = suppressed.cpu()
    for i in range(n):
        if sup[i]:
            continue
        keep.append(i)
        sup |= over[i]
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float, use_torchvision: bool | None = None) -> torch.Tensor:
    """Kept indices of xyxy `boxes` (n, 4) by score (n,); torchvision's kernel when available."""
    use_tv = _TORCHVISION_NMS is not None if use_torchvision is None else use_torchvision
    if use_tv:
        if _TORCHVISION_NMS is None:
            raise RuntimeError("torchvision NMS requested but torchvision's ops do not load here")
        return _TORCHVISION_NMS(boxes, scores, iou_thres)
    return nms_torch(boxes, scores, iou_thres)


def non_max_suppression(prediction: torch.Tensor, conf_thres: float = 0.25, iou_thres: float = 0.45,
                        classes: list[int] | None = None, agnostic: bool = False, multi_label: bool = False,
                        max_det: int = 300, max_nms: int = 30000, max_wh: int = 7680,
                        use_torchvision: bool | None = None, nm: int = 0) -> list[torch.Tensor]:
    """Decoded predictions (B, N, 5+nc+nm) [xywh, obj, cls..., coefficients...] -> per image (n, 6+nm)
    [x1, y1, x2, y2, conf, cls, coefficients...].

    Class-aware unless `agnostic`: boxes are offset by class * max_wh so classes never suppress
    each other. Scores are obj * cls probability. `nm` trailing columns (a segmenter's mask
    coefficients) are not class scores: they ride along with their box.
    """
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise ValueError(f"conf_thres {conf_thres} and iou_thres {iou_thres} must lie in [0, 1]")
    if nm < 0 or prediction.shape[-1] - nm < 6:
        raise ValueError(f"non_max_suppression: rows of {prediction.shape[-1]} columns cannot hold 5 + nc + {nm}")
    output = [torch.zeros((0, 6 + nm), device=prediction.device)] * prediction.shape[0]
    cls_end = prediction.shape[-1] - nm
    for b, x in enumerate(prediction):
        x = x[x[:, 4] > conf_thres]
        if not x.shape[0]:
            continue
        scores = x[:, 5:cls_end] * x[:, 4:5]
        box, coefficients = xywh2xyxy(x[:, :4]), x[:, cls_end:]
        if multi_label:
            i, j = (scores > conf_thres).nonzero(as_tuple=False).T
            det = torch.cat((box[i], scores[i, j, None], j[:, None].float(), coefficients[i]), 1)
        else:
            conf, j = scores.max(1, keepdim=True)
            det = torch.cat((box, conf, j.float(), coefficients), 1)[conf.view(-1) > conf_thres]
        if classes is not None:
            det = det[(det[:, 5:6] == torch.tensor(classes, device=det.device)).any(1)]
        if not det.shape[0]:
            continue
        det = det[det[:, 4].argsort(descending=True)[:max_nms]]
        offsets = det[:, 5:6] * (0 if agnostic else max_wh)
        output[b] = det[nms_first(det[:, :4] + offsets, det[:, 4], iou_thres, max_det, use_torchvision)]
    return output


def nms_first(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float, max_det: int,
              use_torchvision: bool | None = None) -> torch.Tensor:
    """The first `max_det` indices greedy NMS keeps, for boxes sorted by descending score: `nms(...)[:max_det]`.

    Greedy NMS decides each box by the higher-scored boxes alone, so NMS over the top k rows keeps exactly
    the full run's kept boxes among those rows; once it keeps max_det, the rows below cannot change them.
    Validation (conf 0.001, every class above it) hands NMS thousands of rows per image of which it
    keeps hundreds: the prefix does the same work on a fraction of them.
    """
    k = min(len(boxes), 4 * max_det)
    while True:
        keep = nms(boxes[:k], scores[:k], iou_thres, use_torchvision)
        if len(keep) >= max_det or k == len(boxes):
            return keep[:max_det]
        k = min(len(boxes), 2 * k)  # work grows as rows x kept, so doubling wastes less than one big jump
