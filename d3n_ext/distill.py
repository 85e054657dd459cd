"""Power transfer (paper III-D, eqs. 6-7): objectness-scaled distillation of the hybrid teacher.

The teacher and the student share the head layout, so their raw maps (B, na, ny, nx, 5 + nc)
correspond element for element. With s = sigmoid(teacher objectness logit), detached:

    D_obj = mean((o_s - o_t)^2)                      (eq. 7, unscaled; `obj_scaled` multiplies by s)
    D_cls = mean(s * (p_s - p_t)^2)                  (background predictions teach nothing)
    D_box = mean(s * (b_s - b_t)^2)
    loss  = YOLOv5 loss + bs * lambda * (box * sum D_box + obj * sum D_obj + cls * sum D_cls)

with the loss gains of the student's ComputeLoss. The temperature only matters for the `kl`
variant (softened class distributions, times T^2); with `l2` it has no effect.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.loading import build_from_checkpoint
from utils.checkpoints import load_checkpoint
from utils.hyp import Hyp
from utils.tasks import DetectionTask

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillOptions:
    teacher: str  # hybrid teacher checkpoint (its EMA weights are used)
    latents: str  # feature repository the teacher reads
    dist_lambda: float = 1.0  # lambda of eq. 7
    dist_loss: str = "l2"  # l2 (the paper) or kl (softened class distributions)
    temperature: float = 20.0  # the paper's value; only the kl variant uses it
    obj_scaled: bool = False  # also scale the objectness term by the teacher's objectness

    def __post_init__(self):
        if self.dist_loss not in ("l2", "kl"):
            raise ValueError(f"--dist-loss {self.dist_loss!r}: expected l2 or kl")
        if self.temperature <= 0:
            raise ValueError(f"--temperature {self.temperature}: must be positive")


def distillation_terms(student: list[torch.Tensor], teacher: list[torch.Tensor], dist_loss: str = "l2",
                       temperature: float = 20.0, obj_scaled: bool = False) -> torch.Tensor:
    """(box, obj, cls) distillation terms summed over levels; teacher maps are treated as constants."""
    terms = torch.zeros(3, device=student[0].device)
    for ps, pt in zip(student, teacher):
        pt = pt.detach().float()
        ps = ps.float()
        s = pt[..., 4:5].sigmoid()  # (B, na, ny, nx, 1) teacher objectness
        box = (s * (ps[..., :4] - pt[..., :4]) ** 2).mean()
        obj_sq = (ps[..., 4:5] - pt[..., 4:5]) ** 2
        obj = (s * obj_sq).mean() if obj_scaled else obj_sq.mean()
        if pt.shape[-1] <= 5:
            cls = ps.new_zeros(())
        elif dist_loss == "kl":
            log_p = F.log_softmax(ps[..., 5:] / temperature, -1)
            q = F.softmax(pt[..., 5:] / temperature, -1)
            kl = (q * (q.clamp_min(1e-12).log() - log_p)).sum(-1, keepdim=True)
            cls = (s * kl).mean() * temperature ** 2
        else:
            cls = (s * (ps[..., 5:] - pt[..., 5:]) ** 2).mean()
        terms = terms + torch.stack((box, obj, cls))
    return terms


def load_teacher(path: str | Path, device: torch.device) -> torch.nn.Module:
    """The hybrid teacher's EMA weights, frozen, in eval mode."""
    model = build_from_checkpoint(load_checkpoint(path, expect="detector"), path, use_ema=True).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class DistillationTask(DetectionTask):
    """Student training with ground truth plus the frozen teacher's predictions on the same batch."""

    loss_names = ("box_loss", "obj_loss", "cls_loss", "dist_loss")

    def __init__(self, options: DistillOptions):
        from d3n_ext.latent_dataset import LatentDataset

        self.options = options
        self.dataset_cls = LatentDataset
        self.teacher: torch.nn.Module | None = None

    def _teacher(self, device: torch.device) -> torch.nn.Module:
        if self.teacher is None:
            from d3n_ext.binding import check_bound_to
            from d3n_ext.repository import LatentRepository

            self.teacher = load_teacher(self.options.teacher, device)
            check_bound_to(self.teacher.yaml, LatentRepository(self.options.latents), self.options.teacher)
        return self.teacher

    def dataset_kwargs(self, model: torch.nn.Module) -> dict[str, Any]:
        teacher = self._teacher(next(model.parameters()).device)
        return {"repository": Path(self.options.latents), "side_inputs": teacher.side_inputs}

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        teacher = self._teacher(next(model.parameters()).device)
        s, t = model.detect, teacher.detect
        if (s.nl, s.na, s.nc) != (t.nl, t.na, t.nc) or not torch.equal(s.stride, t.stride):
            raise ValueError(f"{self.options.teacher}: the teacher's head (levels {t.nl}, anchors {t.na}, classes {t.nc}, "
                             f"strides {t.stride.tolist()}) differs from the student's ({s.nl}, {s.na}, {s.nc}, "
                             f"{s.stride.tolist()}); distil into a student of the same scale and classes")
        return model

    def setup(self, model: torch.nn.Module, hyp: Hyp, imgsz: int, device: torch.device) -> None:
        super().setup(model, hyp, imgsz, device)
        self.teacher = self._teacher(device).to(device)

    def forward(self, model: torch.nn.Module, imgs: torch.Tensor, extras: dict[str, torch.Tensor]):
        return model(imgs)  # the student is a plain YOLOv5: it never sees the latents

    def loss(self, preds, targets, imgs, extras):
        gt_loss, gt_items = self.compute_loss(preds, targets)
        with torch.no_grad():
            teacher_raw = self.teacher(imgs, extras)[1]
        o = self.options
        terms = distillation_terms(preds, teacher_raw, o.dist_loss, o.temperature, o.obj_scaled)
        g = self.compute_loss.gains
        dist = imgs.shape[0] * o.dist_lambda * (g.box * terms[0] + g.obj * terms[1] + g.cls * terms[2])
        return gt_loss + dist, torch.cat((gt_items, dist.detach().view(1)))

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"distilled_from": asdict(self.options)}
