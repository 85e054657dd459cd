"""--labels end to end at tiny settings: every arm on one labelled subset, students also on unlabelled images,
equal optimiser steps, and no label file outside the subset ever opened."""

from __future__ import annotations

import builtins
import json
import pathlib

import yaml

from d3n_ext.experiments import pipeline
from data.synthetic import generate_dataset
from engine import trainer as trainer_module
from tests.scripts.conftest import make_dataset
from utils.data_config import img2label_paths, load_data_config
from utils.label_subset import write_label_subset


def test_label_efficient_pipeline_reads_only_the_subsets_labels(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "synth", n_train=12, n_val=4, size=96, n_test=4)
    pool = generate_dataset(tmp_path / "pool", seed=7, size=96, n_train=1, n_val=8)
    spec = yaml.safe_load(data.read_text())
    data.write_text(yaml.safe_dump({**spec, "unlabeled": str(pool / "images" / "val")}))
    out = tmp_path / "pipe"
    subset = load_data_config(write_label_subset(load_data_config(data), "0.5", 0, out / "seed0" / "labels-0.5"))
    hidden = {str(p) for p in img2label_paths(subset.images("unlabeled"))}  # the unlabelled train images' labels
    opened, joined = [], []
    real_open, real_path_open, real_join = builtins.open, pathlib.Path.open, trainer_module.join_batches

    def spy_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    def spy_path_open(self, *args, **kwargs):
        opened.append(str(self))
        return real_path_open(self, *args, **kwargs)

    def spy_join(labelled, unlabeled):
        joined.append((len(labelled[0]), len(unlabeled[0])))
        return real_join(labelled, unlabeled)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(pathlib.Path, "open", spy_path_open)
    monkeypatch.setattr(trainer_module, "join_batches", spy_join)
    result = pipeline.main(["--data", str(data), "--out", str(out), "--epochs", "1", "--imgsz", "64", "--batch-size", "2",
                            "--workers", "0", "--detect-source", str(data.parent / "images" / "val"), "--labels", "0.5",
                            "--stage1", "ddpm_train.iterations=3", "vae.epochs=1", "--quiet"])
    assert not hidden & set(opened), "a label file outside the subset was opened"
    assert any(p in opened for p in map(str, img2label_paths(subset.images("train"))))  # the subset's were
    run = out / "seed0" / "labels-0.5"
    table = json.loads((run / "table.json").read_text())
    assert table["labels"]["labelled"] == 6 and table["labels"]["labelled_fraction"] == 0.5
    for arm in ("baseline", "teacher", "self-distilled", "student"):  # equal steps: 1 epoch / 0.5 = 2 epochs each
        opt = yaml.safe_load((run / arm / "opt.yaml").read_text())
        assert opt["epochs"] == 2 and opt["data"] == str(run / "data.yaml")
    students = [j for j in joined if j[1]]
    assert students and all(n_l == 2 and n_u == 2 for n_l, n_u in students)  # --unlabeled-share 0.5 by default
    assert len(joined) == 2 * 2 * 3  # two students, two epochs, 6 labelled images in batches of 2
    assert (out / "fractions.md").is_file() and (out / "accuracy_vs_labels.png").stat().st_size
    assert "| 0.5 | 0 |" in (out / "fractions.md").read_text()
    assert 0.5 in result
