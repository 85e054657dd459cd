"""Detection metrics: matching, precision/recall/AP per class, the confusion matrix, fitness.

AP follows COCO (101 recall points on the precision envelope); with COCO's matching as well
(strategy "conf") the numbers equal pycocotools', with YOLOv5's (default "iou") they come close.
P, R and F1 are read at the confidence that maximises the mean F1 over classes, as YOLOv5 reports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils.boxes import box_iou
from utils.smoothing import smooth

LOGGER = logging.getLogger(__name__)

RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's recall thresholds
CONF_POINTS = np.linspace(0.0, 1.0, 1000)  # confidence grid of the P, R and F1 curves
MATCH_STRATEGIES = ("iou", "conf")  # YOLOv5's val matching, COCOeval's


def greedy_match(iou: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-to-one matching of rows to columns by descending IoU over the `valid` pairs.

    iou, valid (m, n). A pair that is the best of both its row and its column would be taken by
    the plain greedy loop before any pair competing for its row or column, so each round takes all
    such mutual-best pairs at once and drops their rows and columns. Returns (row_idx, col_idx).
    """
    iou = iou.masked_fill(~valid, -1.0)  # (m, n)
    rows, cols = [], []
    while iou.numel() and bool((iou >= 0).any()):
        best_col = iou.argmax(1)  # (m,)
        best_row = iou.argmax(0)  # (n,)
        row = torch.arange(iou.shape[0], device=iou.device)
        mutual = (best_row[best_col] == row) & (iou[row, best_col] >= 0)
        rows.append(row[mutual])
        cols.append(best_col[mutual])
        iou[rows[-1], :] = -1.0
        iou[:, cols[-1]] = -1.0
    if not rows:
        empty = torch.zeros(0, dtype=torch.long, device=iou.device)
        return empty, empty
    return torch.cat(rows), torch.cat(cols)


def match_predictions(detections: torch.Tensor, labels: torch.Tensor, iouv: torch.Tensor,
                      strategy: str = "iou") -> torch.Tensor:
    """True-positive flags of one image's detections at each IoU threshold.

    detections (n, 6) [x1, y1, x2, y2, conf, cls], labels (m, 5) [cls, x1, y1, x2, y2], iouv (t,).
    "iou": YOLOv5's val matching, same-class pairs one-to-one by descending IoU. "conf": COCO's,
    detections by descending confidence each take the free label of highest IoU; it reproduces
    pycocotools exactly, while "iou" scores a little lower where two detections share one label.
    Returns (n, t) bool on iouv's device.
    """
    iou = box_iou(labels[:, 1:5], detections[:, :4])  # (m, n)
    return match_iou(iou, labels[:, 0], detections[:, 5], detections[:, 4], iouv, strategy)


def match_iou(iou: torch.Tensor, label_cls: torch.Tensor, det_cls: torch.Tensor, conf: torch.Tensor,
              iouv: torch.Tensor, strategy: str = "iou") -> torch.Tensor:
    """`match_predictions` on an IoU already computed, so masks are matched exactly as boxes are.

    iou (m, n) labels x detections, label_cls (m,), det_cls (n,), conf (n,), iouv (t,).
    Returns (n, t) bool on iouv's device.
    """
    if strategy not in MATCH_STRATEGIES:
        raise ValueError(f"match_predictions: strategy '{strategy}' not in {MATCH_STRATEGIES}")
    correct = torch.zeros(iou.shape[1], iouv.numel(), dtype=torch.bool, device=iouv.device)
    if iou.numel() == 0:
        return correct
    iouv = iouv.to(iou.device)
    same_cls = label_cls[:, None].to(iou.device) == det_cls[None, :].to(iou.device)  # (m, n)
    if strategy == "conf":
        return _match_by_conf(iou, same_cls, conf, iouv).to(correct.device)
    # greedy by IoU over the pairs above a threshold takes exactly the prefix of the matching at
    # the lowest threshold, so one matching serves every threshold
    li, di = greedy_match(iou, same_cls & (iou >= iouv.min()))
    correct[di.to(correct.device)] = (iou[li, di, None] >= iouv[None]).to(correct.device)
    return correct


