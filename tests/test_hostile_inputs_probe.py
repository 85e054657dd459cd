"""The probe of 2026-12-06 (issue 25): each defect a careless or hostile user hit, as a test that failed then.

The numbers in the section titles are the issue's. Helpers and fixtures are test_hostile_inputs.py's: a
mistake ends with `error: <file or flag>: <what to do>` on one line, and nothing already written is lost.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import detect
import export
import train
import val
from engine.evolve import EvolveOptions, open_study, suggest_hyp
from engine.hub import load_custom
from engine.predict import describe
from engine.predictor import PredictOptions, TiledPredictor
from models.loading import load_model
from tests.test_hostile_inputs import data, one_line_error, tiny_yaml, train_flags, weights  # noqa: F401 (fixtures)
from utils.checkpoints import load_checkpoint
from utils.hyp import Hyp
from utils.labels import parse_label_text
from utils.loss import LossGains
from utils.sources import glob_files, iter_frames, read_image
from utils.text import plain_text

FOREIGN_PICKLE_ERROR = "\x1b[1mdo those steps only if you trust the source of the checkpoint\x1b[0m"


def generated_data_yaml(folder: Path) -> tuple[Path, Path]:
    """(a data YAML whose dataset is generated on first use, the folder it would be generated into)."""
    target = folder / "to-generate"
    path = folder / "gen.yaml"
    path.write_text(f"path: {target}\ntrain: images/train\nval: images/val\nnames: [a, b]\n"
                    "generate: {name: synth-defects, n_train: 2, n_val: 2, size: 64}\n")
    return path, target


def foreign_pickle(path: Path) -> Path:
    """A checkpoint torch.load(weights_only=True) refuses, with PyTorch's coloured, many-line message."""
    torch.save({"model": Hyp}, path)  # a class: weights_only cannot unpickle it
    return path


def read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> Path:
    """Make `folder` behave as a read-only file system for our writers (mkdir, atomic writes, access checks);
    chmod would not do: tests may run as root, whom permissions do not stop."""
    folder.mkdir(parents=True, exist_ok=True)
    inside = lambda p: Path(os.path.abspath(p)).is_relative_to(folder)  # noqa: E731
    real_mkdir, real_mkstemp, real_access = Path.mkdir, __import__("tempfile").mkstemp, os.access

    def mkdir(self, *args, **kwargs):
        if inside(self) and self != folder:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and inside(dir):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr("tempfile.mkstemp", mkstemp)
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: not (mode & os.W_OK and inside(p)) and real_access(p, mode))
    return folder


# ---------------------------------------------------------------- 1. hyper-parameter search

def test_processes_sharing_a_study_draw_their_own_hyps_reproducibly(tmp_path):
    """Two processes on one storage with the same --seed (as `train.py --evolve --evolve-storage` twice): each trial
    draws from (seed, trial number), so they differ from each other and repeat exactly in a replayed study."""
    optuna = pytest.importorskip("optuna")
    base = Hyp().as_dict()

    def draws(storage: str) -> list[dict]:
        options = EvolveOptions(4, storage, "shared", seed=0)
        first, second = open_study(optuna, options, storage), open_study(optuna, options, storage)
        hyps = []
        for study in (first, second, first, second):
            trial = study.ask()
            hyps.append(suggest_hyp(trial, base))
            study.tell(trial, 0.5)
        return hyps

    hyps = draws(f"sqlite:///{tmp_path / 'a.db'}")
    assert all(hyps[i] != hyps[j] for i in range(4) for j in range(i))  # no two processes repeat a start-up point
    assert draws(f"sqlite:///{tmp_path / 'b.db'}") == hyps


@pytest.mark.parametrize("trials", ["0", "-1"])
def test_evolve_without_trials_is_refused_before_a_study_exists(trials, data, tiny_yaml, tmp_path):
    with pytest.raises(SystemExit) as e:
        train.main(train_flags(data, tmp_path / "runs", "search", "--cfg", str(tiny_yaml), "--evolve", trials))
    one_line_error(e, f"--evolve {trials}", "positive")
    assert not (tmp_path / "runs").exists()


def test_evolve_writes_to_its_name(data, tiny_yaml, tmp_path):
    pytest.importorskip("optuna")
    out = train.main(train_flags(data, tmp_path, "search", "--cfg", str(tiny_yaml), "--evolve", "1"))
    assert out == tmp_path / "search" and (out / "evolve.csv").is_file() and (out / "hyp_evolve.yaml").is_file()


