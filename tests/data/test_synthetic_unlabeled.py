"""`n_unlabeled`: extra synthetic pictures without label files, named by the data YAML's `unlabeled:`."""

from __future__ import annotations

from pathlib import Path

import yaml

from data.synthetic import ensure_dataset
from utils.data_config import load_data_config
from utils.unlabeled import check_unlabeled

REPO = Path(__file__).resolve().parents[2]


def test_unlabeled_images_come_without_labels_and_do_not_copy_train_or_val(tmp_path):
    root = ensure_dataset(tmp_path / "semi", size=64, n_train=6, n_val=3, n_unlabeled=5)
    assert len(list((root / "images" / "unlabeled").glob("*.png"))) == 5
    assert not (root / "labels" / "unlabeled").exists()
    data = load_data_config(root / "data.yaml")
    assert len(data.images("unlabeled")) == 5
    assert len(check_unlabeled(data)) == 5  # their own seeds: no copy of a val image, no train warning needed


def test_bundled_semi_yaml_names_the_generated_unlabeled_images():
    spec = yaml.safe_load((REPO / "data" / "synth-defects-semi.yaml").read_text())
    assert spec["unlabeled"] == "images/unlabeled" and spec["generate"]["n_unlabeled"] > spec["generate"]["n_train"]
    plain = yaml.safe_load((REPO / "data" / "synth-defects.yaml").read_text())
    assert {k: v for k, v in spec["generate"].items() if k != "n_unlabeled"} == plain["generate"]