def _match_by_conf(iou: torch.Tensor, same_cls: torch.Tensor, conf: torch.Tensor,
                   iouv: torch.Tensor) -> torch.Tensor:
    """COCOeval's matching, all thresholds at once: iou, same_cls (m, n), conf (n,) -> (n, t).

    A loop over detections, so it runs in numpy on the CPU (a tenth of torch's per-op cost).
    """
    iou_np, iouv_np = iou.cpu().numpy(), iouv.cpu().numpy()
    candidate = same_cls.cpu().numpy()[..., None] & (iou_np[..., None] >= iouv_np)  # (m, n, t)
    t = len(iouv_np)
    free = np.ones((iou_np.shape[0], t), dtype=bool)  # (m, t) labels still unmatched
    correct = np.zeros((iou_np.shape[1], t), dtype=bool)
    thresholds = np.arange(t)
    order = np.argsort(-conf.cpu().numpy(), kind="stable")
    for j in order[candidate.any(axis=(0, 2))[order]]:  # detections that can match at all
        ok = candidate[:, j] & free  # (m, t)
        best = np.where(ok, iou_np[:, j, None], -1.0).argmax(0)  # (t,) label per threshold
        hit = ok[best, thresholds]  # (t,)
        correct[j] = hit
        free[best[hit], thresholds[hit]] = False
    return torch.from_numpy(correct)


@dataclass
class APResult:
    """Per-class results for the classes present in the labels (rows follow `classes`)."""

    p: np.ndarray  # (nc_present,) precision at the best-mean-F1 confidence
    r: np.ndarray  # (nc_present,) recall at that confidence
    f1: np.ndarray  # (nc_present,)
    ap: np.ndarray  # (nc_present, t) AP at each IoU threshold (0.5:0.95 -> t = 10)
    classes: np.ndarray  # (nc_present,) int class ids

    @property
    def map50(self) -> float:
        return float(self.ap[:, 0].mean()) if len(self.ap) else 0.0

    @property
    def map(self) -> float:
        """mAP averaged over the IoU thresholds (0.5:0.95)."""
        return float(self.ap.mean()) if self.ap.size else 0.0

    @property
    def mp(self) -> float:
        return float(self.p.mean()) if len(self.p) else 0.0

    @property
    def mr(self) -> float:
        return float(self.r.mean()) if len(self.r) else 0.0


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray]:
    """COCO AP of one class at one IoU from cumulative recall/precision, (k,) each.

    Precision is replaced by its envelope (best precision at any higher recall) and read at 101
    recall points; points beyond the last recall reached count as 0. Returns (AP, (101,) values).
    """
    envelope = np.flip(np.maximum.accumulate(np.flip(precision)))
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    values = np.zeros(len(RECALL_POINTS))
    reached = idx < len(recall)
    values[reached] = envelope[idx[reached]]
    return float(values.mean()), values


def _class_curves(tp: np.ndarray, conf: np.ndarray, n_labels: int, eps: float):
    """AP per IoU and P/R-vs-confidence curves of one class; detections sorted by conf (desc).

    Returns ap (t,), pr (101,) precision at IoU 0.5 over recall, p (1000,), r (1000,).
    """
    tpc = tp.cumsum(0)  # (k, t)
    fpc = (1 - tp).cumsum(0)
    recall = tpc / (n_labels + eps)
    precision = tpc / (tpc + fpc + eps)
    ap = np.zeros(tp.shape[1])
    pr = np.zeros(len(RECALL_POINTS))
    for j in range(tp.shape[1]):
        ap[j], values = compute_ap(recall[:, j], precision[:, j])
        if j == 0:
            pr = values
    # confidence falls along the detections; interp needs increasing x, hence the negations
    r = np.interp(-CONF_POINTS, -conf, recall[:, 0], left=0)
    p = np.interp(-CONF_POINTS, -conf, precision[:, 0], left=1)
    return ap, pr, p, r


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray,
                 *, plot: bool = False, save_dir: Path | None = None,
                 names: dict[int, str] | list[str] | None = None, eps: float = 1e-16) -> APResult:
    """Precision, recall, F1 and AP per class from the val set's matched detections.

    tp (n, t) bool from `match_predictions`, conf (n,), pred_cls (n,), target_cls (m,) for all
    labels. Classes without labels are left out, as pycocotools does.
    """
    tp = np.asarray(tp, dtype=np.float64)
    tp = tp[:, None] if tp.ndim == 1 else tp  # (n, t)
    conf, pred_cls = np.asarray(conf, dtype=np.float64), np.asarray(pred_cls)
    order = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, n_labels = np.unique(np.asarray(target_cls).astype(int), return_counts=True)
    nc, t = len(classes), tp.shape[1]
    ap, pr = np.zeros((nc, t)), np.zeros((nc, len(RECALL_POINTS)))
    p_curve, r_curve = np.zeros((nc, len(CONF_POINTS))), np.zeros((nc, len(CONF_POINTS)))
    for ci, c in enumerate(classes):
        mine = pred_cls == c
        if mine.any():
            ap[ci], pr[ci], p_curve[ci], r_curve[ci] = _class_curves(
                tp[mine], conf[mine], n_labels[ci], eps)
    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    best = int(smooth(f1_curve.mean(0)).argmax()) if nc else 0
    if plot:
        _plot_curves(pr, ap, p_curve, r_curve, f1_curve, classes, save_dir, names)
    return APResult(p=p_curve[:, best], r=r_curve[:, best], f1=f1_curve[:, best], ap=ap,
                    classes=classes)


