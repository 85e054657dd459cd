"""Training tasks: what a training step computes, apart from the loop that runs it.

`train.py` and `train_distill.py` share one trainer; the task owns the loss (and, for
distillation, the frozen teacher), so the loop never branches on what kind of training it runs.
A task describes itself: its `kind` and `state()` are saved with every checkpoint and rebuild it on
--resume (`task_from_state`); plug-ins register their kinds with `register_task`.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from engine.plugins import InputRules, check_no_plugin_flags, registered_plugins
from engine.segment_validator import SegmentValidator
from engine.validator import Validator
from utils.dataloaders import LoadImagesAndLabels
from utils.hyp import Hyp
from utils.loss import ComputeLoss
from utils.segment_dataset import MASKS, LoadImagesAndMasks
from utils.segment_loss import ComputeSegmentLoss
from utils.torch_utils import de_parallel

TASKS: dict[str, type["DetectionTask"]] = {}


def register_task(cls: type["DetectionTask"]) -> type["DetectionTask"]:
    """Class decorator: make a task kind rebuildable from checkpoints (`task_from_state`)."""
    TASKS[cls.kind] = cls
    return cls


@register_task
class DetectionTask:
    """Plain YOLOv5 training: ground-truth loss only."""

    kind: str = "detect"
    script: str = "train"  # the script that trains (and resumes) this kind: a key of SCRIPT_COMMANDS
    loss_names: tuple[str, ...] = ("box_loss", "obj_loss", "cls_loss")
    dataset_cls: type = LoadImagesAndLabels
    validator_cls: type[Validator] = Validator  # per-epoch validation; its result_type names the results.csv columns
    rules: InputRules = InputRules()  # what the task's inputs demand (e.g. --scale)

    def state(self) -> dict[str, Any]:
        """JSON-able options that rebuild this task with `from_state` (saved in train_opts for --resume)."""
        return {}

    @classmethod
    def from_state(cls, state: dict[str, Any], args: argparse.Namespace | None = None) -> "DetectionTask":
        """The task a checkpoint describes; flags given again on --resume (`args`) may update its options."""
        return cls()

    def model_cfg(self, cfg: dict) -> dict:
        """The model YAML dict to build (a plug-in may fill in rows from its own data)."""
        return cfg

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Called once the model is built (a plug-in may load frozen parts into it)."""
        return model

    def setup(self, model: torch.nn.Module, hyp: Hyp, imgsz: int, device: torch.device) -> None:
        if de_parallel(model).detect.nm:
            raise ValueError(f"{_yaml_name(model)}: a segmentation model (Segment head); train it on polygon "
                             "labels with `python -m segment.train`")
        self.compute_loss = ComputeLoss(de_parallel(model), hyp, imgsz)

    def unlabeled_batch(self, batch_size: int) -> int:
        """Unlabelled images (the data YAML's `unlabeled:`) joined to each batch of `batch_size` labelled ones."""
        return 0

    def dataset_kwargs(self, model: torch.nn.Module) -> dict[str, Any]:
        """Extra keyword arguments for the dataset class (a plug-in's dataset takes its own)."""
        return {}

    def forward(self, model: torch.nn.Module, imgs: torch.Tensor, extras: dict[str, torch.Tensor]):
        return model(imgs, extras) if extras else model(imgs)

    def loss(self, preds: list[torch.Tensor], targets: torch.Tensor, imgs: torch.Tensor,
             extras: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to back-propagate, detached items named by loss_names)."""
        return self.compute_loss(preds, targets)

    def validation_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """What `validator_cls` runs (a plug-in may wrap the model, e.g. to feed it side inputs)."""
        return model

    def epoch_log(self, model: torch.nn.Module) -> dict[str, float]:
        """Extra per-epoch figures for results.csv (e.g. learned fusion weights)."""
        return {}

    def on_train_end(self, save_dir) -> None:
        """Called on rank 0 after the final validation (e.g. extra plots)."""

    def checkpoint_extra(self) -> dict[str, Any]:
        """Task facts saved with each checkpoint (e.g. which teacher distilled it)."""
        return {}


def _yaml_name(model: torch.nn.Module) -> str:
    return de_parallel(model).yaml.get("yaml_file", "the model")


@register_task
class SegmentationTask(DetectionTask):
    """YOLOv5-seg training: the detection loss plus the mask loss, on polygon labels rasterised to masks.

    `mask_ratio`: masks at 1/mask_ratio of the input (4 matches the prototypes' stride); `overlap`: one map
    of instance numbers per image (YOLOv5's default) instead of one mask per object.
    """

    kind = "segment"
    script = "segment"
    loss_names = ("box_loss", "seg_loss", "obj_loss", "cls_loss")
    dataset_cls = LoadImagesAndMasks
    validator_cls = SegmentValidator

    def __init__(self, mask_ratio: int = 4, overlap: bool = True):
        if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, int) or mask_ratio < 1:
            raise ValueError(f"--mask-ratio {mask_ratio!r}: expected a positive integer (YOLOv5: 4)")
        self.mask_ratio, self.overlap = mask_ratio, bool(overlap)

    def state(self) -> dict[str, Any]:
        return {"mask_ratio": self.mask_ratio, "overlap": self.overlap}

    @classmethod
    def from_state(cls, state: dict[str, Any], args: argparse.Namespace | None = None) -> "SegmentationTask":
        return cls(**state)

    def dataset_kwargs(self, model: torch.nn.Module) -> dict[str, Any]:
        return {"mask_ratio": self.mask_ratio, "overlap": self.overlap}

    def setup(self, model: torch.nn.Module, hyp: Hyp, imgsz: int, device: torch.device) -> None:
        if not de_parallel(model).detect.nm:
            raise ValueError(f"{_yaml_name(model)}: segmentation needs a model with a Segment head "
                             "(e.g. yolov5s-seg.yaml)")
        self.compute_loss = ComputeLoss(de_parallel(model), hyp, imgsz)  # box/obj/cls, also the validation loss
        self.segment_loss = ComputeSegmentLoss(self.compute_loss, self.overlap)

    def forward(self, model: torch.nn.Module, imgs: torch.Tensor, extras: dict[str, torch.Tensor]):
        """(raw maps, protos); the masks stay out of the model's side inputs."""
        return super().forward(model, imgs, {k: v for k, v in extras.items() if k != MASKS})

    def loss(self, preds, targets: torch.Tensor, imgs: torch.Tensor,
             extras: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.segment_loss(preds, targets, extras[MASKS])



SCRIPT_COMMANDS = {"train": "train.py", "segment": "python -m segment.train", "distill": "train_distill.py"}


def check_resume_script(task: DetectionTask, script: str, source: str) -> None:
    """A run resumes with the script that started it (its flags and defaults are that script's)."""
    if task.script != script:
        raise ValueError(f"{source}: a {task.kind!r} run; resume it with {SCRIPT_COMMANDS[task.script]}")


def task_from_state(kind: str, state: dict[str, Any], args: argparse.Namespace | None = None,
                    source: str = "checkpoint") -> DetectionTask:
    """Rebuild a saved task (--resume); an unknown kind lists the known ones."""
    if kind not in TASKS:
        raise ValueError(f"{source}: trained by task {kind!r}, which no loaded plug-in provides "
                         f"(known: {', '.join(sorted(TASKS))}; is its package listed in plugins.yaml?)")
    return TASKS[kind].from_state(state, args)


def training_task(args: argparse.Namespace, model_yaml: dict | None, script: str = "train") -> DetectionTask:
    """The task a fresh run trains with: the first plug-in's that takes the run, else plain detection (plain
    segmentation for segment/train.py)."""
    for plugin in registered_plugins():
        task = plugin.training_task(args, model_yaml, script)
        if task is not None:
            return task
    if script not in ("train", "segment"):
        raise ValueError(f"no loaded plug-in provides {script} runs (see plugins.yaml)")
    check_no_plugin_flags(args, args.cfg or args.weights or "the model")
    return SegmentationTask(args.mask_ratio, overlap=not args.no_overlap) if script == "segment" else DetectionTask()
