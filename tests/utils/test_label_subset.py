"""--labels: a seeded, class-stratified labelled subset, written as a derived data YAML every arm reads."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.data_config import img2label_paths, load_data_config
from utils.label_subset import labels_amount, write_label_subset

CLASS_COUNTS = {0: 20, 1: 10, 2: 6, 3: 4}  # images per class (one box each)


def _dataset(root: Path) -> Path:
    for split, counts in (("train", CLASS_COUNTS), ("val", {0: 2, 1: 2})):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        k = 0
        for cls, n in counts.items():
            for _ in range(n):
                cv2.imwrite(str(root / "images" / split / f"{k:03d}.png"), np.full((32, 32, 3), k % 250, np.uint8))
                (root / "labels" / split / f"{k:03d}.txt").write_text(f"{cls} 0.5 0.5 0.2 0.2\n")
                k += 1
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [a, b, c, d]\n")
    return root / "data.yaml"


def _classes(files: list[Path]) -> Counter:
    return Counter(int(p.read_text().split()[0]) for p in img2label_paths(files))


def test_subset_is_stratified_seeded_and_the_rest_unlabeled(tmp_path):
    data = load_data_config(_dataset(tmp_path / "d"))
    derived = load_data_config(write_label_subset(data, "0.25", 0, tmp_path / "run" / "labels-0.25"))
    labelled, rest = derived.images("train"), derived.images("unlabeled")
    assert len(labelled) == 10 and len(rest) == 30
    assert _classes(labelled) == {0: 5, 1: 3, 2: 1, 3: 1} or _classes(labelled) == {0: 5, 1: 2, 2: 2, 3: 1}
    assert set(labelled) | set(rest) == {p.resolve() for p in data.images("train")} and not set(labelled) & set(rest)
    assert derived.images("val") == data.images("val") and derived.names == data.names
    again = load_data_config(write_label_subset(data, "0.25", 0, tmp_path / "again"))
    assert again.images("train") == labelled  # the same seed: every arm, every rerun, the same subset
    other = load_data_config(write_label_subset(data, "0.25", 1, tmp_path / "other"))
    assert other.images("train") != labelled
    assert (tmp_path / "run" / "labels-0.25" / "labelled.txt").read_text().count("\n") == 10


def test_every_class_keeps_at_least_one_labelled_image(tmp_path):
    data = load_data_config(_dataset(tmp_path / "d"))
    derived = load_data_config(write_label_subset(data, "0.1", 3, tmp_path / "run"))
    assert set(_classes(derived.images("train"))) == set(CLASS_COUNTS)


@pytest.mark.parametrize("value, expect", [("0.1", 4), ("1", 40), ("12", 12), (0.5, 20)])
def test_labels_amount_takes_a_share_or_a_count(value, expect):
    assert labels_amount(value, 40) == expect


@pytest.mark.parametrize("value, match", [("0", "expected a fraction"), ("-0.2", "expected a fraction"),
                                          ("2.5", "whole count"), ("41", "only 40 images"), ("ten", "expected a")])
def test_bad_labels_amount_is_one_line(value, match):
    with pytest.raises(ValueError, match=match):
        labels_amount(value, 40)
