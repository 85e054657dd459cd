"""Tiny segmentation data and models shared by the segmentation tests: one bright polygon object per image,
a yolov5n-seg YAML for its two classes, and one segmenter trained from scratch on it (once per session)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

from engine.tasks import SegmentationTask
from engine.trainer import Trainer, TrainOptions

REPO = Path(__file__).resolve().parents[1]
NAMES = ["box", "blob"]


def _object(rng: np.random.Generator, size: int) -> tuple[int, np.ndarray]:
    """A rectangle (class 0) or an ellipse (class 1) in pixels, 20-45% of the image across."""
    cls = int(rng.integers(2))
    w, h = rng.uniform(0.2, 0.45, 2) * size
    cx, cy = rng.uniform(0.3, 0.7, 2) * size
    if cls == 0:
        return cls, np.array([[cx - w / 2, cy - h / 2], [cx + w / 2, cy - h / 2], [cx + w / 2, cy + h / 2],
                              [cx - w / 2, cy + h / 2]])
    t = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    return cls, np.column_stack((cx + w / 2 * np.cos(t), cy + h / 2 * np.sin(t)))


def write_segment_dataset(root: Path, n_train: int = 16, n_val: int = 8, size: int = 64, seed: int = 0) -> Path:
    """One bright object per image on a dark textured background, with its YOLOv5 polygon label."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            im = rng.integers(20, 60, (size, size, 3), dtype=np.uint8)
            cls, polygon = _object(rng, size)
            colour = (60, 200, 230) if cls else (230, 120, 60)
            cv2.fillPoly(im, [((polygon - 0.5) * 16).round().astype(np.int32)], colour, shift=4)  # pixel centres
            cv2.imwrite(str(root / "images" / split / f"{i}.png"), im)
            xy = " ".join(f"{v:.5f}" for v in (polygon / size).clip(0, 1).reshape(-1))
            (root / "labels" / split / f"{i}.txt").write_text(f"{cls} {xy}\n")
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", "names": NAMES}))
    return data


def write_tiny_seg_yaml(path: Path) -> Path:
    cfg = yaml.safe_load((REPO / "models" / "yolov5n-seg.yaml").read_text())
    cfg.update(nc=len(NAMES))
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_tiny_segmenter(root: Path, epochs: int = 25) -> tuple[Trainer, Path]:
    """100 Adam steps at 64 px through the shared Trainer (no warm-up, no augmentation) -> (trainer, data YAML)."""
    data = write_segment_dataset(root / "seg")
    hyp = root / "hyp.yaml"
    hyp.write_text(yaml.safe_dump({"lr0": 0.003, "lrf": 1.0, "momentum": 0.9, "weight_decay": 0.0,
                                   "warmup_epochs": 0.0, "nbs": 4, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0,
                                   "translate": 0.0, "scale": 0.0, "fliplr": 0.0, "mosaic": 0.0}))
    opt = TrainOptions(cfg=str(write_tiny_seg_yaml(root / "tiny-seg.yaml")), data=str(data), hyp=str(hyp),
                       epochs=epochs, batch_size=4, imgsz=64, workers=0, project=str(root), name="seg", noplots=True,
                       quiet=True, noval=True, noautoanchor=True, optimizer="Adam", seed=0)
    trainer = Trainer(opt, SegmentationTask())
    trainer.train()
    return trainer, data
