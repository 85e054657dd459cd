"""The YOLOv5 training loss: target-to-anchor matching, CIoU box loss, objectness and class BCE.

`ComputeLoss.build_targets` is the single place where targets are matched to anchors and cells;
the distillation loss (d3n_ext) reuses its `Matches` rather than repeating the rule.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

from utils.boxes import bbox_iou
from utils.hyp import Hyp
from utils.text import readable
from utils.torch_utils import de_parallel

LOGGER = logging.getLogger(__name__)

# Objectness weight per output level, small strides first. YOLOv5's values: 3 levels (P3-P5) use
# [4.0, 1.0, 0.4]; any other count takes the first nl of the P3-P7 list, so 4 levels (P6 models)
# get [4.0, 1.0, 0.25, 0.06]. Fine levels see many more cells, hence the larger weight.
BALANCE_3 = (4.0, 1.0, 0.4)
BALANCE_UP_TO_5 = (4.0, 1.0, 0.25, 0.06, 0.02)
NEIGHBOUR_G = 0.5  # a target also trains the neighbouring cell when it lies within 0.5 cells of it
# (dx, dy) of the cell itself and its left, upper, right and lower neighbours, subtracted from the
# target centre: the order matches the masks of _neighbour_masks.
CELL_OFFSETS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))


def level_balance(nl: int) -> tuple[float, ...]:
    """Per-level objectness weights for a head with nl output levels (see BALANCE_3)."""
    if nl == 3:
        return BALANCE_3
    if not 1 <= nl <= len(BALANCE_UP_TO_5):
        raise ValueError(f"objectness balance is defined for 1-{len(BALANCE_UP_TO_5)} output levels, got {nl}")
    return BALANCE_UP_TO_5[:nl]


@dataclass(frozen=True)
class LossGains:
    """Loss weights derived from a Hyp for one model and image size; logged by the trainer.

    YOLOv5 tunes its gains for 3 levels, 80 classes and 640 px, so they are rescaled here rather
    than written back into the hyp.
    """

    box: float  # hyp.box * 3 / nl
    obj: float  # hyp.obj * (imgsz / 640)^2 * 3 / nl
    cls: float  # hyp.cls * nc / 80 * 3 / nl
    balance: tuple[float, ...]  # objectness weight per level, small strides first
    anchor_t: float  # a target matches an anchor when max(w, h ratio, its inverse) < anchor_t
    label_smoothing: float  # class targets become 1 - eps/2 and eps/2
    fl_gamma: float  # focal loss gamma; 0 = plain BCE
    cls_pw: float  # class BCE positive weight
    obj_pw: float  # objectness BCE positive weight

    @classmethod
    def from_hyp(cls, hyp: Hyp, nl: int, nc: int, imgsz: int) -> "LossGains":
        layers = 3 / nl
        return cls(box=hyp.box * layers, obj=hyp.obj * (imgsz / 640) ** 2 * layers,
                   cls=hyp.cls * nc / 80 * layers, balance=level_balance(nl), anchor_t=hyp.anchor_t,
                   label_smoothing=hyp.label_smoothing, fl_gamma=hyp.fl_gamma, cls_pw=hyp.cls_pw,
                   obj_pw=hyp.obj_pw)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        """The log line: derived gains to 4 significant digits (0.16, not 0.16000000000000003)."""
        return f"LossGains({', '.join(f'{k}={readable(v)}' for k, v in self.as_dict().items())})"


def smooth_bce_targets(eps: float = 0.0) -> tuple[float, float]:
    """(positive, negative) class targets under label smoothing eps (arXiv:1902.04103 eq. 3)."""
    return 1.0 - 0.5 * eps, 0.5 * eps


class FocalLoss(nn.Module):
    """Wraps a BCE-with-logits criterion so easy examples weigh less: FL = α_t (1 - p_t)^γ BCE.

    Useful when objectness negatives swamp the positives (arXiv:1708.02002).
    """

    def __init__(self, bce: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25):
        super().__init__()
        self.bce, self.gamma, self.alpha = bce, gamma, alpha
        self.reduction = bce.reduction
        self.bce.reduction = "none"  # weights apply per element, the reduction comes after

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.bce(logits, target)
        p = logits.sigmoid()
        p_t = target * p + (1 - target) * (1 - p)  # probability given to the true label
        alpha_t = target * self.alpha + (1 - target) * (1 - self.alpha)
        loss = loss * alpha_t * (1.0 - p_t) ** self.gamma
        if self.reduction == "mean":
            return loss.mean()
        return loss.sum() if self.reduction == "sum" else loss


@dataclass
class Matches:
    """Targets matched to (image, anchor, cell) per output level; m = matches at that level.

    Boxes and anchors are in grid units of the level; a box's xy is relative to its cell's corner,
    so it lies in (-0.5, 1.5), the reach of the decoded 2σ - 0.5.
    """

    indices: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]  # (b, a, gj, gi), each (m,)
    tbox: list[torch.Tensor]  # (m, 4) target xywh
    tcls: list[torch.Tensor]  # (m,) class index
    anchors: list[torch.Tensor]  # (m, 2) anchor wh of the matched anchor
    rows: list[torch.Tensor] = dataclasses.field(default_factory=list)  # (m,) the target's row in `targets`


class ComputeLoss:
    """YOLOv5's loss for a Detect head: call with raw maps and (n, 6) targets.

    Returns (total x batch size, shape (1,)) and the detached [box, obj, cls] parts (3,). Raw maps may
    carry more than 5 + nc channels (a Segment head's mask coefficients); this loss reads the first 5 + nc.
    """

    def __init__(self, model: nn.Module, hyp: Hyp, imgsz: int):
        self.detect = de_parallel(model).detect  # read anchors at call time: AutoAnchor or .to() may replace them
        self.nl, self.na, self.nc = self.detect.nl, self.detect.na, self.detect.nc
        self.gains = LossGains.from_hyp(hyp, self.nl, self.nc, imgsz)
        self.cp, self.cn = smooth_bce_targets(self.gains.label_smoothing)
        self.bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([self.gains.cls_pw]))
        self.bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([self.gains.obj_pw]))
        if self.gains.fl_gamma > 0:
            self.bce_cls = FocalLoss(self.bce_cls, self.gains.fl_gamma)
            self.bce_obj = FocalLoss(self.bce_obj, self.gains.fl_gamma)

    def __call__(self, preds: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = preds[0].device
        self.bce_cls.to(device)  # the pos_weight buffers follow the predictions
        self.bce_obj.to(device)
        lbox, lobj, lcls = self.detection_losses(preds, self.build_targets(preds, targets))
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def detection_losses(self, preds: list[torch.Tensor], matches: Matches) -> tuple[torch.Tensor, ...]:
        """(box, obj, cls), each (1,), with the gains applied, for already matched targets."""
        zero = torch.zeros(1, device=preds[0].device)
        lbox, lobj, lcls = zero.clone(), zero.clone(), zero.clone()
        for i, p in enumerate(preds):  # p: (B, na, ny, nx, 5 + nc [+ nm])
            box_i, obj_i, cls_i = self._level_loss(p, matches, i)
            lbox, lobj, lcls = lbox + box_i, lobj + obj_i * self.gains.balance[i], lcls + cls_i
        g = self.gains
        return lbox * g.box, lobj * g.obj, lcls * g.cls

    def _level_loss(self, p: torch.Tensor, matches: Matches, i: int) -> tuple[torch.Tensor, ...]:
        """(box, obj, cls) losses of one level before the gains; objectness targets are the IoUs."""
        b, a, gj, gi = matches.indices[i]
        tobj = torch.zeros(p.shape[:4], dtype=p.dtype, device=p.device)  # (B, na, ny, nx)
        lbox = lcls = torch.zeros((), device=p.device)
        n = b.shape[0]
        if n:
            pxy, pwh, _, pcls = p[b, a, gj, gi, :5 + self.nc].split((2, 2, 1, self.nc), 1)  # the matched predictions
            pxy = pxy.sigmoid() * 2 - 0.5
            pwh = (pwh.sigmoid() * 2) ** 2 * matches.anchors[i]
            iou = bbox_iou(torch.cat((pxy, pwh), 1), matches.tbox[i], CIoU=True).squeeze(-1)  # (n,)
            lbox = (1.0 - iou).mean()
            tobj[b, a, gj, gi] = iou.detach().clamp(0).to(tobj.dtype)  # gr = 1: the target is the IoU itself
            if self.nc > 1:  # a single class needs no class loss
                t = torch.full_like(pcls, self.cn)
                t[torch.arange(n, device=p.device), matches.tcls[i]] = self.cp
                lcls = self.bce_cls(pcls, t)
        lobj = self.bce_obj(p[..., 4], tobj)
        return lbox, lobj, lcls

    def build_targets(self, preds: list[torch.Tensor], targets: torch.Tensor) -> Matches:
        """Match (n, 6) [img, cls, x, y, w, h] normalised targets to anchors and cells, per level.

        An anchor matches when neither side ratio (nor its inverse) reaches anchor_t; each match
        trains its own cell and the two neighbours nearest the target centre.
        """
        if targets.ndim != 2 or targets.shape[1] != 6:
            raise ValueError(f"targets must be (n, 6) [img, cls, x, y, w, h], got {tuple(targets.shape)}")
        na, nt = self.na, targets.shape[0]
        targets = targets.to(device=preds[0].device, dtype=torch.float32)
        anchor_idx = torch.arange(na, device=targets.device, dtype=targets.dtype).view(na, 1, 1).expand(na, nt, 1)
        row = torch.arange(nt, device=targets.device, dtype=targets.dtype).view(1, nt, 1).expand(na, nt, 1)
        per_anchor = torch.cat((targets.expand(na, nt, 6), anchor_idx, row), 2)  # (na, nt, 8): + anchor, row
        matches = Matches([], [], [], [])
        for i, p in enumerate(preds):
            self._match_level(per_anchor, self.detect.anchors[i].to(targets), p.shape, matches)
        return matches

    def _match_level(self, per_anchor: torch.Tensor, anchors: torch.Tensor, shape: torch.Size,
                     matches: Matches) -> None:
        """Append one level's matches; `anchors` (na, 2) and boxes in this level's grid units."""
        ny, nx = shape[2], shape[3]
        gain = per_anchor.new_tensor([1, 1, nx, ny, nx, ny, 1, 1])
        t = per_anchor * gain  # (na, nt, 8) boxes in grid units
        ratio = t[..., 4:6] / anchors[:, None]  # (na, nt, 2)
        t = t[torch.max(ratio, 1 / ratio).amax(2) < self.gains.anchor_t]  # (m, 8)
        cells = _neighbour_masks(t[:, 2:4], nx, ny)  # (5, m)
        offsets = t.new_tensor(CELL_OFFSETS) * NEIGHBOUR_G  # (5, 2)
        offsets = offsets[:, None].expand(5, t.shape[0], 2)[cells]  # (k, 2)
        t = t.expand(5, *t.shape)[cells]  # (k, 8)
        b, c, a = t[:, 0].long(), t[:, 1].long(), t[:, 6].long()
        gxy, gwh = t[:, 2:4], t[:, 4:6]
        gij = (gxy - offsets).long()
        gi, gj = gij[:, 0].clamp(0, nx - 1), gij[:, 1].clamp(0, ny - 1)
        matches.indices.append((b, a, gj, gi))
        matches.tbox.append(torch.cat((gxy - torch.stack((gi, gj), 1), gwh), 1))
        matches.tcls.append(c)
        matches.anchors.append(anchors[a])
        matches.rows.append(t[:, 7].long())


def _neighbour_masks(gxy: torch.Tensor, nx: int, ny: int) -> torch.Tensor:
    """(5, m) which cells each target trains: its own, then left, up, right, down when near that edge.

    A target uses the neighbour across the nearer edge of its cell (fraction < 0.5), unless that
    neighbour would lie outside the grid; so a target trains 3 cells, 1 when exactly centred. As
    in YOLOv5, a centre on a grid line (fraction 0) selects both sides; the far side's offset lands
    back on the target's own cell, which is then trained twice.
    """
    g = NEIGHBOUR_G
    inverse = gxy.new_tensor([nx, ny]) - gxy  # distance from the right/bottom border
    left, up = ((gxy % 1 < g) & (gxy > 1)).T
    right, down = ((inverse % 1 < g) & (inverse > 1)).T
    return torch.stack((torch.ones_like(left), left, up, right, down))
