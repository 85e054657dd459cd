"""ultralytics/yolov5 checkpoints load as our models and compute what ultralytics/yolov5 computes.

The committed files were written by yolov5==7.0.14's own code (tests/fixtures/make_yolov5_fixtures.py);
expected.pt holds its forward pass, so the comparison runs without the package. Where the package is
importable, a freshly built reference model is compared too.
"""

from __future__ import annotations

import logging

import pytest
import torch

from models.loading import build_from_checkpoint, imported_yolov5, load_model, read_detector_checkpoint
from models.safe_pickle import read_pickled_checkpoint
from models.yolo import Model, load_model_yaml
from tests.models.yolov5_files import GENUINE, expected, genuine, save_under_name
from utils.checkpoints import CheckpointError


def _pred(model, x):
    with torch.no_grad():
        out = model(x)
    return (out[0][0], out[1]) if model.nm else (out[0], None)


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("stem", GENUINE)
def test_genuine_file_gives_the_reference_outputs(stem, fuse):
    ref = expected()
    model = load_model(genuine(stem), fuse=fuse)
    pred, proto = _pred(model, ref["input"])
    torch.testing.assert_close(pred, ref["outputs"][stem]["pred"], rtol=1e-4, atol=1e-3)
    if proto is not None:
        torch.testing.assert_close(proto, ref["outputs"][stem]["proto"], rtol=1e-4, atol=1e-5)
    assert model.names == ["class0", "class1", "class2"]
    assert model.stride.tolist() == [8.0, 16.0, 32.0]


@pytest.mark.parametrize("stem, prefix", [("det-pip-last", "yolov5.models."), ("det-git-best", "models."),
                                          ("seg-pip-best", "yolov5.models."), ("seg-git-last", "models.")])
def test_fixtures_cover_both_module_namings(stem, prefix):
    _, refs = read_pickled_checkpoint(genuine(stem))
    head = "Segment" if stem.startswith("seg") else "Detect"
    assert f"{prefix}yolo.{head}" in refs and f"{prefix}common.C3" in refs


def test_the_ema_is_taken_when_present_as_ultralytics_loads_it():
    ckpt = read_detector_checkpoint(genuine("det-pip-last"))
    assert ckpt["ema"] is not None and not torch.equal(ckpt["ema"]["model.0.conv.weight"],
                                                       ckpt["state_dict"]["model.0.conv.weight"])
    loaded = load_model(genuine("det-pip-last")).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in ckpt["ema"].items())
    trained = build_from_checkpoint(ckpt, "x", use_ema=False).state_dict()  # fine-tuning may take either
    assert torch.equal(trained["model.0.conv.weight"], ckpt["state_dict"]["model.0.conv.weight"])


def test_anchors_come_from_the_file_not_the_yaml():
    """The fixtures' anchors were changed (as AutoAnchor does) after the model was built from its YAML."""
    ckpt = read_detector_checkpoint(genuine("det-git-best"))
    from_yaml = Model(ckpt["model_yaml"]).detect.anchors
    torch.testing.assert_close(ckpt["state_dict"]["model.24.anchors"], from_yaml * 1.1, rtol=1e-3, atol=0)


def test_import_is_announced_in_one_line(caplog):
    imported_yolov5.cache_clear()  # a process announces each file once; earlier tests read it
    with caplog.at_level(logging.INFO):
        load_model(genuine("seg-git-last"))
    notes = [r.getMessage() for r in caplog.records if "imported ultralytics/yolov5 checkpoint" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0] and "segmentation" in notes[0] and "EMA" in notes[0]


def test_v5_layout_with_focus_spp_and_anchor_grid_buffer(tmp_path, monkeypatch):
    """v5.0 files: a Focus stem, SPP, and Detect's pixel `anchor_grid` buffer (ours derives it)."""
    cfg = load_model_yaml("yolov5n.yaml")[0]
    cfg.update(nc=2, width_multiple=0.125)
    cfg["backbone"][0] = [-1, 1, "Focus", [64, 3]]
    cfg["backbone"][-1] = [-1, 1, "SPP", [1024, [5, 9, 13]]]
    ours = Model(cfg).eval()
    ours.detect.register_buffer("anchor_grid", ours.detect.anchors.clone() * 8)

    def v5_checkpoint(cls):
        net = cls()
        net.model, net.yaml, net.stride, net.names = ours.model, cfg, ours.stride.clone(), ["a", "b"]
        return {"epoch": -1, "model": net.half(), "ema": None, "optimizer": None}

    path = save_under_name(monkeypatch, tmp_path / "v5.pt", "yolov5.models.yolo", "Model", v5_checkpoint)
    ours.float()
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(_pred(load_model(path), x)[0], _pred(ours, x)[0], rtol=1e-4, atol=1e-3)


def test_a_block_we_lack_is_named(tmp_path, monkeypatch):
    def ghost(cls):
        net = cls()
        net.yaml = {"nc": 1, "anchors": 3, "backbone": [[-1, 1, "GhostConv", [16, 3, 2]]],
                    "head": [[[0], 1, "Detect", ["nc", "anchors"]]]}
        net.stride = torch.tensor([2.0])
        return {"model": net, "ema": None}

    path = save_under_name(monkeypatch, tmp_path / "ghost.pt", "yolov5.models.yolo", "DetectionModel", ghost)
    with pytest.raises(CheckpointError, match=r"blocks D3N does not have \(GhostConv\)") as e:
        load_model(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("module, cls_name, match", [
    ("ultralytics.nn.tasks", "DetectionModel", "ultralytics 8.x checkpoint .*yolov5u"),
    ("yolov5.models.yolo", "ClassificationModel", "a classification model"),
])
def test_other_model_families_are_named(tmp_path, monkeypatch, module, cls_name, match):
    path = save_under_name(monkeypatch, tmp_path / "other.pt", module, cls_name,
                           lambda cls: {"model": cls(), "ema": None, "train_args": {}})
    with pytest.raises(CheckpointError, match=match) as e:
        load_model(path)
    assert str(tmp_path / "other.pt") in str(e.value) and "\n" not in str(e.value)


def test_same_outputs_as_the_live_reference(tmp_path):
    """Skips (with the install command) unless ultralytics/yolov5's pip package is importable."""
    try:
        yolo = pytest.importorskip("yolov5.models.yolo", reason="ultralytics/yolov5 not importable: see "
                                   "tests/fixtures/make_yolov5_fixtures.py for the pip install line")
    except Exception as e:  # noqa: BLE001 - the package failing on a missing optional dependency
        pytest.skip(f"ultralytics/yolov5 not importable ({e})")
    import yaml
    from pathlib import Path

    for task, cls, cfg_name in (("det", yolo.DetectionModel, "yolov5n.yaml"),
                                ("seg", yolo.SegmentationModel, "segment/yolov5n-seg.yaml")):
        cfg = yaml.safe_load((Path(yolo.__file__).parent / cfg_name).read_text())
        cfg["width_multiple"] = 0.125
        torch.manual_seed(0)
        theirs = cls(cfg, ch=3, nc=2)
        for m in theirs.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        path = tmp_path / f"{task}.pt"
        torch.save({"epoch": -1, "model": theirs.half(), "ema": None}, path)
        theirs = theirs.float().fuse().eval()
        x = torch.rand(1, 3, 64, 96)
        with torch.no_grad():
            ref = theirs(x)
        pred, proto = _pred(load_model(path), x)
        torch.testing.assert_close(pred, ref[0], rtol=1e-4, atol=1e-3)
        if task == "seg":
            torch.testing.assert_close(proto, ref[1], rtol=1e-4, atol=1e-4)
