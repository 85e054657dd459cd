"""Power transfer (paper III-D, eqs. 6-7): objectness-scaled distillation of the hybrid teacher.

The teacher and the student share the head layout, so their raw maps (B, na, ny, nx, 5 + nc)
correspond element for element. With s = sigmoid(teacher objectness logit), detached:

    D_obj = mean((o_s - o_t)^2)                      (eq. 7, unscaled; `obj_scaled` multiplies by s)
    D_cls = mean(s * (p_s - p_t)^2)                  (background predictions teach nothing)
    D_box = mean(s * (b_s - b_t)^2)
    loss  = YOLOv5 loss + bs * lambda * (box * sum D_box + obj * sum D_obj + cls * sum D_cls)

with the loss gains of the student's ComputeLoss. The temperature only matters for the `kl`
variant (softened class distributions, times T^2); with `l2` it has no effect.

`dist_feat` adds feature-level distillation: the maps the teacher's Detect reads (its fused neck
outputs) against the student's, which have the same widths, so no adapter is needed:

    D_feat = sum over levels of mean((f_s - f_t)^2) / mean(f_t^2)    (scale-free per level)
    loss  += bs * dist_feat * D_feat

Unlabelled images (label-efficient D3N): eqs. 6-7 need no labels, so with `unlabeled_share` > 0 each batch
of labelled images is joined with images from the data YAML's `unlabeled:`. The YOLOv5 loss covers the
labelled images only; the distillation terms cover all, an unlabelled image's scaled by `unlabeled_weight`.

A teacher without side inputs (a trained plain YOLOv5) is the self-distillation control: the same
task, the same terms, no DDPM. train_distill.py runs this task (the plug-in adds its flags).

Segmentation (paper Table IV): with a YOLOv5-seg teacher and student the raw maps end in nm mask
coefficients; the class term leaves them out and a coefficient term joins, scaled like the others, with
the box gain (YOLOv5-seg's mask loss weight); `dist_proto` optionally adds the prototypes:

    D_coef  = mean(s * (m_s - m_t)^2)                         per level, summed
    D_proto = mean((P_s - P_t)^2) / mean(P_t^2)
    loss    = YOLOv5-seg loss + bs * lambda * (... + box * D_coef) + bs * dist_proto * D_proto
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from d3n_ext.fusion.teacher_inputs import RepositoryInputs
from engine.plugins import InputRules
from engine.tasks import DetectionTask, SegmentationTask, register_task
from models.loading import build_from_checkpoint, read_detector_checkpoint
from models.yolo import reads_side_inputs
from utils.hyp import Hyp
from utils.dataloaders import UNLABELED
from utils.segment_dataset import MASKS
from utils.torch_utils import channels_last, de_parallel

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillOptions:
    teacher: str  # teacher checkpoint (its EMA weights are used): a hybrid, or a plain YOLOv5 (self-distillation)
    latents: str = ""  # feature repository a hybrid teacher reads ('' for a plain teacher)
    dist_lambda: float = 1.0  # lambda of eq. 7
    dist_loss: str = "l2"  # l2 (the paper) or kl (softened class distributions)
    temperature: float = 20.0  # the paper's value; only the kl variant uses it
    obj_scaled: bool = False  # also scale the objectness term by the teacher's objectness
    dist_feat: float = 0.0  # weight of the feature-level term on Detect's input maps (0 = outputs only)
    dist_proto: float = 0.0  # segmentation: weight of the prototype term (0 = coefficients only)
    unlabeled_share: float = 0.0  # share of each batch drawn from the data's unlabeled images (distillation only)
    unlabeled_weight: float = 1.0  # weight of an unlabelled image's distillation terms (a labelled image's: 1)

    def __post_init__(self):
        if self.dist_loss not in ("l2", "kl"):
            raise ValueError(f"--dist-loss {self.dist_loss!r}: expected l2 or kl")
        if self.temperature <= 0:
            raise ValueError(f"--temperature {self.temperature}: must be positive")
        if self.dist_feat < 0:
            raise ValueError(f"--dist-feat {self.dist_feat}: must be >= 0")
        if self.dist_proto < 0:
            raise ValueError(f"--dist-proto {self.dist_proto}: must be >= 0")
        if not 0 <= self.unlabeled_share < 1:
            raise ValueError(f"--unlabeled-share {self.unlabeled_share}: expected a share of the batch in [0, 1)")
        if self.unlabeled_weight < 0:
            raise ValueError(f"--unlabeled-weight {self.unlabeled_weight}: must be >= 0")


def add_distill_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """train_distill.py's own flags (the plug-in adds them; --latents is the plug-in's shared flag)."""
    p.add_argument("--teacher", default="",
                   help="teacher checkpoint, required unless --resume: a hybrid (train.py --latents ...) or a plain YOLOv5")
    p.add_argument("--dist-lambda", type=float, default=1.0,
                   help="weight lambda of the distillation terms, eq. 7 (default: %(default)s)")
    p.add_argument("--dist-loss", choices=["l2", "kl"], default="l2",
                   help="distance: l2 (paper) or kl on classes (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=20.0,
                   help="softening temperature; used by --dist-loss kl only (default: %(default)s)")
    p.add_argument("--obj-scaled", action="store_true", help="also scale the objectness term by the teacher's objectness")
    p.add_argument("--dist-feat", type=float, default=0.0,
                   help="weight of feature-level distillation of the maps Detect reads, 0 = outputs only "
                        "(default: %(default)s)")
    p.add_argument("--dist-proto", type=float, default=0.0,
                   help="segmenters: weight of distilling the mask prototypes, 0 = mask coefficients only "
                        "(default: %(default)s)")
    p.add_argument("--unlabeled-share", type=float, default=0.0,
                   help="share of each batch drawn from the data YAML's unlabeled: images, which get the distillation "
                        "terms only; 0.5 = as many unlabelled as labelled images (default: %(default)s, none)")
    p.add_argument("--unlabeled-weight", type=float, default=1.0,
                   help="weight of an unlabelled image's distillation terms, a labelled image's being 1 "
                        "(default: %(default)s)")
    p.add_argument("--mask-ratio", type=int, default=4,
                   help="segmenters: masks at 1/mask-ratio of the input size (default: %(default)s)")
    p.add_argument("--no-overlap", action="store_true", help="segmenters: one mask per object, not YOLOv5's overlap map")
    return p


def teacher_repository(teacher: str, latents: str = "") -> str:
    """The repository a teacher reads: `latents` if given, else the one a hybrid teacher was trained with (as its
    checkpoint records); '' for a plain YOLOv5, which must not be given one."""
    ckpt = read_detector_checkpoint(teacher)
    if not reads_side_inputs(ckpt.get("model_yaml") or {}):
        if latents:
            raise ValueError(f"{teacher}: a plain YOLOv5 teacher reads no latents; drop --latents")
        return ""  # a plain teacher: self-distillation, no latents
    repo = latents or (ckpt.get("task") or {}).get("repository") or ""
    if not repo:
        raise ValueError(f"{teacher}: records no feature repository; pass --latents")
    return str(repo)


def distill_options(args: argparse.Namespace) -> DistillOptions:
    """DistillOptions from train_distill.py's flags; a hybrid teacher's repository defaults to its own."""
    if not args.teacher:
        raise ValueError("--teacher is required (a hybrid D3N checkpoint, or a plain YOLOv5 for self-distillation)")
    values = {f.name: getattr(args, f.name) for f in fields(DistillOptions) if hasattr(args, f.name)}
    values["latents"] = teacher_repository(args.teacher, args.latents)
    return DistillOptions(**values)


def distillation_terms(student: list[torch.Tensor], teacher: list[torch.Tensor], dist_loss: str = "l2",
                       temperature: float = 20.0, obj_scaled: bool = False, nm: int = 0,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """(box, obj, cls) distillation terms summed over levels; teacher maps are treated as constants.
    `nm` trailing columns (a segmenter's mask coefficients) are not classes: `coefficient_term` takes them.
    `weights` (B,) scales each image's share of every term (unlabelled images may count less)."""
    terms = torch.zeros(3, device=student[0].device)
    w = 1.0 if weights is None else weights.float().view(-1, 1, 1, 1, 1)
    for ps, pt in zip(student, teacher):
        pt = pt.detach().float()[..., :pt.shape[-1] - nm]
        ps = ps.float()[..., :ps.shape[-1] - nm]
        s = pt[..., 4:5].sigmoid() * w  # (B, na, ny, nx, 1) teacher objectness, times the image's weight
        box = (s * (ps[..., :4] - pt[..., :4]) ** 2).mean()
        obj_sq = (ps[..., 4:5] - pt[..., 4:5]) ** 2
        obj = (s * obj_sq).mean() if obj_scaled else (w * obj_sq).mean()
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


def coefficient_term(student: list[torch.Tensor], teacher: list[torch.Tensor], nm: int) -> torch.Tensor:
    """D_coef: the mask coefficients' squared error scaled by the teacher's objectness, summed over levels."""
    term = student[0].new_zeros((), dtype=torch.float32)
    for ps, pt in zip(student, teacher):
        pt = pt.detach().float()
        s = pt[..., 4:5].sigmoid()
        term = term + (s * (ps.float()[..., -nm:] - pt[..., -nm:]) ** 2).mean()
    return term


def feature_term(student: list[torch.Tensor], teacher: list[torch.Tensor],
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """D_feat: per level the squared error of the student's map relative to the teacher's energy, summed."""
    term = student[0].new_zeros((), dtype=torch.float32)
    w = 1.0 if weights is None else weights.float().view(-1, 1, 1, 1)
    for fs, ft in zip(student, teacher):
        ft = ft.detach().float()
        term = term + (w * (fs.float() - ft) ** 2).mean() / ft.pow(2).mean().clamp_min(1e-6)
    return term


def labelled_loss(compute_loss, preds: list[torch.Tensor], targets: torch.Tensor,
                  unlabeled: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """YOLOv5's loss over the batch's labelled images only: an unlabelled image has no boxes, and scoring its
    objectness against none would teach the student that it holds no defect. `unlabeled`: (B,) flags or None."""
    if unlabeled is None or not bool(unlabeled.any()):
        return compute_loss(preds, targets)
    keep = unlabeled == 0
    if not bool(keep.any()):  # an all-unlabelled batch: the distillation terms alone
        return preds[0].new_zeros(1), preds[0].new_zeros(3)  # shaped as ComputeLoss returns them
    new_index = torch.cumsum(keep.long(), 0) - 1  # image i of the batch -> its index among the labelled ones
    targets = targets.clone()
    targets[:, 0] = new_index[targets[:, 0].long()].to(targets.dtype)
    return compute_loss([p[keep] for p in preds], targets)


class DetectInputs:
    """Keeps the maps a model's Detect head was last called with (its neck outputs), via a forward pre-hook."""

    def __init__(self, detect: torch.nn.Module):
        self.maps: list[torch.Tensor] = []
        self.handle = detect.register_forward_pre_hook(self._keep)

    def _keep(self, module: torch.nn.Module, args: tuple) -> None:
        self.maps = list(args[0])


def check_same_head(student: torch.nn.Module, teacher: torch.nn.Module, source: str) -> None:
    """Refuse a teacher whose raw maps do not correspond element for element with the student's."""
    s, t = student.detect, teacher.detect
    if s.nm != t.nm:
        what = lambda m: f"a segmenter ({m.nm} mask coefficients)" if m.nm else "a detector"  # noqa: E731
        raise ValueError(f"{source}: the teacher is {what(t)} and the student {what(s)}; distil like into like")
    if (s.nl, s.na, s.nc) != (t.nl, t.na, t.nc) or not torch.equal(s.stride.cpu(), t.stride.cpu()):
        raise ValueError(f"{source}: the teacher's head (levels {t.nl}, anchors {t.na}, classes {t.nc}, "
                         f"strides {t.stride.tolist()}) differs from the student's ({s.nl}, {s.na}, {s.nc}, "
                         f"{s.stride.tolist()}); distil into a student of the same scale and classes")
    if not torch.allclose(s.anchors.cpu(), t.anchors.cpu()):
        px = lambda m: (m.anchors.cpu() * m.stride.cpu().view(-1, 1, 1)).round().int().flatten(1).tolist()  # noqa: E731
        raise ValueError(f"{source}: the teacher's anchors {px(t)} differ from the student's {px(s)} (AutoAnchor chose "
                         "others); train the student with the teacher's anchors (same YAML, or --noautoanchor)")


def is_segmenter(checkpoint: str | Path) -> bool:
    """Whether a checkpoint's model ends in a Segment head (read from its YAML, nothing built)."""
    head = (read_detector_checkpoint(checkpoint).get("model_yaml") or {}).get("head") or [[None] * 3]
    return head[-1][2] == "Segment"


def load_teacher(path: str | Path, device: torch.device) -> torch.nn.Module:
    """The teacher's EMA weights, frozen, in eval mode, BatchNorms folded and stored NHWC like the student's.

    It only ever runs forward, so inference's speed-ups apply: per distillation step (32 images, 160 px, 2 CPU
    threads) the hybrid's forward took 184 ms instead of 213, a plain yolov5n's 63 instead of 76; the outputs
    differ by float rounding (2e-5 on raw maps)."""
    model = build_from_checkpoint(read_detector_checkpoint(path), path, use_ema=True).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return channels_last(model.fuse())


@register_task
class DistillationTask(DetectionTask):
    """Student training with ground truth plus the frozen teacher's predictions on the same batch."""

    kind = "distill"
    script = "distill"
    loss_names = ("box_loss", "obj_loss", "cls_loss", "dist_loss")

    def __init__(self, options: DistillOptions, inputs: RepositoryInputs | None = None):
        """`inputs`: the teacher's repository already opened (else opened from options.latents)."""
        self.options = options
        self.teacher: torch.nn.Module | None = None
        self.hooks: tuple[DetectInputs, DetectInputs] | None = None
        self.inputs = inputs if inputs is not None or not options.latents else RepositoryInputs.open(options.latents)
        self.rules = self.inputs.rules if self.inputs else InputRules()

    @classmethod
    def from_flags(cls, args: argparse.Namespace) -> "DistillationTask":
        """A segmentation teacher (Segment head) makes a segmentation distillation."""
        options = distill_options(args)
        if is_segmenter(options.teacher):
            return SegmentDistillationTask(options, mask_ratio=args.mask_ratio, overlap=not args.no_overlap)
        return cls(options)

    def state(self) -> dict[str, Any]:
        return asdict(self.options)

    @classmethod
    def from_state(cls, state: dict[str, Any], args=None) -> "DistillationTask":
        """On --resume a --latents given again wins: the repository may have moved since."""
        return cls(DistillOptions(**{**state, "latents": getattr(args, "latents", "") or state.get("latents", "")}))

    def _teacher(self, device: torch.device) -> torch.nn.Module:
        if self.teacher is None:
            self.teacher = load_teacher(self.options.teacher, device)
            if self.teacher.side_inputs and self.inputs is None:
                raise ValueError(f"{self.options.teacher}: this teacher is a D3N hybrid that reads latents; "
                                 "pass the feature repository it was trained with (--latents)")
            if self.inputs is not None and not self.teacher.side_inputs:
                raise ValueError(f"{self.options.teacher}: a plain YOLOv5 teacher reads no latents; drop --latents")
        return self.teacher

    def dataset_kwargs(self, model: torch.nn.Module) -> dict[str, Any]:
        teacher = self._teacher(next(model.parameters()).device)
        if self.inputs is None:
            return {}
        self.dataset_cls, kwargs = self.inputs.dataset(teacher, self.options.teacher)
        return kwargs

    def setup(self, model: torch.nn.Module, hyp: Hyp, imgsz: int, device: torch.device) -> None:
        """After AutoAnchor has run on the student: only then are its anchors final."""
        super().setup(model, hyp, imgsz, device)
        self.teacher = self._teacher(device).to(device)
        check_same_head(model, self.teacher, self.options.teacher)
        if self.options.dist_feat > 0 and self.hooks is None:
            self.hooks = (DetectInputs(de_parallel(model).detect), DetectInputs(self.teacher.detect))

    def unlabeled_batch(self, batch_size: int) -> int:
        """Unlabelled images per batch so that they make `unlabeled_share` of it (0.5: as many as labelled)."""
        share = self.options.unlabeled_share
        return max(1, round(batch_size * share / (1 - share))) if share > 0 else 0

    def forward(self, model: torch.nn.Module, imgs: torch.Tensor, extras: dict[str, torch.Tensor]):
        return model(imgs)  # the student is a plain YOLOv5: it never sees the latents

    def image_weights(self, extras: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """(B,) weight of each image's distillation terms: 1 labelled, unlabeled_weight unlabelled; None: all 1."""
        flags = extras.get(UNLABELED)
        return None if flags is None else 1 + (self.options.unlabeled_weight - 1) * flags

    def loss(self, preds, targets, imgs, extras):
        gt_loss, gt_items = labelled_loss(self.compute_loss, preds, targets, extras.get(UNLABELED))
        o, weights = self.options, self.image_weights(extras)
        extras = {k: v for k, v in extras.items() if k != UNLABELED}
        with torch.no_grad():
            teacher_raw = super().forward(self.teacher, imgs, extras)[1]  # latents only for a hybrid teacher
        terms = distillation_terms(preds, teacher_raw, o.dist_loss, o.temperature, o.obj_scaled, weights=weights)
        g = self.compute_loss.gains
        dist = imgs.shape[0] * o.dist_lambda * (g.box * terms[0] + g.obj * terms[1] + g.cls * terms[2])
        if self.hooks is not None:
            dist = dist + imgs.shape[0] * o.dist_feat * feature_term(self.hooks[0].maps, self.hooks[1].maps, weights)
        return gt_loss + dist, torch.cat((gt_items, dist.detach().view(1)))

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"distilled_from": asdict(self.options)}


@register_task
class SegmentDistillationTask(DistillationTask, SegmentationTask):
    """Seg student training: YOLOv5-seg's loss plus the detection terms, the mask-coefficient term and optionally
    the prototype term, against a frozen seg teacher (a hybrid D3N seg teacher, or a plain one: the control)."""

    kind = "distill-seg"
    loss_names = ("box_loss", "seg_loss", "obj_loss", "cls_loss", "dist_loss")

    def __init__(self, options: DistillOptions, inputs: RepositoryInputs | None = None, mask_ratio: int = 4,
                 overlap: bool = True):
        DistillationTask.__init__(self, options, inputs)
        SegmentationTask.__init__(self, mask_ratio, overlap)

    def state(self) -> dict[str, Any]:
        return {**asdict(self.options), **SegmentationTask.state(self)}

    @classmethod
    def from_state(cls, state: dict[str, Any], args=None) -> "SegmentDistillationTask":
        state = dict(state)
        mask_ratio, overlap = state.pop("mask_ratio"), state.pop("overlap")
        base = DistillationTask.from_state(state, args)  # its rule for the repository
        return cls(base.options, base.inputs, mask_ratio=mask_ratio, overlap=overlap)

    def unlabeled_batch(self, batch_size: int) -> int:
        if self.options.unlabeled_share > 0:
            raise ValueError("--unlabeled-share: unlabelled images are distilled into detectors only, not segmenters")
        return 0

    def dataset_kwargs(self, model: torch.nn.Module) -> dict[str, Any]:
        """The masks' options, with the teacher's latents when it reads them (its dataset then carries both)."""
        return {**DistillationTask.dataset_kwargs(self, model), **SegmentationTask.dataset_kwargs(self, model)}

    def loss(self, preds, targets, imgs, extras):
        gt_loss, gt_items = self.segment_loss(preds, targets, extras[MASKS])
        raw, protos = preds
        with torch.no_grad():
            (_, teacher_raw), teacher_protos = SegmentationTask.forward(self, self.teacher, imgs, extras)
        o, nm, g = self.options, self.teacher.detect.nm, self.compute_loss.gains
        terms = distillation_terms(raw, teacher_raw, o.dist_loss, o.temperature, o.obj_scaled, nm)
        coefficients = coefficient_term(raw, teacher_raw, nm)
        dist = imgs.shape[0] * o.dist_lambda * (g.box * (terms[0] + coefficients) + g.obj * terms[1] + g.cls * terms[2])
        if o.dist_proto > 0:
            dist = dist + imgs.shape[0] * o.dist_proto * feature_term([protos], [teacher_protos])
        if self.hooks is not None:
            dist = dist + imgs.shape[0] * o.dist_feat * feature_term(self.hooks[0].maps, self.hooks[1].maps)
        return gt_loss + dist, torch.cat((gt_items, dist.detach().view(1)))
