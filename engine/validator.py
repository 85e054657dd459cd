"""The evaluation loop shared by train.py (every epoch) and val.py: forward, NMS, matching, mAP.

Predictions and labels are both mapped back to the pixels of the original image before they are
matched, so letterbox and stretched (`--scale`) inputs score alike and `--save-json` boxes can be
checked by pycocotools against `write_coco_ground_truth`.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterable

import numpy as np
import torch
from tqdm import tqdm

from utils.boxes import scale_boxes, xywh2xyxy, xyxy2xywh
from utils.files import atomic_write_text
from utils.metrics import APResult, ConfusionMatrix, ap_per_class, match_predictions
from utils.nms import non_max_suppression
from utils.torch_utils import time_sync

LOGGER = logging.getLogger(__name__)

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)  # mAP@0.5:0.95
PLOTTED_BATCHES = 3  # val_batch0..2_labels.jpg / _pred.jpg
PER_CLASS_ROWS_BELOW = 50  # the per-class table is logged for fewer classes (or under --verbose)
TABLE_HEADER = ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")

# loss(raw maps, targets) -> (loss, items (3,) box/obj/cls), as utils.loss.ComputeLoss
LossFn = Callable[[list[torch.Tensor], torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class ValOptions:
    conf_thres: float = 0.001  # low, so the PR curve reaches high recall
    iou_thres: float = 0.6  # NMS IoU
    max_det: int = 300  # detections kept per image
    single_cls: bool = False  # every class counts as class 0
    save_txt: bool = False  # save_dir/labels/<stem>.txt, `cls x y w h [conf]` normalised
    save_conf: bool = False  # add the confidence to --save-txt rows
    save_json: bool = False  # save_dir/predictions.json in COCO's results format
    plots: bool = True  # batch mosaics, PR/F1/P/R curves, confusion matrix (needs a save_dir)
    verbose: bool = False  # per-class rows even for 50 classes or more
    half: bool = False  # fp16 on CUDA, bf16 autocast on CPU
    speed_only: bool = False  # --task speed: log the speed line, not the metrics table


@dataclass
class ValResult:
    mp: float  # mean precision over classes with labels
    mr: float  # mean recall
    map50: float
    map: float  # mAP@0.5:0.95
    maps: np.ndarray  # (nc,) per-class mAP@0.5:0.95; classes without labels get `map`
    loss: np.ndarray  # (3,) box, obj, cls mean per batch; zeros without a loss function
    speed: tuple[float, float, float]  # pre-process, inference, NMS in ms per image
    class_rows: list[tuple] = field(default_factory=list)  # (name, images, instances, P, R, mAP50, mAP50-95)
    seen: int = 0  # images evaluated

    columns: ClassVar[tuple[str, ...]] = ("metrics/precision", "metrics/recall", "metrics/mAP_0.5",
                                          "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss", "val/cls_loss")

    def fitness(self) -> float:
        """Model selection score: 0.1 mAP50 + 0.9 mAP50-95, as YOLOv5."""
        return 0.1 * self.map50 + 0.9 * self.map

    def results_row(self) -> tuple[float, ...]:
        """(P, R, mAP50, mAP50-95, box, obj, cls): the validation columns of results.csv, named by `columns`."""
        return (self.mp, self.mr, self.map50, self.map, *map(float, self.loss))

    def table(self, per_class: bool) -> list[str]:
        """The lines YOLOv5 users read: a header, the "all" row, then one row per class."""
        instances = sum(r[2] for r in self.class_rows)
        lines = [("%22s" + "%11s" * 6) % TABLE_HEADER,
                 ("%22s" + "%11i" * 2 + "%11.3g" * 4) % ("all", self.seen, instances, self.mp, self.mr,
                                                        self.map50, self.map)]
        if per_class:
            lines += [("%22s" + "%11i" * 2 + "%11.3g" * 4) % row for row in self.class_rows]
        return lines


def coco_image_id(path: str | Path) -> int | str:
    """COCO image id of a file: its stem as an int when numeric (COCO's 000000139.jpg), else the stem."""
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else stem


def write_coco_ground_truth(dataset, path: str | Path, names: list[str] | None = None) -> Path:
    """Write a split's labels as a COCO ground-truth JSON, with the ids of `predictions.json`.

    `dataset` is a LoadImagesAndLabels: `im_files`, `labels` (per image (m, 5) [cls, x, y, w, h]
    normalised to the original image) and `shapes` ((n, 2) original [w, h]). Category ids are the
    class indices; annotation ids start at 1 (pycocotools treats id 0 as "unmatched").
    """
    images, annotations = [], []
    for file, labels, (w, h) in zip(dataset.im_files, dataset.labels, np.asarray(dataset.shapes)):
        image_id = coco_image_id(file)
        images.append({"id": image_id, "file_name": Path(file).name, "width": int(w), "height": int(h)})
        labels = np.asarray(labels, dtype=np.float64).reshape(-1, 5)
        boxes = xywh2xyxy(labels[:, 1:5]) * np.array([w, h, w, h])  # (m, 4) original pixels
        for c, (x1, y1, x2, y2) in zip(labels[:, 0], boxes):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(c),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                "iscrowd": 0})
    classes = sorted({a["category_id"] for a in annotations})
    categories = [{"id": c, "name": names[c] if names and c < len(names) else str(c)} for c in classes]
    path = Path(path)
    atomic_write_text(path, json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@dataclass
class _Timer:
    """Seconds spent per stage: pre-process, inference, NMS."""

    stages: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def per_image_ms(self, seen: int) -> tuple[float, float, float]:
        return tuple(float(t) for t in 1e3 * self.stages / max(seen, 1))


class Validator:
    """Accumulates one pass over a val loader; `run_validation` is the function to call.

    `dataset` is the loader's dataset; a subclass that scores more than boxes reads its labels from it.
    """

    result_type: ClassVar[type[ValResult]] = ValResult

    def __init__(self, model: torch.nn.Module, names: list[str], save_dir: Path | None, options: ValOptions,
                 compute_loss: LossFn | None, device: torch.device, dataset=None):
        self.model, self.options, self.compute_loss, self.device = model, options, compute_loss, device
        self.names = ["item"] if options.single_cls else [str(n) for n in names]
        self.nc = len(self.names)
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.plots = options.plots and self.save_dir is not None
        self.iouv = IOU_THRESHOLDS.to(device)
        self.confusion = ConfusionMatrix(self.nc, conf=0.25, iou_thres=0.45)
        self.stats: list[tuple[torch.Tensor, ...]] = []  # per image: correct (n, 10), conf, cls, label cls
        self.jdict: list[dict] = []  # COCO results
        self.loss = torch.zeros(3, device=device)
        self.timer, self.seen, self.batches, self.shape = _Timer(), 0, 0, None

    def progress_header(self) -> str:
        return ("%22s" + "%11s" * 6) % TABLE_HEADER

    def preprocess(self, imgs: torch.Tensor, targets: torch.Tensor, extras: dict) -> tuple:
        """uint8 (B, 3, H, W) -> float 0-1 on the device (fp16 on CUDA under --half)."""
        half = self.options.half and self.device.type == "cuda"
        imgs = imgs.to(self.device, non_blocking=True)
        imgs = (imgs.half() if half else imgs.float()) / 255
        extras = {k: v.to(self.device, non_blocking=True) for k, v in (extras or {}).items()}
        return imgs, targets.to(self.device), extras

    def forward(self, imgs: torch.Tensor, extras: dict) -> tuple[torch.Tensor, list | None]:
        """(decoded (B, N, 5+nc) float, raw maps or None)."""
        if self.options.half:
            dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
            ctx = torch.autocast(self.device.type, dtype=dtype)
        else:
            ctx = nullcontext()
        with ctx:
            out = self.model(imgs, extras) if extras else self.model(imgs)
        return self.split_output(out)

    def split_output(self, out) -> tuple[torch.Tensor, list | None]:
        """(decoded, raw maps or None) of the model's eval output (an export gives decoded only)."""
        decoded, raw = out if isinstance(out, (tuple, list)) else (out, None)
        return decoded.float(), raw

    def nms(self, decoded: torch.Tensor) -> list[torch.Tensor]:
        """Per image (n, 6) [x1, y1, x2, y2, conf, cls] in input pixels."""
        o = self.options
        return non_max_suppression(decoded, o.conf_thres, o.iou_thres, agnostic=o.single_cls, multi_label=True,
                                   max_det=o.max_det)

    def step(self, batch_i: int, batch: tuple) -> None:
        """One batch: forward, optional loss, NMS, per-image matching, outputs, mosaics."""
        imgs, targets, paths, shapes, *rest = batch
        t0 = time_sync()
        imgs, targets, extras = self.preprocess(imgs, targets, rest[0] if rest else {})
        t1 = time_sync()
        decoded, raw = self.forward(imgs, extras)
        t2 = time_sync()
        if self.compute_loss is not None and raw is not None:
            self.loss += self.compute_loss([r.float() for r in raw], targets)[1].to(self.device)
        preds = self.nms(decoded)
        t3 = time_sync()
        self.timer.stages += (t1 - t0, t2 - t1, t3 - t2)
        self.batches += 1
        self.shape = self.shape or tuple(imgs.shape)
        for si, pred in enumerate(preds):
            self.process_image(pred, targets[targets[:, 0] == si, 1:], imgs.shape[2:], Path(paths[si]), shapes[si],
                               si)
        if self.plots and batch_i < PLOTTED_BATCHES:
            self.plot_batch(batch_i, imgs, targets, paths, preds)

    def process_image(self, pred: torch.Tensor, labels: torch.Tensor, input_hw: torch.Size, path: Path,
                      shape: tuple, si: int = 0) -> None:
        """Match one image's detections (n, 6+) to its labels (m, 5) [cls, x, y, w, h] (normalised
        to the input) in the pixels of the original image; `si` is the image's place in the batch."""
        self.seen += 1
        (h0, w0), ratio_pad = shape[0], shape[1]
        if self.options.single_cls:
            pred[:, 5] = 0
            labels = labels.clone()
            labels[:, 0] = 0
        h, w = int(input_hw[0]), int(input_hw[1])
        boxes = xywh2xyxy(labels[:, 1:5]) * torch.tensor([w, h, w, h], device=labels.device)
        labelsn = torch.cat((labels[:, :1], scale_boxes((h, w), boxes, (h0, w0), ratio_pad)), 1)  # (m, 5)
        predn = pred[:, :6].clone()
        scale_boxes((h, w), predn[:, :4], (h0, w0), ratio_pad)  # (n, 6) original pixels
        correct = match_predictions(predn, labelsn, self.iouv, strategy="conf")  # (n, 10), COCO's rule
        self.confusion.process_batch(predn, labelsn)
        self.stats.append((correct.cpu(), pred[:, 4].cpu(), pred[:, 5].cpu(), labels[:, 0].cpu()))
        self.process_extra(pred, predn, (h, w), path, shape, si)
        if self.options.save_txt and self.save_dir is not None and len(predn):
            self.save_txt(predn, (h0, w0), self.save_dir / "labels" / f"{path.stem}.txt")
        if self.options.save_json:
            self.add_json(predn, path)

    def process_extra(self, pred: torch.Tensor, predn: torch.Tensor, input_hw: tuple[int, int], path: Path,
                      shape: tuple, si: int) -> None:
        """What a subclass scores beyond boxes, before the image's outputs are written (nothing here)."""

    def save_txt(self, predn: torch.Tensor, shape: tuple[int, int], file: Path) -> None:
        """YOLO-format rows `cls x y w h [conf]`, normalised to the original image."""
        gain = torch.tensor([shape[1], shape[0], shape[1], shape[0]], device=predn.device)
        xywhn = (xyxy2xywh(predn[:, :4]) / gain).tolist()
        rows = []
        for (x, y, bw, bh), conf, c in zip(xywhn, predn[:, 4].tolist(), predn[:, 5].tolist()):
            suffix = f" {conf:.6f}" if self.options.save_conf else ""
            rows.append(f"{int(c)} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}{suffix}")
        atomic_write_text(file, "\n".join(rows) + "\n")

    def add_json(self, predn: torch.Tensor, path: Path) -> None:
        """COCO results rows: bbox [x, y, w, h] (top-left corner) in original pixels."""
        image_id = coco_image_id(path)
        box = predn[:, :4].clone()
        box[:, 2:] -= box[:, :2]  # (n, 4) x, y, w, h
        for b, conf, c in zip(box.tolist(), predn[:, 4].tolist(), predn[:, 5].tolist()):
            self.jdict.append({"image_id": image_id, "category_id": int(c), "bbox": [round(x, 3) for x in b],
                               "score": round(conf, 5)})

    def plot_batch(self, batch_i: int, imgs: torch.Tensor, targets: torch.Tensor, paths: list,
                   preds: list[torch.Tensor]) -> None:
        """val_batch<i>_labels.jpg and val_batch<i>_pred.jpg (predictions as (n, 7) input-pixel rows)."""
        from utils.plots import plot_images  # matplotlib and cv2 drawing only when plotting

        rows = [torch.cat((torch.full_like(p[:, :1], i), p[:, 5:6], xyxy2xywh(p[:, :4]), p[:, 4:5]), 1)
                for i, p in enumerate(preds)]
        pred_targets = torch.cat(rows, 0) if rows else torch.zeros((0, 7))  # (n, 7) idx, cls, xywh, conf
        try:
            plot_images(imgs, targets, paths, self.save_dir / f"val_batch{batch_i}_labels.jpg", self.names)
            plot_images(imgs, pred_targets, paths, self.save_dir / f"val_batch{batch_i}_pred.jpg", self.names)
        except (OSError, ValueError) as e:
            LOGGER.warning("WARNING: val_batch%d mosaics not written: %s", batch_i, e)

    def gathered(self, stats: list[tuple[torch.Tensor, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All images' (correct (n, 10), conf (n,), pred_cls (n,), target_cls (m,))."""
        if not stats:
            return np.zeros((0, len(self.iouv)), bool), np.zeros(0), np.zeros(0), np.zeros(0)
        return tuple(torch.cat(column, 0).numpy() for column in zip(*stats))

    def finish(self) -> ValResult:
        """mAP and the per-class table from everything accumulated; curves and the confusion matrix."""
        correct, conf, pred_cls, target_cls = self.gathered(self.stats)
        plot = self.plots and len(target_cls) > 0
        ap = ap_per_class(correct, conf, pred_cls, target_cls, plot=plot, save_dir=self.save_dir, names=self.names)
        maps = np.full(self.nc, ap.map)
        known = ap.classes < self.nc
        maps[ap.classes[known]] = ap.ap[known].mean(1)  # per-class mAP@0.5:0.95
        if plot:
            try:
                self.confusion.plot(self.save_dir, self.names)
            except (OSError, ValueError) as e:
                LOGGER.warning("WARNING: confusion matrix not plotted: %s", e)
        return ValResult(mp=ap.mp, mr=ap.mr, map50=ap.map50, map=ap.map, maps=maps,
                         loss=(self.loss / max(self.batches, 1)).cpu().numpy(),
                         speed=self.timer.per_image_ms(self.seen), class_rows=self.class_rows(ap),
                         seen=self.seen)

    def class_rows(self, ap: APResult) -> list[tuple]:
        """(name, images, instances, P, R, mAP50, mAP50-95) per class present in the labels."""
        label_cls = [s[3].numpy().astype(int) for s in self.stats] or [np.zeros(0, int)]
        size = max(self.nc, int(max((c.max(initial=-1) for c in label_cls))) + 1)
        images = np.bincount(np.concatenate([np.unique(c) for c in label_cls]), minlength=size)
        instances = np.bincount(np.concatenate(label_cls), minlength=size)
        rows = []
        for i, c in enumerate(ap.classes):
            name = self.names[c] if c < self.nc else str(c)
            rows.append((name, int(images[c]), int(instances[c]), float(ap.p[i]), float(ap.r[i]),
                         float(ap.ap[i, 0]), float(ap.ap[i].mean())))
        return rows

    def save_json(self) -> Path | None:
        if not self.options.save_json or self.save_dir is None:
            return None
        path = self.save_dir / "predictions.json"
        atomic_write_text(path, json.dumps(self.jdict))
        LOGGER.info("Saving %s (%d detections)", path, len(self.jdict))
        return path


def log_result(result: ValResult, nc: int, options: ValOptions, shape: tuple | None) -> None:
    """The metrics table (unless speed_only) and the speed line."""
    if not options.speed_only:
        if not result.class_rows:
            LOGGER.warning("WARNING: no labels found in the val set, cannot compute metrics without labels")
        for line in result.table(options.verbose or nc < PER_CLASS_ROWS_BELOW):
            LOGGER.info(line)
    shape_text = str(shape) if shape is not None else "(no batches)"
    LOGGER.info("Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape %s", *result.speed,
                shape_text)


def run_validation(model: torch.nn.Module, dataloader: Iterable, names: list[str], save_dir: Path | None,
                   options: ValOptions, compute_loss: LossFn | None = None,
                   device: torch.device | None = None, validator_cls: type[Validator] = Validator) -> ValResult:
    """Evaluate `model` on every batch of `dataloader`; leaves the model in eval mode.

    Batches are (imgs uint8 (B, 3, H, W), targets (n, 6) [img_idx, cls, x, y, w, h] normalised,
    paths, shapes, extras); extras (side inputs of D3N teachers) are passed to the model when
    non-empty. Outputs (plots, labels/, predictions.json) go to save_dir when it is given.
    `validator_cls` scores more than boxes (engine.segment_validator.SegmentValidator: masks too).
    """
    device = device or next(model.parameters()).device
    model.eval()
    validator = validator_cls(model, names, save_dir, options, compute_loss, device,
                              dataset=getattr(dataloader, "dataset", None))
    desc = validator.progress_header()
    quiet = not LOGGER.isEnabledFor(logging.INFO)
    with torch.inference_mode():
        for batch_i, batch in enumerate(tqdm(dataloader, desc=desc, disable=quiet, leave=False)):
            validator.step(batch_i, batch)
        result = validator.finish()
    validator.save_json()
    log_result(result, validator.nc, options, validator.shape)
    return result
