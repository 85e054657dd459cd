"""export.py end to end: both formats, detect.py and val.py on the exports, int8, one-line refusals."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

import detect
import export
import val
from deploy.backends import load_backend
from engine.predictor import PredictOptions, Predictor
from models.loading import load_model, save_model
from models.yolo import Model
from tests.conftest import TINY, write_image
from tests.deploy.test_backends import NAMES, REPO, export_to, make_checkpoint, match_detections
from utils.boxes import xywh2xyxy
from utils.sources import read_image


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.pt")


@pytest.fixture(scope="module")
def exported(weights) -> dict[str, Path]:
    return export_to(weights, "--imgsz", "64", "--dynamic")


@pytest.fixture(scope="module")
def self_labelled_data(tmp_path_factory, weights) -> Path:
    """Images labelled with the checkpoint's own three best detections: its mAP is far from 0, so a
    back-end that shifted, rescaled or reordered anything would score differently."""
    root = tmp_path_factory.mktemp("data")
    predictor = Predictor(load_model(weights, fuse=True), PredictOptions(imgsz=64, conf_thres=0.001))
    for i in range(6):
        image = write_image(root / "images" / "val" / f"{i:06d}.png", size=(96, 128) if i % 2 else (128, 96), seed=i)
        det = predictor(read_image(image))[:3]
        h, w = read_image(image).shape[:2]
        rows = [f"{int(c)} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
                for x1, y1, x2, y2, _, c in det.tolist()]
        label = root / "labels" / "val" / f"{i:06d}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(rows) + "\n")
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump({"path": str(root), "train": "images/val", "val": "images/val", "names": NAMES}))
    return path


def test_export_writes_both_formats_beside_the_weights(weights, exported, tmp_path, caplog):
    assert exported == {"torchscript": weights.with_suffix(".torchscript"), "onnx": weights.with_suffix(".onnx")}
    other = make_checkpoint(tmp_path / "other.pt")
    with caplog.at_level(logging.INFO):
        files = export.main(["--weights", str(other), "--imgsz", "64", "--include", "onnx", "--opset", "18",
                             "--simplify"])
    assert files == {"onnx": tmp_path / "other.onnx"}
    assert any("other.onnx: max |output - PyTorch|" in m for m in caplog.messages)  # checked against PyTorch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.onnx", "other.pt"]  # no temp files left


def labels_as_detections(path: Path, shape: tuple[int, int]) -> torch.Tensor:
    """detect.py --save-txt --save-conf rows -> (n, 6) [x1, y1, x2, y2, conf, cls] in pixels."""
    rows = np.loadtxt(path, ndmin=2).reshape(-1, 6)
    h, w = shape
    boxes = xywh2xyxy(rows[:, 1:5]) * np.array([w, h, w, h])
    return torch.from_numpy(np.concatenate([boxes, rows[:, 5:6], rows[:, :1]], 1)).float()


def test_detect_on_exports_writes_the_checkpoints_labels(weights, exported, tmp_path):
    source = tmp_path / "images"
    shapes = {f"{i}": (96, 128) if i % 2 else (120, 80) for i in range(2)}
    for stem, size in shapes.items():
        write_image(source / f"{stem}.png", size=size, seed=int(stem))
    runs = {}
    for name, path in [("pt", weights), *exported.items()]:
        runs[name] = detect.main(["--weights", str(path), "--source", str(source), "--imgsz", "96", "--conf-thres",
                                  "0.001", "--save-txt", "--save-conf", "--project", str(tmp_path / "runs"),
                                  "--name", name, "--quiet", "--device", "cpu"])
    for stem, shape in shapes.items():
        ref = labels_as_detections(runs["pt"] / "labels" / f"{stem}.txt", shape)
        assert len(ref) > 0
        for name in exported:
            got = labels_as_detections(runs[name] / "labels" / f"{stem}.txt", shape)
            assert match_detections(ref, got) <= 1e-3 * float(ref[:, 4].max())


def test_val_on_exports_gives_the_checkpoints_map(weights, exported, self_labelled_data, tmp_path):
    static = export_to(make_checkpoint(tmp_path / "static.pt"), "--imgsz", "64", "--include", "onnx")["onnx"]
    results = {}
    for name, path in [("pt", weights), ("onnx", exported["onnx"]), ("static", static)]:  # TorchScript: detect test
        results[name] = val.main(["--data", str(self_labelled_data), "--weights", str(path), "--imgsz", "64",
                                  "--batch-size", "4", "--device", "cpu", "--workers", "0", "--quiet",
                                  "--project", str(tmp_path / "runs"), "--name", name])
    ref = results["pt"]
    assert ref.map50 > 0.3  # labels are its own detections
    got = results["onnx"]
    assert got.seen == ref.seen == 6
    assert abs(got.map50 - ref.map50) < 1e-6 and abs(got.map - ref.map) < 1e-6 and abs(got.mp - ref.mp) < 1e-6
    assert results["static"].seen == 6 and 0 <= results["static"].map50 <= 1  # padded to its fixed 64x64


def teacher_checkpoint(path: Path) -> Path:
    """A hybrid model whose P3 input to Detect is concatenated with a latent side input."""
    cfg = yaml.safe_load((REPO / "models" / "yolov5n.yaml").read_text())
    cfg.update(nc=len(NAMES), **TINY)
    detect_row = cfg["head"].pop()
    cfg["head"] += [[-1, 1, "SideInput", ["latent", 8]], [[17, -1], 1, "Concat", [1]],
                    [[25, 20, 23], *detect_row[1:]]]
    model = Model(cfg)
    assert model.side_inputs
    save_model(path, model)
    return path


@pytest.mark.parametrize("problem", ["teacher", "format", "export-as-weights", "half-on-cpu", "opset"])
def test_refusals_are_one_line_naming_the_problem(problem, weights, exported, tmp_path):
    argv, named = ["--weights", str(weights), "--imgsz", "64", "--quiet"], str(weights)
    if problem == "teacher":
        argv[1] = named = str(teacher_checkpoint(tmp_path / "teacher.pt"))
    elif problem == "format":
        argv += ["--include", "tflite"]
        named = "tflite"
    elif problem == "export-as-weights":
        argv[1] = named = str(exported["onnx"])
    elif problem == "half-on-cpu":
        argv += ["--half", "--device", "cpu"]
        named = "--half"
    else:
        argv += ["--include", "onnx", "--opset", "13"]
        named = "--opset 13"
    with pytest.raises(SystemExit) as e:
        export.main(argv)
    message = str(e.value.code)
    assert message.startswith("error: ") and named in message and "\n" not in message
    if problem == "teacher":
        assert "D3N teacher" in message and "export the distilled student" in message


def test_int8_export_runs_and_keeps_the_output(self_labelled_data, tmp_path, caplog):
    weights = make_checkpoint(tmp_path / "tiny.pt")
    with caplog.at_level(logging.INFO):
        files = export.main(["--weights", str(weights), "--imgsz", "64", "--include", "onnx", "--dynamic", "--int8",
                             "--data", str(self_labelled_data), "--calib-images", "4", "--workers", "0"])
    int8 = files["int8"]
    assert int8 == tmp_path / "tiny-int8.onnx"
    fp32, q8 = load_backend(files["onnx"]), load_backend(int8)
    assert q8.meta.int8 == "qdq" and q8.names == NAMES
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    a, b = fp32(x), q8(x)
    assert b.shape == a.shape and torch.isfinite(b).all()
    assert (b[..., :4] - a[..., :4]).abs().mean() < 4.0  # boxes in pixels stay close; the head is fp32
    assert any("mAP@0.5" in m and "->" in m for m in caplog.messages)  # before/after on the val split
    proto = onnx.load(str(int8))
    dequantized = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    int8_weights = {n.name: n.input[1] in dequantized for n in proto.graph.node if n.op_type == "Conv"}
    kept = [name for name in int8_weights if "/model.0/" in name or "/model.24/" in name]
    assert kept and not any(int8_weights[name] for name in kept)  # first conv and Detect head stay fp32
    assert sum(int8_weights.values()) == len(int8_weights) - len(kept)  # every other conv is int8
