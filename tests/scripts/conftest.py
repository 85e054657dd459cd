"""A tiny synthetic dataset and data YAML for script-level tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from data.synthetic import CLASS_NAMES, generate_dataset


def make_dataset(root: Path, n_train: int = 16, n_val: int = 8, size: int = 96, seed: int = 0, n_test: int = 0) -> Path:
    """A tiny synthetic data YAML; with n_test, a test split drawn from another seed (held-out images)."""
    generate_dataset(root, seed=seed, size=size, n_train=n_train, n_val=n_val)
    splits = {"train": "images/train", "val": "images/val"}
    if n_test:
        held_out = generate_dataset(root.parent / f"{root.name}-test", seed=seed + 1000, size=size, n_train=1,
                                    n_val=n_test)
        splits["test"] = str(held_out / "images" / "val")
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), **splits, "names": list(CLASS_NAMES)}))
    return data


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return make_dataset(tmp_path / "synth")


@pytest.fixture
def tiny_model_yaml(tmp_path) -> Path:
    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "models" / "yolov5n.yaml").read_text())
    cfg.update(nc=len(CLASS_NAMES), depth_multiple=0.33, width_multiple=0.25)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
