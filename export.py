"""Export a trained detector for deployment: ONNX (opset >= 17) and TorchScript, optionally int8 ONNX.

    python export.py --weights runs/train/exp/weights/best.pt --include onnx torchscript --imgsz 640
    python export.py --weights best.pt --include onnx --dynamic --int8 --data data/synth-defects.yaml

Files go beside the weights (best.onnx, best.torchscript, best-int8.onnx) and carry their class
names, strides and input size, so `detect.py --weights best.onnx` and `val.py --weights best.onnx`
run them (ONNX Runtime on CPU, its CUDA provider when present). Exports return only the decoded
(B, N, 5 + nc) tensor [x, y, w, h, obj, cls...] in input pixels; NMS stays in the scripts.

A D3N teacher (a model with latent side inputs) is refused: it needs the diffusion features at run
time, which no factory box has; export the distilled student, an unchanged YOLOv5.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn

from deploy.backends import TORCHSCRIPT_CONFIG, ExportMetadata, load_backend
from deploy.quantize import INT8_FORMATS, calibration_files, evaluate, quantize_onnx
from models.loading import load_model
from models.yolo import Model, reads_side_inputs
from utils.checkpoints import load_checkpoint
from utils.cli import exit_on_user_error
from utils.data_config import load_data_config
from utils.files import atomic_write_bytes
from utils.image_size import check_img_size
from utils.logging import set_logging
from utils.torch_utils import select_device

LOGGER = logging.getLogger("export")
ROOT = Path(__file__).resolve().parent
FORMATS = ("torchscript", "onnx")
MIN_OPSET = 17
VERIFY_TOLERANCE = 1e-2  # max |difference| of decoded outputs (pixels, probabilities) before a warning


class ImagesOnly(nn.Module):
    """Images -> decoded detections: what the exporters trace (Model.forward also takes side inputs)."""

    def __init__(self, model: Model):
        super().__init__()
        self.model = model
        self.eval()  # exporters restore the wrapper's mode, recursively, when they finish

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def prepare_model(weights: Path, device: torch.device, half: bool) -> Model:
    """Load, refuse D3N teachers, fuse, and make Detect return the decoded tensor only."""
    if weights.suffix.lower() in (".onnx", ".torchscript"):
        raise ValueError(f"{weights}: already an export; pass the .pt checkpoint")
    if reads_side_inputs(load_checkpoint(weights, expect="detector").get("model_yaml") or {}):
        # refused before building: a teacher's blocks may belong to a plug-in export.py never loads
        raise ValueError(f"{weights}: a D3N teacher needs latent side inputs; export the distilled student instead")
    model = load_model(weights, device, fuse=True)
    model.detect.export = True
    return model.half() if half else model


def check_imgsz(imgsz: list[int], stride: int) -> tuple[int, int]:
    """--imgsz H [W] -> (h, w), each rounded up to a multiple of the model's largest stride."""
    if len(imgsz) not in (1, 2) or min(imgsz) < 1:
        raise ValueError(f"--imgsz {' '.join(map(str, imgsz))}: expected one or two positive sizes")
    h, w = (imgsz * 2)[:2]
    return check_img_size(h, stride), check_img_size(w, stride)


def export_torchscript(model: Model, example: torch.Tensor, meta: ExportMetadata, path: Path) -> Path:
    """Traced module with ExportMetadata in its extra files; shapes stay symbolic (any size runs)."""
    meta = dataclasses.replace(meta, dynamic=True)  # traced size ops are recorded, not baked in (tested)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still the format users run
        traced = torch.jit.trace(ImagesOnly(model), example, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_CONFIG: json.dumps(meta.to_strings())})
    atomic_write_bytes(path, buffer.getvalue())
    return path


