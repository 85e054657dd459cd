"""A segmenter exports to ONNX and TorchScript with YOLOv5-seg's two outputs, and segment/val.py and
segment/predict.py run the exports with the checkpoint's results."""

from __future__ import annotations

import cv2
import onnx
import pytest
import torch

import export
from deploy.backends import load_backend
from engine.predictor import PredictOptions, SegmentPredictor
from engine.validate import ValidationRun, load_eval_model, validate
from engine.validator import ValOptions


@pytest.fixture(scope="module")
def exports(trained_segmenter, tmp_path_factory):
    """{name: path}: the trained segmenter's checkpoint, a dynamic ONNX, a static ONNX and a TorchScript."""
    trainer, _ = trained_segmenter
    folder = tmp_path_factory.mktemp("seg-export")
    best = folder / "best.pt"
    best.write_bytes((trainer.save_dir / "weights" / "best.pt").read_bytes())
    static = folder / "static" / "best.pt"
    static.parent.mkdir()
    static.write_bytes(best.read_bytes())
    files = export.main(["--weights", str(best), "--imgsz", "64", "--include", "onnx", "torchscript", "--dynamic"])
    files_static = export.main(["--weights", str(static), "--imgsz", "64", "--include", "onnx"])
    return {"pt": best, "onnx": files["onnx"], "torchscript": files["torchscript"], "static": files_static["onnx"]}


def test_the_onnx_graph_has_the_detections_and_the_prototypes(exports):
    graph = onnx.load(str(exports["onnx"])).graph
    assert [o.name for o in graph.output] == ["output0", "output1"]
    decoded, protos = load_backend(exports["onnx"])(torch.rand(2, 3, 96, 64))
    assert decoded.shape[::2] == (2, 5 + 2 + 32) and protos.shape == (2, 32, 24, 16)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "static"])
def test_exports_score_and_segment_as_the_checkpoint(exports, trained_segmenter, fmt):
    _, data = trained_segmenter
    scores = {}
    for name in ("pt", fmt):
        run = ValidationRun(exports[name], data, "val", 64, 4, scale=True, workers=0, kind="segment")  # one geometry
        scores[name] = validate(run, ValOptions(plots=False))
    assert scores[fmt].map50 == pytest.approx(scores["pt"].map50, abs=1e-3)
    assert scores[fmt].mask_map == pytest.approx(scores["pt"].mask_map, abs=1e-3)
    image = cv2.imread(str(data.parent / "images" / "val" / "1.png"))[:48]  # not square: the static export pads
    masks = {}
    for name in ("pt", fmt):
        predictor = SegmentPredictor(load_eval_model(exports[name], torch.device("cpu"), kind="segment"),
                                     PredictOptions(64, conf_thres=0.01, max_det=5))
        masks[name] = predictor(image)[1]
    assert masks[fmt].shape == masks["pt"].shape == (len(masks["pt"]), 48, 64)
    assert (masks[fmt] != masks["pt"]).float().mean() < 0.01
