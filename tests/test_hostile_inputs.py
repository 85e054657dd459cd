"""Hostile inputs: what a careless (or hostile) user may throw at the scripts, and what they get back.

Each test is one entry of the catalogue: the input, the one-line message or the warning it gets,
and that nothing already written is lost. Mistakes end with `error: <file or flag>: <what to do>`
and exit status 1 (never a traceback); input that can be used with care is used, with a warning.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import detect
import export
import train
import val
from d3n_ext.experiments.pipeline import PipelineOptions, add_pipeline_flags, options_from_flags
from d3n_ext.stage1.repository import CorruptRepositoryError, LatentRepository, npy_layout
from models import yolo
from models.loading import save_model
from models.yolo import Model
from tests.d3n_ext.stage1_fixtures import TINY_CONFIG, repo_copy, stage1_run  # noqa: F401 (fixtures)
from tests.d3n_ext.stage1_fixtures import make_dataset as make_stage1_dataset
from tests.scripts.conftest import make_dataset
from utils.checkpoints import load_checkpoint, save_checkpoint
from utils.data_config import load_data_config
from utils.dataloaders import LoadImagesAndLabels

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny synthetic dataset (8 train, 4 val images of 96 px); tests that alter data make their own."""
    return make_dataset(tmp_path_factory.mktemp("data") / "synth", n_train=8, n_val=4, size=96)


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    cfg = yaml.safe_load((REPO / "models" / "yolov5n.yaml").read_text())
    cfg.update(nc=6, depth_multiple=0.33, width_multiple=0.25)
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory, tiny_yaml) -> Path:
    """Random tiny weights that detect something everywhere (objectness and class 0 biased up)."""
    model = Model(tiny_yaml)
    model.names = [f"defect{i}" for i in range(model.detect.nc)]
    for conv in model.detect.m:
        conv.bias.data.view(model.detect.na, -1)[:, 4:6] = 5.0
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_model(path, model)
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data, tiny_yaml) -> Path:
    """A one-epoch training run that ended normally."""
    project = tmp_path_factory.mktemp("runs")
    return train.main(train_flags(data, project, "finished", "--cfg", str(tiny_yaml)))


def train_flags(data: Path, project: Path, name: str, *extra: str) -> list[str]:
    return ["--data", str(data), "--imgsz", "64", "--batch-size", "8", "--epochs", "1", "--workers", "0",
            "--project", str(project), "--name", name, "--noplots", "--quiet", *extra]


