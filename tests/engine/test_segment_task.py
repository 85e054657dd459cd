"""The segmentation task on the shared trainer: a tiny segmenter learns masks and boxes from scratch, the
task rebuilds itself from its state, and each task refuses the other's head in one line."""

from __future__ import annotations

import csv
import copy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from engine.segment_validator import SegmentValidator
from engine.tasks import DetectionTask, SegmentationTask, task_from_state
from engine.validator import ValOptions, run_validation
from models.yolo import Model
from tests.segment_fixtures import NAMES, write_tiny_seg_yaml
from utils.checkpoints import load_checkpoint
from utils.hyp import Hyp

@pytest.fixture
def tiny_seg_yaml(tmp_path: Path) -> Path:
    return write_tiny_seg_yaml(tmp_path / "tiny-seg.yaml")


def _results(run: Path) -> list[dict]:
    with open(run / "results.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_a_tiny_segmenter_learns_masks_and_boxes_from_scratch(trained_segmenter, tiny_seg_yaml):
    """100 Adam steps at 64 px through the shared Trainer: the mask loss falls several-fold, and box and mask
    mAP@0.5 rise far above an untrained model's. Measured here: seg_loss 0.064 -> 0.010, box mAP@0.5 0.80."""
    trainer, _ = trained_segmenter
    rows = _results(trainer.save_dir)
    seg = [r["train/seg_loss"] for r in rows]
    assert np.mean(seg[-3:]) < 0.35 * seg[0], seg  # the prototypes and coefficients learn the masks
    torch.manual_seed(0)
    before = run_validation(Model(tiny_seg_yaml), trainer.val_loader, NAMES, None, ValOptions(plots=False),
                            device=torch.device("cpu"), validator_cls=SegmentValidator)
    after = rows[-1]
    assert after["metrics/mAP_0.5(B)"] > max(0.1, 5 * before.map50), (after, before)
    assert after["metrics/mAP_0.5(M)"] > max(0.1, 5 * before.mask_map50), (after, before)
    ckpt = load_checkpoint(trainer.save_dir / "weights" / "last.pt")
    assert ckpt["train_opts"]["task"] == "segment"
    assert ckpt["train_opts"]["task_state"] == {"mask_ratio": 4, "overlap": True}


def test_the_task_rebuilds_from_its_state_and_feeds_its_dataset():
    task = task_from_state("segment", SegmentationTask(mask_ratio=2, overlap=False).state())
    assert isinstance(task, SegmentationTask) and (task.mask_ratio, task.overlap) == (2, False)
    assert task.dataset_kwargs(None) == {"mask_ratio": 2, "overlap": False}
    assert task.loss_names == ("box_loss", "seg_loss", "obj_loss", "cls_loss")
    with pytest.raises(ValueError, match="--mask-ratio 0"):
        SegmentationTask(mask_ratio=0)


def test_each_task_refuses_the_other_head(tiny_cfg):
    seg_cfg = copy.deepcopy(tiny_cfg)
    seg_cfg["head"][-1] = [[17, 20, 23], 1, "Segment", ["nc", "anchors", 32, 256]]
    with pytest.raises(ValueError, match=r"Segment head\); train it .* segment.train"):
        DetectionTask().setup(Model(seg_cfg), Hyp(), 64, torch.device("cpu"))
    with pytest.raises(ValueError, match="needs a model with a Segment head"):
        SegmentationTask().setup(Model(tiny_cfg), Hyp(), 64, torch.device("cpu"))
