"""Training tasks: what a training step computes, apart from the loop that runs it.

`train.py` and `train_distill.py` share one trainer; the task owns the loss (and, for
distillation, the frozen teacher), so the loop never branches on what kind of training it runs.
"""

from __future__ import annotations

from typing import Any

import torch

from utils.dataloaders import LoadImagesAndLabels
from utils.hyp import Hyp
from utils.loss import ComputeLoss
from utils.torch_utils import de_parallel


class DetectionTask:
    """Plain YOLOv5 training: ground-truth loss only."""

    loss_names: tuple[str, ...] = ("box_loss", "obj_loss", "cls_loss")
    dataset_cls: type = LoadImagesAndLabels

    def model_cfg(self, cfg: dict) -> dict:
        """The model YAML dict to build (a plug-in may fill in rows from its own data)."""
        return cfg

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Called once the model is built (a plug-in may load frozen parts into it)."""
        return model

    def setup(self, model: torch.nn.Module, hyp: Hyp, imgsz: int, device: torch.device) -> None:
        self.compute_loss = ComputeLoss(de_parallel(model), hyp, imgsz)

    def dataset_kwargs(self, model: torch.nn.Module) -> dict[str, Any]:
        """Extra keyword arguments for the dataset class (a plug-in's dataset takes its own)."""
        return {}

    def forward(self, model: torch.nn.Module, imgs: torch.Tensor, extras: dict[str, torch.Tensor]):
        return model(imgs, extras) if extras else model(imgs)

    def loss(self, preds: list[torch.Tensor], targets: torch.Tensor, imgs: torch.Tensor,
             extras: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to back-propagate, detached items named by loss_names)."""
        return self.compute_loss(preds, targets)

    def epoch_log(self, model: torch.nn.Module) -> dict[str, float]:
        """Extra per-epoch figures for results.csv (e.g. learned fusion weights)."""
        return {}

    def on_train_end(self, save_dir) -> None:
        """Called on rank 0 after the final validation (e.g. extra plots)."""

    def checkpoint_extra(self) -> dict[str, Any]:
        """Task facts saved with each checkpoint (e.g. which teacher distilled it)."""
        return {}
