"""Export a trained detector or segmenter for deployment: ONNX (opset >= 17), TorchScript and OpenVINO IR,
optionally int8 ONNX.

    python export.py --weights runs/train/exp/weights/best.pt --include onnx torchscript --imgsz 640
    python export.py --weights best.pt --include onnx --dynamic --int8 --data data/synth-defects.yaml
    python export.py --weights yolov5s.pt --include pt   # an ultralytics/yolov5 file -> our yolov5s-d3n.pt

Files go beside the weights, or into --save-dir (best.onnx, best.torchscript, best_openvino_model/,
best-int8.onnx), and carry their class names, strides and input size, so `detect.py --weights best.onnx`
and `val.py --weights best.onnx` run them (ONNX Runtime on CPU, its CUDA provider when present). Exports return only the decoded
(B, N, 5 + nc) tensor [x, y, w, h, obj, cls...] in input pixels; NMS stays in the scripts.

A D3N teacher (a model with latent side inputs) is refused: it needs the diffusion features at run
time, which no factory box has; export the distilled student, an unchanged YOLOv5.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import replace
from pathlib import Path

import torch

from deploy.backends import ExportMetadata
from deploy.export import (DEFAULT_FORMATS, FORMATS, MIN_OPSET, check_imgsz, export_checkpoint, export_onnx,
                           export_openvino, export_torchscript, openvino_dir, prepare_model, verify_export)
from deploy.quantize import INT8_FORMATS, calibration_files, quantize_onnx
from deploy.quantize_openvino import quantize_openvino
from engine.validate import evaluate
from utils.cli import check_flag_ranges, exit_on_user_error
from utils.data_config import check_data_yaml, load_data_config
from utils.logging import set_logging
from utils.torch_utils import select_device

LOGGER = logging.getLogger("export")
ROOT = Path(__file__).resolve().parent


def export_int8(opt: argparse.Namespace, fp32: Path, fmt: str) -> Path:
    """best.onnx -> best-int8.onnx (ONNX Runtime) or best_openvino_model/ -> best_int8_openvino_model/ (NNCF),
    calibrated on the data YAML's train split; logs mAP@0.5 before and after on its val split."""
    data = load_data_config(opt.data)  # checked before the export began; a generated dataset is built now
    calib = calibration_files(data.images("train"), opt.calib_images)
    if fmt == "onnx":
        int8 = quantize_onnx(fp32, fp32.with_name(f"{fp32.stem}-int8.onnx"), calib, opt.int8_format)
    else:
        int8 = quantize_openvino(fp32, openvino_dir(output_base(opt), "_int8"), calib)
    if not opt.no_map:
        before = evaluate(fp32, data, workers=opt.workers)
        after = evaluate(int8, data, workers=opt.workers)
        LOGGER.info("int8 %s: mAP@0.5 on %s val %.3f -> %.3f (%+.1f points), mAP@0.5:0.95 %.3f -> %.3f",
                    opt.int8_format if fmt == "onnx" else "OpenVINO (NNCF)", data.yaml_path.name, before.map50,
                    after.map50, 100 * (after.map50 - before.map50), before.map, after.map)
    return int8


def output_base(opt: argparse.Namespace) -> Path:
    """The exports' common name: the weights' name, beside them or in --save-dir (best.pt -> <dir>/best.onnx)."""
    return (Path(opt.save_dir) if opt.save_dir else Path(opt.weights).parent) / Path(opt.weights).name


def check_export_flags(opt: argparse.Namespace, include: list[str]) -> None:
    """Everything export.py can refuse before it loads the weights: formats, numbers, --int8's data, the
    output folder's write permission."""
    unknown = sorted(set(include) - set(FORMATS))
    if unknown:
        raise ValueError(f"--include {' '.join(unknown)}: unknown format (known: {', '.join(FORMATS)})")
    check_imgsz(opt.imgsz, 1)
    check_flag_ranges(opt, positive=("batch_size", "calib_images"), non_negative=("workers",))
    if opt.int8 and opt.data is None:
        raise ValueError("--int8: calibration needs your own images; pass --data <data YAML> (its train split "
                         "calibrates, its val split scores the int8 model)")
    folder = output_base(opt).parent
    if opt.save_dir:
        folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{folder}: cannot write the exports there (read-only or no permission); "
                         "pass --save-dir <folder>")
    if opt.int8:
        check_data_yaml(opt.data)


