"""Shared fixtures: tiny models and tiny image folders, built fresh per test."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

torch.set_num_threads(2)

TINY = {"depth_multiple": 0.33, "width_multiple": 0.25}


@pytest.fixture(scope="session")
def trained_segmenter(tmp_path_factory):
    """(Trainer, data YAML) of a tiny segmenter trained from scratch once per session (tests.segment_fixtures)."""
    from tests.segment_fixtures import train_tiny_segmenter

    return train_tiny_segmenter(tmp_path_factory.mktemp("trained-seg"))


@pytest.fixture
def tiny_cfg() -> dict:
    """yolov5n-sized YAML dict for 3 classes."""
    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "models" / "yolov5n.yaml").read_text())
    cfg.update(nc=3, **TINY)
    return cfg


def write_image(path: Path, size: tuple[int, int] = (96, 128), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    im = (rng.random((*size, 3)) * 60 + 100).astype(np.uint8)
    h, w = size
    cv2.rectangle(im, (w // 4, h // 4), (w // 2, h // 2), (20, 20, 20), -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), im)
    return path
