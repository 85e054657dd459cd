"""A labelled subset of a train split, for label-efficient experiments (`--labels 0.1` or `--labels 126`).

A seeded, class-stratified share of the train images keeps its labels; the rest become `unlabeled:`
images. The result is a derived data YAML in the run folder (`labelled.txt`, `unlabeled.txt`, the
original val/test/names), so every arm of a seed reads the same subset and nothing downstream needs to
know it is an experiment. Choosing the subset reads the class column of every train label once — the
one act of an annotator deciding which images to box; after that, ground-truth training opens only the
subset's label files and stage 1 and distillation open none for the unlabelled images.

Stratification: each image counts under the rarest class it holds (images without boxes form their own
group), and every group keeps round(share * size) images, at least one, seeded by `seed`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

from utils.config import read_yaml_mapping
from utils.data_config import DataConfig, DataConfigError, img2label_paths
from utils.dataloaders import scan_labels
from utils.files import atomic_write_text

BACKGROUND = -1  # group of train images without boxes


def labels_amount(value: str | float | int, total: int) -> int:
    """How many images keep their labels: a fraction in (0, 1] of `total`, or a count above 1."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"--labels {value!r}: expected a fraction in (0, 1] or a count of images") from None
    if 0 < number <= 1:
        return max(1, round(number * total))
    if number > 1 and number == int(number):
        if number > total:
            raise ValueError(f"--labels {int(number)}: the train split has only {total} images")
        return int(number)
    raise ValueError(f"--labels {value!r}: expected a fraction in (0, 1] or a whole count of images")


def image_groups(train: list[Path], nc: int) -> list[int]:
    """Per train image the rarest class among its boxes (by how many train images hold it), or BACKGROUND."""
    entries, _ = scan_labels(train, img2label_paths(train), nc)
    classes = [sorted({int(row[0]) for row in e["labels"]}) for e in entries]
    holding = Counter(c for cs in classes for c in cs)
    return [min(cs, key=lambda c: (holding[c], c)) if cs else BACKGROUND for cs in classes]


def stratified_choice(groups: list[int], k: int, seed: int) -> list[int]:
    """k indices, each group in proportion (largest remainders; at least one per group when k allows), seeded."""
    rng = np.random.default_rng(seed)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    exact = {g: k * len(m) / len(groups) for g, m in members.items()}
    floor = 1 if k >= len(members) else 0
    quota = {g: max(floor, int(x)) for g, x in exact.items()}
    while sum(quota.values()) > k:  # the at-least-one rule overshot: take from the largest quota
        quota[max(quota, key=lambda g: (quota[g], g))] -= 1
    while sum(quota.values()) < k:  # hand out the rest by largest remainder
        open_groups = [g for g in quota if quota[g] < len(members[g])]
        quota[max(open_groups, key=lambda g: (exact[g] - quota[g], -g))] += 1
    return sorted(i for g in sorted(members) for i in rng.permutation(members[g])[:quota[g]].tolist())


def write_label_subset(data: DataConfig, amount: str | float | int, seed: int, out: Path) -> Path:
    """<out>/data.yaml with `train:` the kept subset and `unlabeled:` the rest (plus the data's own unlabeled)."""
    train = data.images("train")
    k = labels_amount(amount, len(train))
    kept = stratified_choice(image_groups(train, data.nc), k, seed)
    keep = set(kept)
    labelled = [train[i].resolve() for i in kept]
    rest = [p.resolve() for i, p in enumerate(train) if i not in keep]
    raw = read_yaml_mapping(data.yaml_path, "a data YAML", DataConfigError)
    own = raw.get("unlabeled") or []  # the data's own unlabeled images stay unlabeled
    unlabeled = ([str((out / "unlabeled.txt").resolve())] if rest else []) + (own if isinstance(own, list) else [own])
    derived = {"path": str(data.root), "train": str((out / "labelled.txt").resolve()),
               "val": raw["val"], **({"test": raw["test"]} if raw.get("test") else {}),
               **({"unlabeled": unlabeled} if unlabeled else {}), "names": dict(enumerate(data.names))}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "labelled.txt", "".join(f"{p}\n" for p in labelled))
    atomic_write_text(out / "unlabeled.txt", "".join(f"{p}\n" for p in rest))
    header = (f"# --labels {amount} (seed {seed}) of {data.yaml_path}: {len(labelled)} of {len(train)} train images keep "
              f"their labels (class-stratified); the other {len(rest)} are unlabeled\n")
    atomic_write_text(out / "data.yaml", header + yaml.safe_dump(derived, sort_keys=False))
    atomic_write_text(out / "subset.json", json.dumps({"data": str(data.yaml_path), "labels": str(amount), "seed": seed,
                                                        "labelled": len(labelled), "unlabeled": len(rest)}, indent=1))
    return out / "data.yaml"
