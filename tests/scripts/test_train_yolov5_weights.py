"""train.py --weights <ultralytics/yolov5 .pt>: fine-tunes (all but the head when the classes differ), learns, and
the run it makes resumes like any other; export.py --include pt saves the import as our checkpoint."""

from __future__ import annotations

import csv
import logging
import shutil

import pytest
import yaml

import export
import train
import val
from engine.trainer import Trainer
from models.loading import imported_yolov5, load_model, read_detector_checkpoint
from tests.models.yolov5_files import genuine
from tests.scripts.conftest import make_dataset
from utils.checkpoints import load_checkpoint

RECIPE = {"lr0": 0.01, "lrf": 1.0, "momentum": 0.9, "weight_decay": 0.0, "warmup_epochs": 0.0, "nbs": 8,
          "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "translate": 0.0, "scale": 0.0, "fliplr": 0.0, "mosaic": 0.0}


def _flags(data, tmp_path, name: str, epochs: int, *extra: str) -> list[str]:
    hyp = tmp_path / "hyp.yaml"  # no warm-up, no augmentation: the steps are all there is
    hyp.write_text(yaml.safe_dump(RECIPE))
    return ["--data", str(data), "--weights", str(genuine("det-pip-last")), "--imgsz", "128", "--batch-size", "8",
            "--epochs", str(epochs), "--workers", "0", "--project", str(tmp_path), "--name", name, "--noplots",
            "--optimizer", "Adam", "--hyp", str(hyp), "--noval", "--noautoanchor", "--seed", "1",
            "--no-tensorboard", *extra]


def test_fine_tuning_an_imported_file_transfers_all_but_the_head_and_learns(tmp_path, caplog):
    data = make_dataset(tmp_path / "learn", n_train=32, n_val=8, size=128)  # 6 classes; the file has 3
    imported_yolov5.cache_clear()  # a process announces each file once; earlier tests read it
    with caplog.at_level(logging.INFO):
        run = train.main(_flags(data, tmp_path, "ft", 12))
    log = caplog.text
    assert "imported ultralytics/yolov5 checkpoint" in log
    total = len(load_checkpoint(run / "weights" / "best.pt")["state_dict"])
    assert f"Transferred {total - 6}/{total} items" in log  # the head's three convolutions (weight, bias) differ
    with open(run / "results.csv") as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    loss = [float(r["train/box_loss"]) + float(r["train/obj_loss"]) + float(r["train/cls_loss"]) for r in rows]
    assert loss[-1] < 0.9 * loss[0], loss  # a model 8 channels wide: it learns slowly, but it learns
    result = val.main(["--data", str(data), "--task", "train", "--weights", str(run / "weights" / "best.pt"),
                       "--imgsz", "128", "--quiet", "--project", str(tmp_path / "val"), "--workers", "0"])
    assert result.map50 > 0.0


def test_cfg_with_other_classes_takes_the_files_layers(tmp_path, caplog):
    """--cfg naming the same network with the data's nc: the YOLOv5 fine-tuning command."""
    data = make_dataset(tmp_path / "synth", n_train=8, n_val=4, size=64)
    cfg = dict(read_detector_checkpoint(genuine("det-git-best"))["model_yaml"], nc=6)
    (tmp_path / "narrow.yaml").write_text(yaml.safe_dump(cfg))
    with caplog.at_level(logging.INFO):
        run = train.main(_flags(data, tmp_path, "cfg", 1, "--cfg", str(tmp_path / "narrow.yaml")))
    total = len(load_checkpoint(run / "weights" / "best.pt")["state_dict"])
    assert f"Transferred {total - 7}/{total} items" in caplog.text  # all but the 6 class-sized head tensors and
    # the anchors, which come from the --cfg YAML as in YOLOv5


def test_the_run_made_from_an_imported_file_resumes(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "synth", n_train=16, n_val=4, size=64)
    calls = {"n": 0}
    real_step = Trainer._optimizer_step

    def killed_mid_epoch(self):
        calls["n"] += 1
        if calls["n"] == 3:  # in epoch 1 of 3 (2 steps per epoch)
            raise KeyboardInterrupt
        real_step(self)

    monkeypatch.setattr(Trainer, "_optimizer_step", killed_mid_epoch)
    with pytest.raises(SystemExit, match="resume with python train.py --resume"):  # Ctrl-C: one line, how to resume
        train.main(_flags(data, tmp_path, "killed", 3, "--quiet"))
    monkeypatch.setattr(Trainer, "_optimizer_step", real_step)
    last = tmp_path / "killed" / "weights" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 0  # our own checkpoint: plain weights_only from here on
    assert train.main(["--resume", str(last), "--quiet"]) == tmp_path / "killed"
    assert [r.split(",")[0] for r in (tmp_path / "killed" / "results.csv").read_text().splitlines()[1:]] == \
        ["0", "1", "2"]


def test_export_include_pt_writes_our_checkpoint_beside_it(tmp_path):
    weights = tmp_path / "yolov5n.pt"
    shutil.copyfile(genuine("seg-git-last"), weights)
    files = export.main(["--weights", str(weights), "--include", "pt", "--quiet"])
    ours = tmp_path / "yolov5n-d3n.pt"
    assert files == {"pt": ours} and weights.read_bytes() == genuine("seg-git-last").read_bytes()
    ckpt = load_checkpoint(ours, expect="detector")  # weights_only=True
    assert ckpt["imported_from"].startswith("ultralytics/yolov5 segmentation")
    imported, converted = load_model(weights).state_dict(), load_model(ours).state_dict()
    assert converted.keys() == imported.keys() and all((converted[k] == imported[k]).all() for k in imported)
    with pytest.raises(SystemExit, match="already a D3N checkpoint"):
        export.main(["--weights", str(ours), "--include", "pt", "--quiet"])
