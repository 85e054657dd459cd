"""Exports run behind the same call as the checkpoint and give its detections; bad files are one-line errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import export
from deploy.backends import DetectBackend, load_backend
from engine.predictor import PredictOptions, Predictor
from models.loading import load_model, save_model
from models.yolo import Model
from tests.conftest import TINY, write_image
from utils.boxes import box_iou
from utils.checkpoints import CheckpointError

NAMES = ["crazing", "inclusion", "scratches"]
REPO = Path(__file__).resolve().parents[2]


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random-weight yolov5n-sized detector for NAMES, saved as a checkpoint."""
    cfg = yaml.safe_load((REPO / "models" / "yolov5n.yaml").read_text())
    cfg.update(nc=len(NAMES), **TINY)
    torch.manual_seed(seed)
    model = Model(cfg)
    model.names = list(NAMES)
    save_model(path, model)
    return path


def export_to(weights: Path, *flags: str) -> dict[str, Path]:
    return export.main(["--weights", str(weights), "--quiet", *flags])


def match_detections(ref: torch.Tensor, got: torch.Tensor, min_iou: float = 0.99) -> float:
    """Worst score difference between each reference detection and its closest-scoring partner of the
    same class with IoU >= min_iou (inf when one has none); boxes are whole pixels, so partners can tie."""
    assert len(ref) == len(got), f"{len(ref)} detections vs {len(got)}"
    if not len(ref):
        return 0.0
    same = (box_iou(ref[:, :4], got[:, :4]) >= min_iou) & (ref[:, None, 5] == got[None, :, 5])  # (n, n)
    gap = (ref[:, None, 4] - got[None, :, 4]).abs().masked_fill(~same, float("inf"))
    return float(gap.min(1).values.max())


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """The tiny checkpoint and its dynamic ONNX, static ONNX (64x64) and TorchScript exports."""
    root = tmp_path_factory.mktemp("exports")
    weights = make_checkpoint(root / "tiny.pt")
    files = {"pt": weights, **export_to(weights, "--imgsz", "64", "--include", "onnx", "torchscript", "--dynamic")}
    static = make_checkpoint(root / "static.pt")
    files["static"] = export_to(static, "--imgsz", "64", "--include", "onnx")["onnx"]
    return files


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[np.ndarray]:
    root = tmp_path_factory.mktemp("images")
    return [cv2.imread(str(write_image(root / f"{i}.png", size=size, seed=i)))
            for i, size in enumerate([(96, 128), (120, 80)])]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_gives_the_checkpoints_detections(exports, images, fmt):
    options = PredictOptions(imgsz=96, conf_thres=0.001)
    reference = Predictor(load_model(exports["pt"], fuse=True), options)
    backend = Predictor(load_backend(exports[fmt]), options)
    for im in images:
        ref, got = reference(im), backend(im)
        assert len(ref) > 0  # the comparison has something to compare
        assert match_detections(ref, got) <= 1e-3 * float(ref[:, 4].max())  # random weights: scores ~1e-3


def test_exports_carry_names_stride_and_size(exports):
    for fmt in ("onnx", "torchscript", "static"):
        model = load_backend(exports[fmt])
        assert isinstance(model, DetectBackend) and model.names == NAMES and model.side_inputs == {}
        assert model.stride.tolist() == [8.0, 16.0, 32.0] and model.meta.imgsz == (64, 64)
        assert next(model.parameters()).device.type == "cpu"
    assert load_backend(exports["onnx"]).fixed_hw is None and load_backend(exports["static"]).fixed_hw == (64, 64)


def test_checkpoint_loads_as_the_model_itself(exports):
    assert isinstance(load_backend(exports["pt"]), Model)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_dynamic_export_runs_at_two_sizes(exports, fmt):
    model, backend = load_model(exports["pt"], fuse=True), load_backend(exports[fmt])
    for shape in [(1, 3, 64, 64), (2, 3, 96, 128)]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            expected, got = model(x)[0], backend(x)
        cells = sum((shape[2] // s) * (shape[3] // s) for s in (8, 16, 32))
        assert got.shape == (shape[0], 3 * cells, 5 + len(NAMES))
        assert torch.allclose(got, expected, atol=1e-3, rtol=1e-4)


def test_static_export_pads_smaller_inputs_and_refuses_larger(exports):
    backend = load_backend(exports["static"])
    x = torch.rand(2, 3, 32, 64)  # half height: val.py's rect batches, detect.py's stride-multiple letterbox
    out = backend(x)
    assert out.shape == (2, 3 * (64 + 16 + 4), 8)
    below = out[..., 1] >= 32  # detections centred in the padding
    assert below.any() and (out[..., 4][below] == 0).all() and (out[..., 4][~below] > 0).all()
    with pytest.raises(ValueError, match=r"static.onnx: exported for a fixed 64x64 input, got 96x64.*--dynamic"):
        backend(torch.rand(1, 3, 96, 64))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace/save of the foreign file
def test_truncated_or_foreign_files_are_one_line_errors(exports, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exports["onnx"].read_bytes()[:5000])
    foreign = tmp_path / "foreign.onnx"
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3]) for n in ("x", "y")]
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", io[:1], io[1:])),
              str(foreign))
    foreign_ts = tmp_path / "foreign.torchscript"
    torch.jit.save(torch.jit.trace(torch.nn.Identity(), torch.zeros(1)), str(foreign_ts))
    truncated_ts = tmp_path / "truncated.torchscript"
    truncated_ts.write_bytes(exports["torchscript"].read_bytes()[:4000])
    for path, problem in [(truncated, "not a readable ONNX"), (foreign, "not a D3N detector export"),
                          (foreign_ts, "not a D3N detector export"), (truncated_ts, "not a readable TorchScript"),
                          (tmp_path / "missing.onnx", "model file not found")]:
        with pytest.raises(CheckpointError) as e:
            load_backend(path)
        assert str(e.value).startswith(f"{path}: {problem}") and "\n" not in str(e.value)