def _plot_curves(pr, ap, p_curve, r_curve, f1_curve, classes, save_dir, names) -> None:
    """PR_curve.png, F1_curve.png, P_curve.png and R_curve.png in save_dir."""
    from utils.plots import plot_mc_curve, plot_pr_curve  # matplotlib only when plotting

    if save_dir is None:
        raise ValueError("ap_per_class: plot=True needs save_dir")
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else names or {}
    labels = [str(names.get(int(c), int(c))) for c in classes]
    save_dir = Path(save_dir)
    plot_pr_curve(RECALL_POINTS, pr, ap, save_dir, labels)
    for curve, ylabel, fname in ((f1_curve, "F1", "F1_curve.png"),
                                 (p_curve, "Precision", "P_curve.png"),
                                 (r_curve, "Recall", "R_curve.png")):
        plot_mc_curve(CONF_POINTS, curve, save_dir, labels, xlabel="Confidence", ylabel=ylabel,
                      fname=fname)


class ConfusionMatrix:
    """Counts of (predicted class, true class) pairs, with a background row and column.

    matrix[p, t]: row nc holds missed labels (predicted background), column nc holds detections
    that match no label (true background). Only detections above `conf` count, as in YOLOv5.
    """

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45) -> None:
        self.nc, self.conf, self.iou_thres = nc, conf, iou_thres
        self.matrix = np.zeros((nc + 1, nc + 1), dtype=np.int64)

    def process_batch(self, detections: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Add one image: detections (n, 6) [x1, y1, x2, y2, conf, cls] or None, labels (m, 5)."""
        gt_cls = labels[:, 0].long().cpu().numpy()
        if detections is None or detections.shape[0] == 0:
            np.add.at(self.matrix, (self.nc, gt_cls), 1)
            return
        detections = detections[detections[:, 4] > self.conf]
        det_cls = detections[:, 5].long().cpu().numpy()
        iou = box_iou(labels[:, 1:5], detections[:, :4])  # (m, n)
        li, di = greedy_match(iou, iou > self.iou_thres)  # class-agnostic: confusions count
        li, di = li.cpu().numpy(), di.cpu().numpy()
        np.add.at(self.matrix, (det_cls[di], gt_cls[li]), 1)
        missed = np.setdiff1d(np.arange(len(gt_cls)), li)
        np.add.at(self.matrix, (self.nc, gt_cls[missed]), 1)
        spurious = np.setdiff1d(np.arange(len(det_cls)), di)
        np.add.at(self.matrix, (det_cls[spurious], self.nc), 1)

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        """(nc,) true positives and false positives per class (background excluded)."""
        tp = self.matrix.diagonal()[:-1].copy()
        fp = self.matrix.sum(1)[:-1] - tp
        return tp, fp

    def plot(self, save_dir: Path, names: list[str], normalize: bool = True) -> Path:
        """confusion_matrix.png in save_dir; columns normalised to 1 (per true class) by default."""
        from utils.plots import plot_confusion_matrix  # matplotlib only when plotting

        return plot_confusion_matrix(self.matrix, Path(save_dir), names, normalize=normalize)


def fitness(x: np.ndarray) -> np.ndarray:
    """Model selection score from rows [P, R, mAP50, mAP50-95, ...]: 0.1 mAP50 + 0.9 mAP50-95."""
    x = np.asarray(x, dtype=np.float64)
    return 0.1 * x[..., 2] + 0.9 * x[..., 3]