def run(opt: argparse.Namespace) -> dict[str, Path]:
    """Export `opt.weights` to each of `opt.include`; returns {format: path}."""
    include = [f.lower() for f in opt.include]
    check_export_flags(opt, include)
    files: dict[str, Path] = {}
    if "pt" in include:  # an imported ultralytics/yolov5 checkpoint, saved as ours
        files["pt"] = export_checkpoint(Path(opt.weights))
        LOGGER.info("pt: %s (loads with weights_only=True; use it as --weights anywhere)", files["pt"])
        include.remove("pt")
        if not include and not opt.int8:
            return files
    if opt.int8 and not {"onnx", "openvino"} & set(include):
        include.append("onnx")  # int8 quantizes the fp32 ONNX model (and the OpenVINO IR when it is asked for)
    device = select_device(opt.device)
    if opt.half and device.type != "cuda" and set(include) - {"openvino"}:
        raise ValueError(f"--half: fp16 ONNX/TorchScript export needs a CUDA --device (got {device}); CPUs run fp32 "
                         "or --int8 (for OpenVINO alone, --half stores an fp16-compressed IR)")
    half = opt.half and device.type == "cuda"  # fp16 weights and inputs; on a CPU --half only compresses the IR
    model = prepare_model(Path(opt.weights), device, half)
    if opt.int8 and model.nm:
        raise ValueError(f"{opt.weights}: --int8 quantizes detectors; export a segmenter in fp32 (drop --int8)")
    hw = check_imgsz(opt.imgsz, int(model.stride.max()))
    example = torch.zeros(opt.batch_size, 3, *hw, device=device,
                          dtype=torch.float16 if half else torch.float32)
    with torch.inference_mode():
        model(example)  # warm up: builds the decoding grids once
    base = ExportMetadata(names=list(model.names), stride=model.stride.tolist(), imgsz=hw, batch=opt.batch_size,
                          dynamic=opt.dynamic, half=opt.half, source=Path(opt.weights).name, nm=model.nm)
    weights = output_base(opt)
    if "torchscript" in include:
        files["torchscript"] = export_torchscript(model, example, base, weights.with_suffix(".torchscript"))
    if "onnx" in include:
        files["onnx"] = export_onnx(model, example, base, weights.with_suffix(".onnx"), opt.opset, opt.simplify)
    if "openvino" in include:
        files["openvino"] = export_openvino(model.float(), example.float(), replace(base, half=False),
                                            openvino_dir(weights), fp16=opt.half)
    for fmt, path in files.items():
        if fmt != "pt":
            verify_export(path, model, example)
    if opt.int8 and "onnx" in files:
        files["int8"] = export_int8(opt, files["onnx"], "onnx")
    if opt.int8 and "openvino" in files:
        files["openvino_int8"] = export_int8(opt, files["openvino"], "openvino")
    for fmt, path in files.items():
        LOGGER.info("%s: %s (%.1f MB)", fmt, path, path.stat().st_size / 1e6)
    first = files.get("onnx") or next(iter(files.values()))
    scripts = ("segment/predict.py", "segment/val.py") if model.nm else ("detect.py", "val.py")
    LOGGER.info("Run: python %s --weights %s   |   python %s --weights %s --data <data.yaml>", scripts[0], first,
                scripts[1], first)
    return files


def build_parser() -> argparse.ArgumentParser:
    """export.py's flags; parses nothing."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=ROOT / "yolov5s.pt",
                   help="detector or segmenter checkpoint (.pt): ours, or ultralytics/yolov5's (read without running "
                   "it) (default: %(default)s)")
    p.add_argument("--include", nargs="+", default=list(DEFAULT_FORMATS),
                   help=f"formats, any of: {' '.join(FORMATS)} (default: {' '.join(DEFAULT_FORMATS)})")
    p.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640],
                   help="image size: H, or H W; rounded up to the stride (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="batch size of the exported input; any batch with --dynamic (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="device: cpu or a CUDA index such as 0 (default: %(default)s)")
    p.add_argument("--half", action="store_true",
                   help="FP16 export: ONNX/TorchScript on CUDA devices; OpenVINO: an fp16-compressed IR on any device")
    p.add_argument("--dynamic", action="store_true", help="ONNX: dynamic batch, height and width")
    p.add_argument("--simplify", action="store_true", help="ONNX: simplify with onnxsim when installed")
    p.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset version, >= {MIN_OPSET} (default: %(default)s)")
    p.add_argument("--int8", action="store_true", help="also write <name>-int8.onnx (ONNX Runtime) and, with openvino, "
                   "<name>_int8_openvino_model/ (NNCF): static int8 post-training quantization")
    p.add_argument("--int8-format", default="qdq", choices=INT8_FORMATS,
                   help="int8 ONNX operator style: QuantizeLinear/DequantizeLinear pairs (qdq) or QLinear* operators "
                   "(default: %(default)s)")
    p.add_argument("--data", type=Path, default=None,
                   help="data YAML, required by --int8: it calibrates on its train split and scores its val split "
                   "(default: none)")
    p.add_argument("--save-dir", type=Path, default=None,
                   help="folder for the exports (default: beside the weights)")
    p.add_argument("--calib-images", type=int, default=64,
                   help="--int8 calibration images from the train split (default: %(default)s)")
    p.add_argument("--no-map", action="store_true", help="--int8: skip the mAP before/after check on val")
    p.add_argument("--workers", type=int, default=2,
                   help="dataloader workers for the --int8 mAP check (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    return p


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Path]:
    opt = parse_opt(argv)
    set_logging(not opt.quiet)
    return exit_on_user_error(lambda: run(opt))


if __name__ == "__main__":
    main()
