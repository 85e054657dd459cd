"""OpenVINO: export.py --include openvino writes an IR folder with its metadata, and the back-end gives the
checkpoint's outputs: every candidate box at IoU >= 0.99 with its twin and scores within 1e-3 (fp32 IR)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("openvino", reason="the optional openvino package is not installed")

import export  # noqa: E402
from deploy.backends import OpenVINOBackend, load_backend  # noqa: E402
from models.loading import save_model  # noqa: E402
from models.yolo import Model  # noqa: E402
from tests.models.batchnorm import randomise_batchnorm  # noqa: E402
from utils.boxes import box_iou  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = Model("yolov5n.yaml", nc=3)
    randomise_batchnorm(model)
    with torch.no_grad():
        for m in model.detect.m:
            m.bias.view(model.detect.na, -1)[:, 4:6] = 2.0  # random weights that still detect something
    model.names = ["crazing", "inclusion", "scratches"]
    path = tmp_path_factory.mktemp("ov") / "best.pt"
    save_model(path, model)
    return path


@pytest.mark.parametrize("extra", [[], ["--dynamic"], ["--half"]])
def test_openvino_detects_as_the_checkpoint(weights, extra):
    files = export.main(["--weights", str(weights), "--imgsz", "128", "--include", "openvino", "--quiet", *extra])
    folder = files["openvino"]
    assert folder.name == "best_openvino_model" and (folder / "best.xml").exists() and (folder / "metadata.json").exists()
    backend = load_backend(folder)
    assert isinstance(backend, OpenVINOBackend) and backend.names == ["crazing", "inclusion", "scratches"]
    half = "--half" in extra  # fp16-compressed weights: a looser match
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = load_backend(weights)(x)[0]
    decoded = backend(x)
    assert (decoded[..., 4:] - expected[..., 4:]).abs().max() < (2e-2 if half else 1e-3)  # scores
    assert (decoded[..., :4] - expected[..., :4]).abs().max() < (1.0 if half else 0.05)  # pixels
    boxes = decoded[0, :, :4]  # every candidate box (x, y, w, h) against its PyTorch twin
    iou = box_iou(_xyxy(boxes), _xyxy(expected[0, :, :4])).diagonal()
    assert iou.min() >= (0.97 if half else 0.99)  # so NMS keeps the same detections, up to exact ties


def _xyxy(b: torch.Tensor) -> torch.Tensor:
    return torch.cat((b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2), 1)


def test_a_dynamic_ir_decodes_other_sizes_as_the_checkpoint(weights):
    folder = export.main(["--weights", str(weights), "--imgsz", "128", "--include", "openvino", "--dynamic",
                          "--quiet"])["openvino"]
    x = torch.rand(2, 3, 96, 160, generator=torch.Generator().manual_seed(1))  # not the exported 128 x 128
    with torch.no_grad():
        expected = load_backend(weights)(x)[0]
    assert (load_backend(folder)(x) - expected).abs().max() < 0.05


def test_a_folder_that_is_not_an_export_is_refused(tmp_path):
    (tmp_path / "x_openvino_model").mkdir()
    with pytest.raises(Exception, match="not an OpenVINO export"):
        load_backend(tmp_path / "x_openvino_model")


def test_detect_runs_the_openvino_folder(weights, tmp_path):
    import cv2
    import numpy as np

    import detect

    folder = export.main(["--weights", str(weights), "--imgsz", "128", "--include", "openvino", "--dynamic",
                          "--quiet"])["openvino"]
    image = tmp_path / "src" / "a.png"
    image.parent.mkdir()
    cv2.imwrite(str(image), np.random.default_rng(1).integers(0, 255, (96, 160, 3), dtype=np.uint8))
    run = detect.main(["--weights", str(folder), "--source", str(image), "--imgsz", "128", "--project",
                       str(tmp_path), "--save-txt", "--quiet"])
    assert (run / "labels" / "a.txt").exists()


def test_int8_by_nncf_keeps_the_first_layer_and_head_in_float_and_scores(tmp_path, caplog):
    import logging

    from deploy.quantize_openvino import kept_float_ops
    from tests.scripts.conftest import make_dataset

    data = make_dataset(tmp_path / "synth", n_train=8, n_val=4, size=96)
    model = Model("yolov5n.yaml", nc=6)  # the synthetic set's classes
    model.names = [f"defect{i}" for i in range(6)]
    weights = tmp_path / "best.pt"
    save_model(weights, model)
    with caplog.at_level(logging.INFO):
        files = export.main(["--weights", str(weights), "--imgsz", "128", "--include", "openvino", "--int8",
                             "--data", str(data), "--calib-images", "8", "--workers", "0"])
    folder = files["openvino_int8"]
    assert folder.name == "best_int8_openvino_model"
    backend = load_backend(folder)
    assert backend.meta.int8 == "nncf"
    import openvino as ov

    ir = ov.Core().read_model(str(folder / "best_int8.xml"))
    kept = set(kept_float_ops(ir))
    convs = [op for op in ir.get_ops() if op.get_type_name() == "Convolution"]
    quantized = {op.get_friendly_name(): any(op.input_value(i).get_node().get_type_name() == "FakeQuantize"
                                             for i in range(2)) for op in convs}  # int8 input or weights
    assert any(q for name, q in quantized.items() if name not in kept)  # the body is int8
    first_and_head = [name for name in quantized if name in kept]
    assert first_and_head and not any(quantized[name] for name in first_and_head)  # these stay float
    assert "int8 OpenVINO (NNCF): mAP@0.5 on data.yaml val" in caplog.text
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    assert backend(x).shape == load_backend(files["openvino"])(x).shape