def read_only_sqlite(tmp_path: Path) -> str:
    db = tmp_path / "study.db"
    sqlite3.connect(db).close()
    return f"sqlite:///file:{db}?mode=ro&uri=true"  # opened read-only, as a file on a read-only disk is


@pytest.mark.parametrize("storage", ["notaurl://x", "postgresql://user@localhost/db", "read-only sqlite"])
def test_bad_evolve_storage_is_one_line_and_leaves_no_folder(storage, data, tiny_yaml, tmp_path):
    pytest.importorskip("optuna")
    if storage.startswith("postgresql"):
        pytest.importorskip("sqlalchemy")
        if __import__("importlib").util.find_spec("psycopg2"):
            pytest.skip("psycopg2 is installed: the URL would reach for a server")
    url = read_only_sqlite(tmp_path) if storage == "read-only sqlite" else storage
    with pytest.raises(SystemExit) as e:
        train.main(train_flags(data, tmp_path / "runs", "search", "--cfg", str(tiny_yaml), "--evolve", "2",
                               "--evolve-storage", url))
    one_line_error(e, f"--evolve-storage {url}")
    assert "\x1b" not in str(e.value.code) and "[SQL" not in str(e.value.code)
    assert not (tmp_path / "runs").exists()


def test_evolve_into_a_read_only_project_is_one_line(data, tiny_yaml, tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    project = read_only(monkeypatch, tmp_path / "ro")
    with pytest.raises(SystemExit) as e:
        train.main(train_flags(data, project, "search", "--cfg", str(tiny_yaml), "--evolve", "2"))
    one_line_error(e, str(project / "search"), "Read-only file system")
    assert not list(project.iterdir())


# ---------------------------------------------------------------- 2. int8 calibration data

def test_int8_without_data_is_refused_before_any_work(weights, tmp_path, monkeypatch):
    monkeypatch.setattr("utils.data_config._run_generator", lambda *a: pytest.fail("synthetic data generated"))
    monkeypatch.setattr("export.prepare_model", lambda *a: pytest.fail("the model was loaded"))
    local = tmp_path / weights.name
    local.write_bytes(weights.read_bytes())
    with pytest.raises(SystemExit) as e:
        export.main(["--weights", str(local), "--include", "onnx", "--int8"])
    one_line_error(e, "--int8", "--data")
    assert sorted(p.name for p in tmp_path.iterdir()) == [weights.name]


# ---------------------------------------------------------------- 3. globs through symlink loops

def test_a_recursive_glob_through_symlink_loops_finds_each_file_once(tmp_path):
    for name in ("a.jpg", "sub/b.jpg", "sub/deeper/c.jpg"):
        (tmp_path / "dir" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "dir" / name).write_bytes(b"")
    (tmp_path / "dir" / "sub" / "loop").symlink_to("..")
    (tmp_path / "dir" / "sub" / "deeper" / "loop").symlink_to("../..")  # two loops: Python's glob never ends
    found = glob_files(str(tmp_path / "dir" / "**" / "*.jpg"))
    assert found == [tmp_path / "dir" / n for n in ("a.jpg", "sub/b.jpg", "sub/deeper/c.jpg")]
    assert glob_files(str(tmp_path / "dir" / "**" / "[ab].jpg")) == found[:2]
    assert glob_files(str(tmp_path / "dir" / "s?b" / "*.jpg")) == found[1:2]


def test_detect_on_a_glob_through_a_symlink_loop_runs_each_image_once(data, weights, tmp_path):
    images = sorted((data.parent / "images" / "val").glob("*.png"))[:2]
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    for i, image in enumerate(images):
        jpg = cv2.imencode(".jpg", cv2.imread(str(image)))[1]
        (tmp_path / "dir" / ("sub" if i else "") / f"im{i}.jpg").write_bytes(jpg)
    (tmp_path / "dir" / "sub" / "loop").symlink_to("..")
    run = detect.main(["--weights", str(weights), "--source", str(tmp_path / "dir" / "**" / "*.jpg"), "--imgsz", "64",
                       "--project", str(tmp_path / "runs"), "--quiet"])
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*.jpg")) == ["im0.jpg", "sub/im1.jpg"]


# ---------------------------------------------------------------- 4. read-only and full disks

def test_export_into_a_read_only_folder_is_one_line_and_save_dir_writes_elsewhere(weights, tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    local = folder / "best.pt"
    local.write_bytes(weights.read_bytes())
    read_only(monkeypatch, folder)
    with pytest.raises(SystemExit) as e:
        export.main(["--weights", str(local), "--include", "torchscript", "--imgsz", "64"])
    one_line_error(e, str(folder), "--save-dir")
    files = export.main(["--weights", str(local), "--include", "torchscript", "--imgsz", "64",
                         "--save-dir", str(tmp_path / "out"), "--quiet"])
    assert files["torchscript"] == tmp_path / "out" / "best.torchscript" and files["torchscript"].is_file()


@pytest.mark.parametrize("script", ["train", "detect"])
def test_a_read_only_project_is_one_line_naming_it(script, data, weights, tiny_yaml, tmp_path, monkeypatch):
    project = read_only(monkeypatch, tmp_path / "ro")
    with pytest.raises(SystemExit) as e:
        if script == "train":
            train.main(train_flags(data, project, "exp", "--cfg", str(tiny_yaml)))
        else:
            detect.main(["--weights", str(weights), "--source", str(data.parent / "images" / "val"), "--imgsz", "64",
                         "--project", str(project), "--quiet"])
    one_line_error(e, str(project / "exp"), "Read-only file system", "write elsewhere")


def test_a_full_disk_while_saving_best_pt_is_one_line_and_last_pt_survives(data, tiny_yaml, tmp_path, monkeypatch):
    real_replace = os.replace

    def disk_full_for_best(src, dst, *args, **kwargs):
        if str(dst).endswith("best.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")  # as write() reports it: no file named
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", disk_full_for_best)
    with pytest.raises(SystemExit) as e:
        train.main(train_flags(data, tmp_path, "full", "--cfg", str(tiny_yaml)))
    weights_dir = tmp_path / "full" / "weights"
    one_line_error(e, str(weights_dir / "best.pt"), "No space left on device", "free some space")
    assert load_checkpoint(weights_dir / "last.pt")["epoch"] == 0
    assert not list(weights_dir.glob(".*.tmp"))


# ---------------------------------------------------------------- 5. Ctrl-C and --resume

def interrupt_at_epoch(monkeypatch: pytest.MonkeyPatch, stop: int) -> None:
    import engine.trainer as trainer

    real_epoch = trainer.Trainer.train_epoch

    def epoch(self, n, nw):
        if n == stop:
            raise KeyboardInterrupt
        return real_epoch(self, n, nw)

    monkeypatch.setattr(trainer.Trainer, "train_epoch", epoch)


def test_ctrl_c_before_the_first_epoch_says_there_is_nothing_to_resume(data, tiny_yaml, tmp_path, monkeypatch):
    interrupt_at_epoch(monkeypatch, 0)
    with pytest.raises(SystemExit) as e:
        train.main(train_flags(data, tmp_path, "early", "--cfg", str(tiny_yaml)))
    assert str(e.value.code) == "interrupted before the first epoch finished: nothing to resume; start the run again"


def test_resume_keeps_the_runs_workers_and_device_unless_typed_again(data, tiny_yaml, tmp_path, monkeypatch):
    interrupt_at_epoch(monkeypatch, 1)
    with pytest.raises(SystemExit) as e:
        train.main(train_flags(data, tmp_path, "run", "--cfg", str(tiny_yaml), "--epochs", "3", "--device", "cpu"))
    last = tmp_path / "run" / "weights" / "last.pt"
    assert str(e.value.code).endswith(f"resume with python train.py --resume {last}")
    monkeypatch.undo()
    interrupt_at_epoch(monkeypatch, 2)
    with pytest.raises(SystemExit):
        train.main(["--resume", str(last), "--quiet"])
    saved = yaml.safe_load((tmp_path / "run" / "opt.yaml").read_text())
    assert (saved["workers"], saved["device"]) == (0, "cpu")
    assert load_checkpoint(last)["epoch"] == 1
    monkeypatch.undo()
    train.main(["--resume", str(last), "--workers", "1", "--quiet"])
    saved = yaml.safe_load((tmp_path / "run" / "opt.yaml").read_text())
    assert (saved["workers"], saved["device"]) == (1, "cpu")


# ---------------------------------------------------------------- 6. sliced inference at reduced size

def test_tile_windows_run_at_the_tile_size_whatever_imgsz(weights, caplog):
    model = load_model(weights, torch.device("cpu"), fuse=True)
    shapes = []
    model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    with caplog.at_level(logging.INFO):
        predictor = TiledPredictor(model, PredictOptions(imgsz=64, tile=128, tile_overlap=0.0))
        predictor(np.full((256, 256, 3), 114, np.uint8))
    assert shapes == [(1, 3, 64, 64), (4, 3, 128, 128)]  # the whole image at --imgsz, 4 windows at full resolution
    assert "windows run at 128 px" in caplog.text


# ---------------------------------------------------------------- 7. images that are not what they seem

def test_detect_skips_a_1x1_image_as_training_does(data, weights, tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "dot.png"), np.full((1, 1, 3), 200, np.uint8))
    image = sorted((data.parent / "images" / "val").glob("*.png"))[0]
    (folder / "plate.png").write_bytes(image.read_bytes())
    run = detect.main(["--weights", str(weights), "--source", str(folder), "--imgsz", "64", "--save-txt",
                       "--project", str(tmp_path / "runs"), "--quiet"])
    assert sorted(p.name for p in run.glob("*.png")) == ["plate.png"]
    assert not (run / "labels" / "dot.txt").exists()
    assert f"{folder / 'dot.png'}: image smaller than 10 px (1x1), skipped" in caplog.text


def test_12_bit_data_in_a_16_bit_png_is_warned(tmp_path, caplog):
    path = tmp_path / "sensor.png"
    cv2.imwrite(str(path), (np.arange(64 * 64 * 3).reshape(64, 64, 3) % 256).astype(np.uint16) * 16)  # max 4080
    image = read_image(path)
    assert image.max() < 16  # what every reader sees: nearly black
    assert "16-bit image with values only up to 4080 (12-bit data?)" in caplog.text
    full = tmp_path / "full.png"
    cv2.imwrite(str(full), (np.arange(64 * 64 * 3).reshape(64, 64, 3) % 256).astype(np.uint16) * 257)
    caplog.clear()
    assert read_image(full).max() == 255 and not caplog.text


def test_a_truncated_video_warns_that_frames_are_missing(tmp_path, caplog):
    path = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (64, 64))
    rng = np.random.default_rng(0)
    for _ in range(30):
        writer.write(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    writer.release()
    path.write_bytes(path.read_bytes()[:int(path.stat().st_size * 0.6)])
    frames = list(iter_frames([path]))
    assert 0 < len(frames) < 30
    assert f"decoding stopped after frame {len(frames)} of the 30 its header announces" in caplog.text


# ---------------------------------------------------------------- 8. torch.hub inputs

def test_hub_scales_float_and_uint16_arrays_and_refuses_empty_ones(data, weights, tmp_path, caplog):
    model = load_custom(weights, conf=0.01, imgsz=64)
    image = cv2.imread(str(sorted((data.parent / "images" / "val").glob("*.png"))[0]))
    reference = model(image).xyxy[0]
    for scaled in (image / 255.0, image.astype(np.uint16) * 257, image.astype(np.float32)):
        results = model(scaled)
        assert torch.equal(results.xyxy[0], reference)
        assert results.save(tmp_path / "saved").is_dir()
    assert "float64 pixels read as 0-1 (x255)" in caplog.text and "uint16 pixels read as 16-bit" in caplog.text
    with pytest.raises(ValueError, match=r"^image 0: empty image \(shape \(0, 0, 3\)\)$"):
        model(np.zeros((0, 0, 3), np.uint8))


# ---------------------------------------------------------------- 9. small silent things

def test_classes_the_model_does_not_have_are_refused(data, weights, tmp_path):
    with pytest.raises(SystemExit) as e:
        detect.main(["--weights", str(weights), "--source", str(data.parent / "images" / "val"), "--classes", "1", "99",
                     "--project", str(tmp_path)])
    one_line_error(e, "--classes 99", "6 classes, 0-5", "0 defect0")


def test_a_two_point_segment_among_boxes_is_not_a_silent_box():
    text = "0 0.1 0.1 0.3 0.1 0.2 0.3\n1 0.2 0.2 0.8 0.8\n2 0.5 0.5 0.2 0.2\n3 0.4 0.4 0.1 0.1\n"
    boxes, polygons, msgs = parse_label_text(text, "mixed.txt", 6, (100, 100))
    assert len(boxes) == 3 and not polygons
    assert msgs[0].startswith("mixed.txt:1: a polygon row in a box label file")
    assert msgs[1] == ("mixed.txt: mixes polygon rows with 5-number rows; lines 2, 3, 4 were read as boxes "
                       "(cls x y w h): if any is a 2-point segment, it is now a wrong box; give segments 3 or more points")


def test_a_static_export_run_at_another_imgsz_warns(weights, tmp_path, caplog):
    local = tmp_path / "best.pt"
    local.write_bytes(weights.read_bytes())
    files = export.main(["--weights", str(local), "--include", "onnx", "--imgsz", "96", "--quiet"])
    image = tmp_path / "images" / "plate.png"
    image.parent.mkdir()
    cv2.imwrite(str(image), np.full((96, 96, 3), 90, np.uint8))
    detect.main(["--weights", str(files["onnx"]), "--source", str(image.parent), "--imgsz", "64",
                 "--project", str(tmp_path / "runs"), "--quiet"])
    assert "--imgsz 64: this export was made for a fixed 96x96 input" in caplog.text


def test_class_counts_do_not_pluralise_a_plural():
    det = torch.tensor([[0, 0, 1, 1, 0.9, 0], [0, 0, 1, 1, 0.9, 0], [0, 0, 1, 1, 0.9, 1], [0, 0, 1, 1, 0.9, 1]])
    assert describe(det, ["patches", "hole"]) == "2 patches, 2 holes"


# ---------------------------------------------------------------- cheap checks first, plain one-line errors

@pytest.mark.parametrize("script", ["val", "segment.val"])
def test_val_refuses_unreadable_weights_before_generating_data(script, tmp_path):
    import segment.val

    gen, target = generated_data_yaml(tmp_path)
    bad = foreign_pickle(tmp_path / "foreign.pt")
    with pytest.raises(SystemExit) as e:
        {"val": val.main, "segment.val": segment.val.main}[script](
            ["--weights", str(bad), "--data", str(gen), "--project", str(tmp_path / "runs")])
    message = one_line_error(e, str(bad), "nothing in it was run")  # the safe reader's refusal of a foreign pickle
    assert "\x1b" not in message
    assert not target.exists() and not (tmp_path / "runs").exists()


def test_train_refuses_unreadable_weights_before_generating_data_or_making_a_run(tmp_path):
    gen, target = generated_data_yaml(tmp_path)
    bad = foreign_pickle(tmp_path / "foreign.pt")
    with pytest.raises(SystemExit) as e:
        train.main(train_flags(gen, tmp_path / "runs", "exp", "--weights", str(bad)))
    one_line_error(e, str(bad))
    assert not target.exists() and not (tmp_path / "runs").exists()


def test_extract_features_refuses_unreadable_ddpm_weights_before_generating_data(tmp_path, capsys):
    import extract_features

    gen, target = generated_data_yaml(tmp_path)
    bad = foreign_pickle(tmp_path / "ddpm.pt")
    assert extract_features.main(["build", "--data", str(gen), "--ddpm", str(bad), "--out", str(tmp_path / "f")]) == 2
    assert str(bad) in capsys.readouterr().err
    assert not target.exists() and not (tmp_path / "f").exists()


@pytest.mark.parametrize("flag, value", [("--conf-thres", "2"), ("--iou-thres", "-0.1"), ("--max-det", "0"),
                                         ("--tile-overlap", "1.5")])
def test_detect_refuses_impossible_numbers_before_loading_anything(flag, value, tmp_path):
    with pytest.raises(SystemExit) as e:
        detect.main(["--weights", str(tmp_path / "missing.pt"), "--source", str(tmp_path), flag, value])
    one_line_error(e, f"{flag} {value}")


def test_plain_text_drops_terminal_codes_and_library_detail():
    assert plain_text(f"Weights only load failed, {FOREIGN_PICKLE_ERROR}. \n\t(1) In PyTorch 2.6 ...") == \
        "Weights only load failed, do those steps only if you trust the source of the checkpoint."


def test_loss_gains_log_as_a_person_writes_them_and_keep_their_values():
    gains = LossGains.from_hyp(Hyp(), nl=3, nc=6, imgsz=256)
    assert gains.obj == (256 / 640) ** 2 != 0.16  # the value used: unrounded
    assert str(gains).startswith("LossGains(box=0.05, obj=0.16, cls=0.0375, balance=(4, 1, 0.4), anchor_t=4,")
    assert str(Hyp(lr0=0.0123)).startswith("lr0=0.0123, lrf=0.01, momentum=0.937, weight_decay=0.0005,")