def one_line_error(excinfo: pytest.ExceptionInfo, *named: str) -> str:
    """The message of a script's SystemExit: 'error: ...' on one line, naming every string in `named`."""
    message = str(excinfo.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    for text in named:
        assert text in message, (text, message)
    return message


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- image sizes

def test_imgsz_not_a_multiple_of_32_is_rounded_up_with_a_warning_in_train(data, tiny_yaml, tmp_path, caplog):
    run = train.main(train_flags(data, tmp_path, "i80", "--cfg", str(tiny_yaml), "--imgsz", "80", "--scale"))
    assert "--imgsz 80 is not a multiple of the model's stride 32; using 96" in caplog.text
    assert (run / "weights" / "last.pt").is_file()


def test_imgsz_not_a_multiple_of_32_is_rounded_up_in_val_detect_and_export(data, weights, tmp_path, caplog):
    result = val.main(["--data", str(data), "--weights", str(weights), "--imgsz", "80", "--scale", "--workers", "0",
                       "--project", str(tmp_path / "val"), "--quiet"])
    assert result.seen == 4
    run = detect.main(["--weights", str(weights), "--source", str(data.parent / "images" / "val"), "--imgsz", "80",
                       "--scale", "--project", str(tmp_path / "detect"), "--quiet"])
    assert len(list(run.glob("*.png"))) == 4
    files = export.main(["--weights", str(weights), "--include", "torchscript", "--imgsz", "80", "--quiet"])
    assert files["torchscript"].is_file()
    assert caplog.text.count("--imgsz 80 is not a multiple of the model's stride 32; using 96") >= 3


@pytest.mark.parametrize("script", ["train", "val", "detect", "export"])
def test_imgsz_zero_is_a_one_line_error(script, data, weights, tiny_yaml, tmp_path):
    argv = {"train": train_flags(data, tmp_path, "zero", "--cfg", str(tiny_yaml)),
            "val": ["--data", str(data), "--weights", str(weights), "--project", str(tmp_path)],
            "detect": ["--weights", str(weights), "--source", str(data.parent / "images" / "val"),
                       "--project", str(tmp_path)],
            "export": ["--weights", str(weights)]}[script]
    with pytest.raises(SystemExit) as e:
        {"train": train, "val": val, "detect": detect, "export": export}[script].main(argv + ["--imgsz", "0"])
    one_line_error(e, "--imgsz 0")


@pytest.mark.parametrize("flag", ["--epochs", "--batch-size"])
def test_zero_epochs_or_batch_size_is_a_one_line_error(flag, data, tiny_yaml, tmp_path):
    with pytest.raises(SystemExit) as e:
        train.main(train_flags(data, tmp_path, "zero", "--cfg", str(tiny_yaml), flag, "0"))
    one_line_error(e, f"{flag} 0")
    assert not (tmp_path / "zero").exists()  # refused before anything was written


# ---------------------------------------------------------------- resuming and checkpoints

def test_resume_of_a_finished_run_says_so_and_keeps_its_weights(finished_run):
    last = finished_run / "weights" / "last.pt"
    before = last.read_bytes()
    with pytest.raises(SystemExit) as e:
        train.main(["--resume", str(last), "--quiet"])
    one_line_error(e, str(last), "already finished", "--weights")
    assert last.read_bytes() == before


def test_resume_of_a_truncated_checkpoint_is_one_line(tmp_path):
    broken = tmp_path / "weights" / "last.pt"
    broken.parent.mkdir()
    broken.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(SystemExit) as e:
        train.main(["--resume", str(broken), "--quiet"])
    one_line_error(e, str(broken), "not a readable checkpoint")


def test_a_kill_during_a_checkpoint_save_leaves_no_debris_and_no_epoch_twice(data, tiny_yaml, tmp_path, monkeypatch):
    import engine.trainer as trainer

    real_save = trainer.save_model

    def killed_while_writing_epoch_1(path, model, ema=None, **extra):
        if extra["epoch"] == 1:
            (Path(path).parent / f".{Path(path).name}.k1ll3d.tmp").write_bytes(b"half a checkpoint")
            raise KeyboardInterrupt  # what SIGKILL does mid-write, minus the process
        real_save(path, model, ema, **extra)

    monkeypatch.setattr(trainer, "save_model", killed_while_writing_epoch_1)
    with pytest.raises(SystemExit) as e:  # Ctrl-C: one line saying how to resume
        train.main(train_flags(data, tmp_path, "killed", "--cfg", str(tiny_yaml), "--epochs", "3"))
    monkeypatch.setattr(trainer, "save_model", real_save)
    run = tmp_path / "killed"
    assert str(e.value.code) == (f"interrupted; {run / 'weights' / 'last.pt'} holds the last finished epoch: "
                                 f"resume with python train.py --resume {run / 'weights' / 'last.pt'}")
    results = run / "results.csv"
    header, row0 = results.read_text().splitlines()
    results.write_text(f"{header}\n{row0}\n1{row0[1:]}\n")  # a row past the checkpoint, as the old write order left
    assert load_checkpoint(run / "weights" / "last.pt")["epoch"] == 0
    train.main(["--resume", str(run / "weights" / "last.pt"), "--quiet"])
    assert [r.split(",")[0] for r in results.read_text().splitlines()[1:]] == ["0", "1", "2"]
    assert not list(run.rglob("*.tmp"))


def test_weights_alone_fine_tune_the_checkpoints_own_model(data, finished_run, tmp_path, caplog):
    best = finished_run / "weights" / "best.pt"
    run = train.main(train_flags(data, tmp_path, "tuned", "--weights", str(best), "--noval"))
    own, tuned = load_checkpoint(best), load_checkpoint(run / "weights" / "last.pt")
    assert tuned["model_yaml"]["width_multiple"] == own["model_yaml"]["width_multiple"] == 0.25  # not yolov5s
    assert {k: v.shape for k, v in tuned["state_dict"].items()} == {k: v.shape for k, v in own["state_dict"].items()}
    assert "transferred only" not in caplog.text


def test_weights_into_another_architecture_warn_loudly_naming_the_mismatch(data, finished_run, tmp_path, caplog):
    wider = yaml.safe_load(json.dumps(load_checkpoint(finished_run / "weights" / "best.pt")["model_yaml"]))
    wider.update(width_multiple=0.5)
    cfg = tmp_path / "wider.yaml"
    cfg.write_text(yaml.safe_dump(wider))
    train.main(train_flags(data, tmp_path, "wider", "--weights", str(finished_run / "weights" / "best.pt"),
                           "--cfg", str(cfg), "--noval", "--noautoanchor"))
    warning = next(r.getMessage() for r in caplog.records if "transferred only" in r.getMessage())
    assert "model.0.conv.weight (32, 3, 6, 6) vs (16, 3, 6, 6)" in warning and "drop --cfg" in warning


# ---------------------------------------------------------------- models

@pytest.mark.parametrize("key, value", [("nc", 0), ("nc", -1), ("nc", 10 ** 9), ("width_multiple", -0.5),
                                        ("width_multiple", "wide"), ("depth_multiple", 0)])
def test_model_yaml_with_an_impossible_scalar_is_one_line(key, value, tiny_yaml, tmp_path):
    cfg = yaml.safe_load(tiny_yaml.read_text())
    cfg[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as e:
        yolo.main(["--cfg", str(path)])
    one_line_error(e, str(path), f"{key}={value!r}")


def test_checkpoint_with_fewer_names_than_classes_is_one_line(weights, data, tmp_path):
    ckpt = load_checkpoint(weights)
    ckpt["names"] = ckpt["names"][:2]  # nc is 6
    short = tmp_path / "short.pt"
    save_checkpoint({k: v for k, v in ckpt.items() if k != "format"}, short)
    with pytest.raises(SystemExit) as e:
        detect.main(["--weights", str(short), "--source", str(data.parent / "images" / "val"),
                     "--project", str(tmp_path), "--quiet"])
    one_line_error(e, str(short), "2 class names", "nc=6")


def test_teacher_checkpoint_without_latents_asks_for_them(weights, data, tmp_path):
    """A D3N teacher whose plug-in blocks are not loaded (here a block no registry knows) reads side inputs."""
    ckpt = load_checkpoint(weights)
    head = ckpt["model_yaml"]["head"]
    head[-1:-1] = [[-1, 1, "SideInput", ["latent", 8]], [-1, 1, "PluginOnlyBlock", [8]]]
    teacher = tmp_path / "teacher.pt"
    save_checkpoint({k: v for k, v in ckpt.items() if k != "format"}, teacher)
    for script, argv in ((detect, ["--source", str(data.parent / "images" / "val")]), (val, ["--data", str(data)])):
        with pytest.raises(SystemExit) as e:
            script.main(["--weights", str(teacher), "--project", str(tmp_path), "--quiet", *argv])
        one_line_error(e, str(teacher), "D3N teacher", "pass --latents")


# ---------------------------------------------------------------- data YAMLs and generated data

def test_names_with_mixed_key_types_are_one_line(data, tmp_path):
    bad = tmp_path / "mixed.yaml"
    bad.write_text(f"path: {data.parent}\ntrain: images/train\nval: images/val\n"
                   'names: {0: crazing, "1": inclusion}\n')
    with pytest.raises(SystemExit) as e:
        val.main(["--data", str(bad), "--project", str(tmp_path)])
    one_line_error(e, str(bad), "'1'")


def test_unknown_generate_keyword_is_one_line_listing_the_known_ones(tmp_path):
    bad = tmp_path / "gen.yaml"
    bad.write_text(f"path: {tmp_path / 'new'}\ntrain: images/train\nval: images/val\nnames: [a]\n"
                   "generate: {name: synth-defects, n_train: 2, n_val: 2, colour: red}\n")
    with pytest.raises(SystemExit) as e:
        val.main(["--data", str(bad), "--project", str(tmp_path)])
    one_line_error(e, str(bad), "colour", "n_train")
    assert not (tmp_path / "new").exists()


def test_generate_pointed_at_an_existing_dataset_touches_nothing(weights, tmp_path):
    """A copy of synth-defects.yaml whose path: names the user's own data (which has synth_* files and a cache)."""
    own = tmp_path / "my-defects"
    for split in ("train", "val"):
        (own / "images" / split).mkdir(parents=True)
        (own / "labels" / split).mkdir(parents=True)
        cv2.imwrite(str(own / "images" / split / "synth_00000.png"), np.full((64, 64, 3), 90, np.uint8))
        (own / "labels" / split / "synth_00000.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (own / "labels" / "train.cache").write_text("my cache")
    (own / "data.yaml").write_text("my notes")
    before = snapshot(own)
    copied = tmp_path / "copied.yaml"
    copied.write_text((REPO / "data" / "synth-defects.yaml").read_text().replace("datasets/synth-defects", str(own)))
    with pytest.raises(SystemExit) as e:
        val.main(["--data", str(copied), "--weights", str(weights), "--project", str(tmp_path / "runs")])
    one_line_error(e, str(copied), str(own), "not made by the synthetic generator", "generate:")
    assert snapshot(own) == before


# ---------------------------------------------------------------- images and labels

def test_label_file_with_a_utf8_bom_keeps_its_first_row(tmp_path, caplog):
    data = make_dataset(tmp_path / "bom", n_train=2, n_val=1, size=96)
    label = sorted((data.parent / "labels" / "train").glob("*.txt"))[0]
    rows = label.read_text().splitlines()
    label.write_bytes(b"\xef\xbb\xbf" + label.read_bytes())  # as Windows Notepad saves it
    dataset = LoadImagesAndLabels(load_data_config(data).images("train"))
    assert len(dataset.labels[0]) == len(rows)
    assert "row dropped" not in caplog.text


def test_truncated_jpeg_is_used_with_a_warning_by_training_and_by_detect(weights, tmp_path, caplog):
    data = make_dataset(tmp_path / "cut", n_train=2, n_val=1, size=96)
    png = sorted((data.parent / "images" / "train").glob("*.png"))[0]
    jpeg = cv2.imencode(".jpg", cv2.imread(str(png)))[1].tobytes()
    cut = png.with_suffix(".jpg")
    cut.write_bytes(jpeg[:len(jpeg) // 2])  # a copy that stopped half way
    png.unlink()
    dataset = LoadImagesAndLabels(load_data_config(data).images("train"))
    assert cut in dataset.im_files and f"{cut}: truncated JPEG" in caplog.text
    run = detect.main(["--weights", str(weights), "--source", str(cut), "--imgsz", "64",
                       "--project", str(tmp_path / "runs"), "--quiet"])
    assert (run / cut.name).is_file()
    assert caplog.text.count(f"{cut}: truncated JPEG") == 2


def test_detect_keeps_inputs_in_sub_folders_apart(weights, tmp_path):
    image = next((REPO / "data" / "images").glob("*.png")).read_bytes()
    for folder in ("line1", "line2"):
        (tmp_path / "src" / folder).mkdir(parents=True)
        (tmp_path / "src" / folder / "img.png").write_bytes(image)
    run = detect.main(["--weights", str(weights), "--source", str(tmp_path / "src"), "--imgsz", "64", "--save-txt",
                       "--save-crop", "--max-det", "2", "--project", str(tmp_path / "runs"), "--quiet"])
    assert sorted(str(p.relative_to(run)) for p in run.rglob("img.*")) == [
        "labels/line1/img.txt", "labels/line2/img.txt", "line1/img.png", "line2/img.png"]
    assert {p.parent.name for p in run.glob("crops/*/*/*.jpg")} == {"line1", "line2"}


def test_detect_exits_1_when_every_input_was_skipped(weights, tmp_path):
    (tmp_path / "src").mkdir()
    for name in ("a.jpg", "b.png"):
        (tmp_path / "src" / name).write_bytes(b"not an image")
    with pytest.raises(SystemExit) as e:
        detect.main(["--weights", str(weights), "--source", str(tmp_path / "src"), "--project", str(tmp_path / "r"),
                     "--quiet"])
    one_line_error(e, str(tmp_path / "src"), "none of its 2 input(s) could be read")


# ---------------------------------------------------------------- D3N stage 1 and the feature repository

def test_feature_repository_holding_nan_is_refused_naming_the_file(repo_copy):
    level = repo_copy / "level1.npy"
    shape, _, offset = npy_layout(level)
    level.write_bytes(level.read_bytes()[:offset] + np.full(shape, np.nan, np.float16).tobytes())  # same size
    with pytest.raises(CorruptRepositoryError, match=r"level1.npy: non-finite values \(NaN/inf\) in row 0"):
        LatentRepository(repo_copy)


def test_stage1_skips_undecodable_and_tiny_images_as_training_does(tmp_path, caplog):
    from extract_features import main

    data = make_stage1_dataset(tmp_path / "data")
    train_dir = data.parent / "images" / "train"
    (train_dir / "broken.png").write_bytes(b"\x89PNG cut")
    cv2.imwrite(str(train_dir / "dot.png"), np.zeros((1, 1, 3), np.uint8))  # train.py rejects < 10 px
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG)
    assert main(["all", "--data", str(data), "--ddpm-cfg", str(tmp_path / "tiny.yaml"), "--out",
                 str(tmp_path / "repo"), "--device", "cpu", "--quiet"]) == 0
    assert f"{train_dir / 'broken.png'}: image cannot be decoded; skipped" in caplog.text
    assert f"{train_dir / 'dot.png'}: image smaller than 10 px; skipped" in caplog.text
    assert len(LatentRepository(tmp_path / "repo")) == 7  # the 5 + 2 good images


@pytest.mark.parametrize("item, expected", [("features.timesteps=100,150", [100, 150]),
                                            ("features.timesteps=[100, 150]", [100, 150]),
                                            ("features.noise=shared", "shared"), ("ddpm_train.lr=1e-4", 1e-4)])
def test_pipeline_stage1_overrides_take_lists_words_and_numbers(item, expected):
    ap = argparse.ArgumentParser()
    add_pipeline_flags(ap, PipelineOptions())
    options = options_from_flags(vars(ap.parse_args(["--stage1", item, "--quiet"])))
    assert options.stage1_overrides == {item.split("=")[0]: expected}


@pytest.mark.parametrize("item, named", [("features.timesteps=[100, 150", "[100, 150"),
                                         ("ddpm_train.iterations", "SECTION.KEY=VALUE"),
                                         ("features.colour=red", "colour")])
def test_pipeline_stage1_mistakes_are_one_line_before_anything_trains(item, named):
    ap = argparse.ArgumentParser()
    add_pipeline_flags(ap, PipelineOptions())
    with pytest.raises(SystemExit) as e:
        options_from_flags(vars(ap.parse_args(["--stage1", item, "--quiet"])))
    one_line_error(e, named)


@pytest.mark.parametrize("script", ["val", "detect"])
def test_a_segmentation_checkpoint_in_a_detection_script_is_one_line(script, data, tmp_path):
    """The detection scripts refuse a segmenter in one line naming segment/val.py and segment/predict.py."""
    model = Model("yolov5n-seg.yaml", nc=6)
    model.names = [f"defect{i}" for i in range(6)]
    seg = tmp_path / "seg.pt"
    save_model(seg, model)
    argv = {"val": ["--data", str(data), "--weights", str(seg), "--imgsz", "64", "--project", str(tmp_path)],
            "detect": ["--weights", str(seg), "--source", str(data.parent / "images" / "val"), "--imgsz", "64",
                       "--project", str(tmp_path)]}[script]
    with pytest.raises(SystemExit) as e:
        {"val": val.main, "detect": detect.main}[script](argv + ["--quiet"])
    one_line_error(e, str(seg), "segmentation model", f"segment/{'val' if script == 'val' else 'predict'}.py")


def test_int8_export_of_a_segmenter_is_one_line(data, tmp_path):
    model = Model("yolov5n-seg.yaml", nc=2)
    model.names = ["a", "b"]
    seg = tmp_path / "seg.pt"
    save_model(seg, model)
    with pytest.raises(SystemExit) as e:
        export.main(["--weights", str(seg), "--imgsz", "64", "--include", "onnx", "--int8", "--data", str(data)])
    one_line_error(e, str(seg), "--int8")
    assert not list(tmp_path.glob("*.onnx"))
