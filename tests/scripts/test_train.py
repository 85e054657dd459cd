"""train.py: trains from scratch offline, resumes exactly, survives bad data, runs under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
import yaml

import train
from engine.trainer import Trainer
from models.loading import save_model
from models.yolo import Model
from utils.checkpoints import load_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _flags(data: Path, cfg: Path, project: Path, name: str, *extra: str) -> list[str]:
    return ["--data", str(data), "--cfg", str(cfg), "--imgsz", "64", "--batch-size", "8", "--epochs", "3",
            "--workers", "0", "--project", str(project), "--name", name, "--noplots", "--quiet", *extra]


def _final_weights(run: Path) -> dict:
    return load_checkpoint(run / "weights" / "last.pt")["state_dict"]


def test_resume_after_a_kill_mid_epoch_matches_an_uninterrupted_run(tmp_path, tiny_data, tiny_model_yaml, monkeypatch):
    full = train.main(_flags(tiny_data, tiny_model_yaml, tmp_path, "full"))

    calls = {"n": 0}
    real_step = Trainer._optimizer_step

    def killed_mid_epoch(self):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 1 of 3 (2 steps per epoch), before it ends
            raise KeyboardInterrupt
        real_step(self)

    monkeypatch.setattr(Trainer, "_optimizer_step", killed_mid_epoch)
    with pytest.raises(SystemExit, match="resume with python train.py --resume"):  # Ctrl-C: one line, no traceback
        train.main(_flags(tiny_data, tiny_model_yaml, tmp_path, "killed"))
    monkeypatch.setattr(Trainer, "_optimizer_step", real_step)
    killed = tmp_path / "killed"
    assert load_checkpoint(killed / "weights" / "last.pt")["epoch"] == 0  # the last complete epoch, intact

    resumed = train.main(["--resume", str(killed / "weights" / "last.pt"), "--quiet"])
    assert resumed == killed
    assert [r.split(",")[0] for r in (killed / "results.csv").read_text().splitlines()[1:]] == ["0", "1", "2"]
    expected, got = _final_weights(full), _final_weights(killed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_corrupt_images_and_bad_label_rows_are_skipped(tmp_path, tiny_data, tiny_model_yaml, caplog):
    root = tiny_data.parent
    images = sorted((root / "images" / "train").iterdir())
    images[0].write_bytes(b"not a png at all")
    label = root / "labels" / "train" / (images[1].stem + ".txt")
    label.write_text(label.read_text() + "7 0.5 0.5 0.1 0.1\n0 0.5 nan 0.1\nbanana\n")
    run = train.main(_flags(tiny_data, tiny_model_yaml, tmp_path, "bad", "--epochs", "1"))
    assert (run / "weights" / "best.pt").exists()
    text = caplog.text
    assert images[0].name in text and "1 corrupt" in text
    assert label.name in text


def test_bad_inputs_are_one_line_errors(tmp_path, tiny_data, tiny_model_yaml):
    with pytest.raises(SystemExit, match=r"nope.yaml: data YAML not found"):
        train.main(_flags(tmp_path / "nope.yaml", tiny_model_yaml, tmp_path, "e1"))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SystemExit, match=r"broken.pt: not a readable checkpoint"):
        train.main(_flags(tiny_data, tiny_model_yaml, tmp_path, "e2", "--weights", str(broken)))
    with pytest.raises(SystemExit, match="--evolve starts fresh trials; drop --resume"):
        train.main(_flags(tiny_data, tiny_model_yaml, tmp_path, "e3", "--evolve", "2", "--resume", str(broken)))


def test_torchrun_two_cpu_processes_write_one_set_of_results(tmp_path, tiny_data, tiny_model_yaml):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
           str(REPO / "train.py"), *_flags(tiny_data, tiny_model_yaml, tmp_path, "ddp", "--epochs", "2", "--device", "cpu")]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith("ddp"))
    assert runs == ["ddp"]
    rows = (tmp_path / "ddp" / "results.csv").read_text().splitlines()
    assert len(rows) == 3  # header + 2 epochs, written once (rank 0)
    assert load_checkpoint(tmp_path / "ddp" / "weights" / "last.pt")["epoch"] == 1


def test_a_short_run_from_scratch_learns(tmp_path, tiny_model_yaml):
    """Offline, from random weights: 100 optimizer steps lift mAP@0.5 far above the untrained model's."""
    from tests.scripts.conftest import make_dataset
    import val

    data = make_dataset(tmp_path / "learn", n_train=32, n_val=8, size=128)
    recipe = {"lr0": 0.002, "lrf": 1.0, "momentum": 0.9, "weight_decay": 0.0, "warmup_epochs": 0.0, "nbs": 8,
              "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "translate": 0.0, "scale": 0.0, "fliplr": 0.0, "mosaic": 0.0}
    hyp = tmp_path / "hyp.yaml"  # no warm-up and no augmentation: 100 Adam steps are all there is
    hyp.write_text(yaml.safe_dump(recipe))
    flags = ["--data", str(data), "--cfg", str(tiny_model_yaml), "--imgsz", "128", "--batch-size", "8",
             "--epochs", "25", "--workers", "0", "--project", str(tmp_path), "--noplots", "--quiet",
             "--optimizer", "Adam", "--hyp", str(hyp), "--noval", "--noautoanchor", "--seed", "1"]
    untrained = tmp_path / "untrained.pt"
    save_model(untrained, Model(tiny_model_yaml))
    trained = train.main(flags + ["--name", "trained"]) / "weights" / "best.pt"
    score = {}
    for name, weights in (("untrained", untrained), ("trained", trained)):  # on the images it trained on
        result = val.main(["--data", str(data), "--task", "train", "--weights", str(weights),
                           "--imgsz", "128", "--quiet", "--project", str(tmp_path / "val"), "--workers", "0"])
        score[name] = result.map50
    # measured here: 0.029 against 0.0016 untrained (18x); a broken loss, matcher or optimizer stays near 0.002
    assert score["trained"] > max(0.01, 5 * score["untrained"]), score


def test_autoanchor_judges_the_boxes_stretched_under_scale(tmp_path, tiny_model_yaml, monkeypatch):
    """--scale stretches 160x64 images to 64x64: AutoAnchor must see boxes 0.4x as wide and equally tall."""
    from tests.conftest import write_image
    import engine.trainer as trainer
    from utils.autoanchor import dataset_box_sizes

    root = tmp_path / "wide"
    for split in ("train", "val"):
        for i in range(4):
            write_image(root / "images" / split / f"{i}.png", size=(64, 160), seed=i)  # h 64, w 160
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{i}.txt").write_text("0 0.5 0.5 0.25 0.5\n")  # 40 x 32 px
    data = tmp_path / "wide.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                    "names": [f"c{i}" for i in range(6)]}))
    seen = {}
    real_check = trainer.check_anchors

    def spy(labels, shapes, model, thr, imgsz, **kwargs):
        seen["wh"] = dataset_box_sizes(labels, shapes, imgsz, stretch=kwargs.get("stretch", False))
        return real_check(labels, shapes, model, thr, imgsz, **kwargs)

    monkeypatch.setattr(trainer, "check_anchors", spy)
    train.main(_flags(data, tiny_model_yaml, tmp_path, "scaled", "--epochs", "1", "--noval", "--scale"))
    ratio = seen["wh"][:, 0] / seen["wh"][:, 1]  # w / h of the box as trained: 16 x 32 px stretched
    assert torch.allclose(torch.from_numpy(ratio), torch.tensor(0.5, dtype=torch.float64))  # letterbox gives 1.25


def test_tensorboard_events_hold_the_scalars_and_images_and_can_be_turned_off(tmp_path, tiny_data, tiny_model_yaml):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    flags = [f for f in _flags(tiny_data, tiny_model_yaml, tmp_path, "tb", "--epochs", "2") if f != "--noplots"]
    run = train.main(flags)
    events = EventAccumulator(str(run), size_guidance={"images": 0}).Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("train/box_loss", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/obj_loss", "x/lr0"):
        assert tag in scalars, scalars
    assert [e.step for e in events.Scalars("train/box_loss")] == [0, 1]
    assert {"train_batch0", "val_batch0_pred", "PR_curve", "results"} <= set(events.Tags()["images"])
    for name in ("results.png", "train_batch0.jpg"):  # the file itself, not a re-encoded copy
        stored = events.Images(Path(name).stem)[-1]
        on_disk = cv2.imread(str(run / name), cv2.IMREAD_UNCHANGED)
        assert stored.encoded_image_string == (run / name).read_bytes()
        assert (stored.height, stored.width) == on_disk.shape[:2]
    quiet = train.main(_flags(tiny_data, tiny_model_yaml, tmp_path, "no-tb", "--epochs", "1", "--no-tensorboard"))
    assert not list(quiet.glob("events.out.tfevents*"))


def test_freeze_reads_like_yolov5_one_number_is_the_first_n_layers(tmp_path, tiny_data, tiny_model_yaml):
    """`--freeze 2` keeps layers 0 and 1 as built (YOLOv5's meaning), `--freeze 0 2` exactly those two."""
    def changed_layers(*freeze: str) -> set[int]:
        name = "f" + "-".join(freeze)
        torch.manual_seed(0)
        start = Model(yaml.safe_load(Path(tiny_model_yaml).read_text()), nc=2)
        init = tmp_path / f"{name}.pt"
        save_model(init, start)
        train.main(_flags(tiny_data, tiny_model_yaml, tmp_path, name, "--weights", str(init), "--epochs", "1",
                          "--freeze", *freeze))
        end, before = _final_weights(tmp_path / name), start.state_dict()
        return {int(k.split(".")[1]) for k, v in end.items() if k.endswith(".weight") and k in before
                and not torch.equal(v.float(), before[k].float())}

    first_two, listed = changed_layers("2"), changed_layers("0", "2")
    assert {0, 1}.isdisjoint(first_two) and 2 in first_two
    assert {0, 2}.isdisjoint(listed) and 1 in listed
    with pytest.raises(SystemExit, match="--freeze -1: layer numbers cannot be negative"):
        train.main(_flags(tiny_data, tiny_model_yaml, tmp_path, "neg", "--freeze", "-1"))


def test_anchors_written_in_cfg_win_over_the_checkpoints_when_fine_tuning(tmp_path, tiny_data, tiny_model_yaml):
    """Like YOLOv5: --weights alone keeps the checkpoint's anchors; --cfg with --weights takes the YAML's."""
    model = Model(yaml.safe_load(Path(tiny_model_yaml).read_text()), nc=2)
    yaml_anchors = model.detect.anchors.clone()
    model.detect.anchors.mul_(1.5)
    init = tmp_path / "init.pt"
    save_model(init, model)
    anchors = {}
    for name, extra in (("own", ()), ("cfg", ("--cfg", str(tiny_model_yaml)))):
        flags = _flags(tiny_data, tiny_model_yaml, tmp_path, name, "--epochs", "1", "--noautoanchor", "--weights", str(init))
        flags.remove("--cfg")
        flags.remove(str(tiny_model_yaml))
        train.main([*flags, *extra])
        anchors[name] = next(v for k, v in _final_weights(tmp_path / name).items() if k.endswith(".anchors"))
    assert torch.allclose(anchors["own"].float(), yaml_anchors * 1.5)
    assert torch.allclose(anchors["cfg"].float(), yaml_anchors)
