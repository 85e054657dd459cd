"""Box and mask metrics of a YOLOv5-seg model: the detection validator plus mask IoU matching.

Masks are scored where the user sees them: each detection's mask is assembled on the original image's
pixels (utils.instance_masks) and matched, COCO's way, against the label polygons rasterised at that same
size. Mask mAP is therefore what pycocotools' `segm` evaluation computes from `--save-json`'s RLE masks
and a ground truth of the same polygons (tests/engine/test_segment_validator.py checks it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from data.polygons import polygons_to_masks
from engine.validator import TABLE_HEADER, ValResult, Validator, coco_image_id, write_coco_ground_truth
from utils.files import atomic_write_text
from utils.instance_masks import masks_in_image
from utils.masks import mask_to_rle, match_mask_predictions
from utils.metrics import ap_per_class
from utils.nms import non_max_suppression
from utils.segment_dataset import MASKS

BOX_COLUMNS = ("metrics/precision(B)", "metrics/recall(B)", "metrics/mAP_0.5(B)", "metrics/mAP_0.5:0.95(B)")
MASK_COLUMNS = ("metrics/precision(M)", "metrics/recall(M)", "metrics/mAP_0.5(M)", "metrics/mAP_0.5:0.95(M)")


@dataclass
class SegmentValResult(ValResult):
    """A ValResult (its mp/mr/map50/map are the boxes') plus the masks' figures."""

    mask_mp: float = 0.0
    mask_mr: float = 0.0
    mask_map50: float = 0.0
    mask_map: float = 0.0
    mask_class_rows: list[tuple] = field(default_factory=list)  # (name, images, instances, P, R, mAP50, mAP50-95)

    columns: ClassVar[tuple[str, ...]] = (*BOX_COLUMNS, *MASK_COLUMNS, "val/box_loss", "val/obj_loss", "val/cls_loss")

    def fitness(self) -> float:
        """YOLOv5-seg's selection score: the box fitness plus the same blend of the mask mAPs."""
        return super().fitness() + 0.1 * self.mask_map50 + 0.9 * self.mask_map

    def results_row(self) -> tuple[float, ...]:
        return (self.mp, self.mr, self.map50, self.map, self.mask_mp, self.mask_mr, self.mask_map50, self.mask_map,
                *map(float, self.loss))

    def table(self, per_class: bool) -> list[str]:
        instances = sum(r[2] for r in self.class_rows)
        row = "%22s" + "%11i" * 2 + "%11.3g" * 8
        lines = [segment_header(), row % ("all", self.seen, instances, self.mp, self.mr, self.map50, self.map,
                                          self.mask_mp, self.mask_mr, self.mask_map50, self.mask_map)]
        if per_class:
            lines += [row % (*b, *m[3:]) for b, m in zip(self.class_rows, self.mask_class_rows)]
        return lines


def write_coco_segment_ground_truth(dataset, path: str | Path, names: list[str] | None = None) -> Path:
    """A segmentation split's labels as COCO ground truth: `write_coco_ground_truth`'s boxes plus each object's
    polygon rasterised at the original size as RLE (the masks this validator scores), for pycocotools' `segm`."""
    path = write_coco_ground_truth(dataset, path, names)
    gt = json.loads(Path(path).read_text())
    size = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    masks = [m for f, segs in zip(dataset.im_files, dataset.segments)
             for m in polygons_to_masks(segs, *size[coco_image_id(f)])] if gt["annotations"] else []
    for annotation, mask in zip(gt["annotations"], masks):
        annotation["segmentation"] = mask_to_rle(mask)
        annotation["area"] = int(mask.sum())
    atomic_write_text(path, json.dumps(gt))
    return path


def segment_header() -> str:
    return ("%22s" + "%11s" * 10) % (*TABLE_HEADER[:3], "Box(P", "R", "mAP50", "mAP50-95)", "Mask(P", "R", "mAP50",
                                      "mAP50-95)")


class SegmentValidator(Validator):
    """The detection validator, with each image's masks matched to its polygons (run_validation's validator_cls)."""

    result_type = SegmentValResult

    def __init__(self, model: torch.nn.Module, names: list[str], save_dir: Path | None, options, compute_loss,
                 device: torch.device, dataset=None):
        super().__init__(model, names, save_dir, options, compute_loss, device, dataset)
        if dataset is None or getattr(dataset, "segments", None) is None:
            raise ValueError("segmentation validation needs the split's polygon labels (a LoadImagesAndMasks loader)")
        self.polygons = {str(Path(f)): (np.asarray(lb)[:, 0], segs)
                         for f, lb, segs in zip(dataset.im_files, dataset.labels, dataset.segments)}
        self.mask_stats: list[tuple[torch.Tensor, ...]] = []  # per image: correct (n, 10), conf, cls, label cls
        self.protos: torch.Tensor | None = None  # the batch's (B, nm, h/4, w/4)
        self.masks: torch.Tensor | None = None  # the current image's (n, h0, w0) bool, for --save-json

    def progress_header(self) -> str:
        return segment_header()

    def preprocess(self, imgs: torch.Tensor, targets: torch.Tensor, extras: dict) -> tuple:
        """As detection; the masks in the extras are targets for the loss, never inputs of the model."""
        return super().preprocess(imgs, targets, {k: v for k, v in (extras or {}).items() if k != MASKS})

    def split_output(self, out) -> tuple[torch.Tensor, list | None]:
        """Eval output ((decoded, raw maps), protos), or an export's (decoded, protos)."""
        boxes, protos = out
        self.protos = protos.float()
        return super().split_output(boxes)

    def nms(self, decoded: torch.Tensor) -> list[torch.Tensor]:
        """Per image (n, 6 + nm): the detection rows followed by each kept box's mask coefficients."""
        o, nm = self.options, int(self.protos.shape[1])
        return non_max_suppression(decoded, o.conf_thres, o.iou_thres, agnostic=o.single_cls, multi_label=True,
                                   max_det=o.max_det, nm=nm)

    def process_extra(self, pred: torch.Tensor, predn: torch.Tensor, input_hw: tuple[int, int], path: Path,
                      shape: tuple, si: int) -> None:
        """The image's predicted masks (original pixels) matched to its rasterised label polygons."""
        (h0, w0), ratio_pad = shape[0], shape[1]
        self.masks = masks_in_image(self.protos[si], pred[:, 6:], predn[:, :4], input_hw, (h0, w0), ratio_pad)
        classes, polygons = self.polygons.get(str(path), (np.zeros(0), []))
        gt_cls = torch.as_tensor(np.zeros(len(classes)) if self.options.single_cls else classes,
                                 dtype=torch.float32, device=self.masks.device)
        gt = torch.from_numpy(polygons_to_masks(polygons, h0, w0)).to(self.masks.device) if len(polygons) else \
            torch.zeros((0, h0, w0), dtype=torch.bool, device=self.masks.device)
        correct = match_mask_predictions(self.masks, predn[:, 4], predn[:, 5], gt, gt_cls, self.iouv)
        self.mask_stats.append((correct.cpu(), pred[:, 4].cpu(), predn[:, 5].cpu(), gt_cls.cpu()))

    def add_json(self, predn: torch.Tensor, path: Path) -> None:
        """COCO results rows with the mask as compressed RLE in original pixels (`segmentation`)."""
        start = len(self.jdict)
        super().add_json(predn, path)
        for row, mask in zip(self.jdict[start:], self.masks):
            row["segmentation"] = mask_to_rle(mask.cpu().numpy().astype(np.uint8))

    def finish(self) -> SegmentValResult:
        box = super().finish()
        correct, conf, pred_cls, target_cls = self.gathered(self.mask_stats)
        ap = ap_per_class(correct, conf, pred_cls, target_cls)
        return SegmentValResult(**{f.name: getattr(box, f.name) for f in fields(box)},
                                mask_mp=ap.mp, mask_mr=ap.mr, mask_map50=ap.map50, mask_map=ap.map,
                                mask_class_rows=self.class_rows(ap))