def export_onnx(model: Model, example: torch.Tensor, meta: ExportMetadata, path: Path, opset: int = MIN_OPSET,
                simplify: bool = False) -> Path:
    """ONNX graph `images` (B, 3, H, W) -> `output0` (B, N, 5 + nc), ExportMetadata in metadata_props."""
    if opset < MIN_OPSET:
        raise ValueError(f"--opset {opset}: this exporter needs opset {MIN_OPSET} or newer")
    dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"},
                    "output0": {0: "batch", 1: "anchors"}} if meta.dynamic else None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning, UserWarning))  # "legacy exporter" notes
        torch.onnx.export(ImagesOnly(model), (example,), buffer, opset_version=opset, input_names=["images"],
                          output_names=["output0"], dynamic_axes=dynamic_axes, do_constant_folding=True,
                          dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    if simplify:
        proto = simplify_onnx(proto)
    for key, value in meta.to_strings().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    atomic_write_bytes(path, proto.SerializeToString())
    return path


def simplify_onnx(proto):
    """onnxsim when installed; ONNX Runtime applies the same constant folding at load time anyway."""
    try:
        import onnxsim
    except ImportError:
        LOGGER.warning("WARNING: --simplify: onnxsim is not installed; exporting the graph unsimplified "
                       "(ONNX Runtime folds constants when it loads the model)")
        return proto
    simplified, ok = onnxsim.simplify(proto)
    if not ok:
        LOGGER.warning("WARNING: --simplify: onnxsim could not check its result; keeping the original graph")
        return proto
    return simplified


def verify_export(path: Path, model: Model, example: torch.Tensor) -> float:
    """Max |difference| between the export and PyTorch on a random input of the example's shape."""
    x = torch.rand(example.shape, generator=torch.Generator().manual_seed(0)).to(example)
    with torch.inference_mode():
        expected = model(x).float()
        got = load_backend(path, example.device)(x)
    diff = float((got - expected).abs().max())
    if diff > VERIFY_TOLERANCE:
        LOGGER.warning("WARNING: %s: max |output - PyTorch| = %.2g on a random input (expected < %g)", path, diff,
                       VERIFY_TOLERANCE)
    else:
        LOGGER.info("%s: max |output - PyTorch| = %.2g on a random input", path, diff)
    return diff


def export_int8(opt: argparse.Namespace, onnx_path: Path) -> Path:
    """best.onnx -> best-int8.onnx, calibrated on the data YAML's train split; logs mAP@0.5 before and after."""
    data = load_data_config(opt.data)
    int8_path = onnx_path.with_name(f"{onnx_path.stem}-int8.onnx")
    quantize_onnx(onnx_path, int8_path, calibration_files(data.images("train"), opt.calib_images), opt.int8_format)
    if not opt.no_map:
        before = evaluate(onnx_path, data, workers=opt.workers)
        after = evaluate(int8_path, data, workers=opt.workers)
        LOGGER.info("int8 %s: mAP@0.5 on %s val %.3f -> %.3f (%+.1f points), mAP@0.5:0.95 %.3f -> %.3f",
                    opt.int8_format, data.yaml_path.name, before.map50, after.map50,
                    100 * (after.map50 - before.map50), before.map, after.map)
    return int8_path


def run(opt: argparse.Namespace) -> dict[str, Path]:
    """Export `opt.weights` to each of `opt.include`; returns {format: path}."""
    include = [f.lower() for f in opt.include]
    unknown = sorted(set(include) - set(FORMATS))
    if unknown:
        raise ValueError(f"--include {' '.join(unknown)}: unknown format (known: {', '.join(FORMATS)})")
    if opt.int8 and "onnx" not in include:
        include.append("onnx")  # int8 quantizes the fp32 ONNX model
    device = select_device(opt.device)
    if opt.half and device.type != "cuda":
        raise ValueError(f"--half: fp16 export needs a CUDA --device (got {device}); CPUs run fp32 or --int8")
    model = prepare_model(Path(opt.weights), device, opt.half)
    hw = check_imgsz(opt.imgsz, int(model.stride.max()))
    example = torch.zeros(opt.batch_size, 3, *hw, device=device, dtype=torch.float16 if opt.half else torch.float32)
    with torch.inference_mode():
        model(example)  # warm up: builds the decoding grids once
    base = ExportMetadata(names=list(model.names), stride=model.stride.tolist(), imgsz=hw, batch=opt.batch_size,
                          dynamic=opt.dynamic, half=opt.half, source=Path(opt.weights).name)
    files: dict[str, Path] = {}
    weights = Path(opt.weights)
    if "torchscript" in include:
        files["torchscript"] = export_torchscript(model, example, base, weights.with_suffix(".torchscript"))
    if "onnx" in include:
        files["onnx"] = export_onnx(model, example, base, weights.with_suffix(".onnx"), opt.opset, opt.simplify)
    for path in files.values():
        verify_export(path, model, example)
    if opt.int8:
        files["int8"] = export_int8(opt, files["onnx"])
    for fmt, path in files.items():
        LOGGER.info("%s: %s (%.1f MB)", fmt, path, path.stat().st_size / 1e6)
    first = files.get("onnx") or next(iter(files.values()))
    LOGGER.info("Run: python detect.py --weights %s   |   python val.py --weights %s --data <data.yaml>", first, first)
    return files


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=ROOT / "yolov5s.pt", help="detector checkpoint (.pt)")
    p.add_argument("--include", nargs="+", default=list(FORMATS), help=f"formats: {' '.join(FORMATS)}")
    p.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="image (h, w)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size (any batch with --dynamic)")
    p.add_argument("--device", default="cpu", help="cuda device, i.e. 0 or cpu")
    p.add_argument("--half", action="store_true", help="FP16 export (CUDA devices only)")
    p.add_argument("--dynamic", action="store_true", help="ONNX: dynamic batch, height and width")
    p.add_argument("--simplify", action="store_true", help="ONNX: simplify with onnxsim when installed")
    p.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset version (>= {MIN_OPSET})")
    p.add_argument("--int8", action="store_true", help="also write <name>-int8.onnx (static int8 quantization)")
    p.add_argument("--int8-format", default="qdq", choices=INT8_FORMATS, help="int8 ONNX operator style")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "synth-defects.yaml",
                   help="data YAML: --int8 calibrates on its train split and scores its val split")
    p.add_argument("--calib-images", type=int, default=64, help="--int8 calibration images from the train split")
    p.add_argument("--no-map", action="store_true", help="--int8: skip the mAP before/after check on val")
    p.add_argument("--workers", type=int, default=2, help="dataloader workers for the --int8 mAP check")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Path]:
    opt = parse_opt(argv)
    set_logging(not opt.quiet)
    return exit_on_user_error(lambda: run(opt))


if __name__ == "__main__":
    main()
