"""Every deployment format side by side, as YOLOv5's benchmarks.py: mAP@0.5 on val and median CPU ms at
batch 1, with ratios to PyTorch fp32, all measured in one run on one machine.

    python -m benchmarks.deploy --weights runs/pipeline/exp/student/weights/best.pt --data data/synth-defects.yaml \
        --imgsz 256 [--speed-cfg yolov5s.yaml --speed-imgsz 640] [--runs 20] [--threads 2]

Accuracy is the trained `--weights` at `--imgsz` (letterbox, val.py's scoring); speed is a random-weight
`--speed-cfg` model at `--speed-imgsz` (yolov5s@640: the figures YOLOv5 users compare), so a tiny
trained student does not hide what a format costs at full size. Formats: PyTorch fp32 (fused,
channels-last), PyTorch bf16 autocast, ONNX Runtime fp32 and int8 (QDQ), OpenVINO fp32 and int8 (NNCF;
skipped with a note when openvino/nncf are not installed). int8 models are calibrated on --calib-images
of the data YAML's train split. Each format is timed in its own block (thread pools do not interleave).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import tempfile
from pathlib import Path

import torch

import export
from deploy.backends import load_backend
from engine.validate import ValidationRun, validate
from engine.validator import ValOptions
from models.loading import save_model
from models.yolo import Model
from utils.data_config import load_data_config
from utils.logging import quieter
from utils.profiling import cpu_latency_ms

FORMATS = ("PyTorch fp32", "PyTorch bf16 autocast", "ONNX Runtime fp32", "ONNX Runtime int8",
           "OpenVINO fp32", "OpenVINO int8")


class Autocast(torch.nn.Module):
    """A model run under CPU bf16 autocast, as `--half` does on a CPU."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x)


def exports(weights: Path, imgsz: int, data: Path, calib: int, workdir: Path, openvino: bool) -> dict[str, Path]:
    """Every format's file for `weights` at `imgsz` (dynamic shapes, so val.py's rectangles run), in workdir."""
    local = workdir / weights.name
    if local.resolve() != weights.resolve():
        shutil.copyfile(weights, local)
    include = ["onnx", "openvino"] if openvino else ["onnx"]
    files = export.main(["--weights", str(local), "--imgsz", str(imgsz), "--include", *include, "--dynamic",
                         "--int8", "--data", str(data), "--calib-images", str(calib), "--no-map", "--quiet"])
    out = {"ONNX Runtime fp32": files["onnx"], "ONNX Runtime int8": files["int8"]}
    if openvino:
        out.update({"OpenVINO fp32": files["openvino"], "OpenVINO int8": files["openvino_int8"]})
    return out


def load(fmt: str, weights: Path, files: dict[str, Path]) -> torch.nn.Module:
    if fmt.startswith("PyTorch"):
        model = load_backend(weights)
        return Autocast(model) if "bf16" in fmt else model
    return load_backend(files[fmt])


def score(model: torch.nn.Module, weights: Path, data: Path, imgsz: int, bf16: bool) -> float:
    """mAP@0.5 on val as val.py computes it (letterbox, rect batches)."""
    base = model.model if isinstance(model, Autocast) else model
    run = ValidationRun(weights, data, "val", imgsz, 16, workers=2)
    with quieter("engine.validator"):
        return validate(run, ValOptions(plots=False, half=bf16), model=base).map50


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags; parses nothing."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True, help="trained checkpoint scored for accuracy")
    ap.add_argument("--data", type=Path, required=True, help="data YAML: val split scored, train split calibrates")
    ap.add_argument("--imgsz", type=int, default=640,
                    help="size the accuracy model is scored at (default: %(default)s)")
    ap.add_argument("--speed-cfg", default="yolov5s.yaml",
                    help="random-weight model timed for speed (default: %(default)s)")
    ap.add_argument("--speed-imgsz", type=int, default=640,
                    help="size the speed model is timed at (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per format, median (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="CPU threads of every runtime (default: torch's, here %(default)s)")
    ap.add_argument("--calib-images", type=int, default=64,
                    help="int8 calibration images from the train split (default: %(default)s)")
    return ap


def main(argv: list[str] | None = None) -> dict[str, dict]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    data = load_data_config(args.data)
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
        openvino_ok = True
    except ImportError:
        openvino_ok = False
        print("OpenVINO rows skipped: pip install openvino nncf")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="deploy-bench-") as tmp:
        speed_model = Model(args.speed_cfg, nc=len(data.names))
        speed_model.names = list(data.names)
        speed_weights = Path(tmp) / "speed" / "speed.pt"
        speed_weights.parent.mkdir()
        save_model(speed_weights, speed_model)
        acc_dir, speed_dir = Path(tmp) / "acc", speed_weights.parent
        acc_dir.mkdir()
        acc_files = exports(args.weights, args.imgsz, args.data, args.calib_images, acc_dir, openvino_ok)
        speed_files = exports(speed_weights, args.speed_imgsz, args.data, args.calib_images, speed_dir, openvino_ok)
        x = torch.rand(1, 3, args.speed_imgsz, args.speed_imgsz, generator=torch.Generator().manual_seed(0))
        for fmt in FORMATS:
            if fmt.startswith("OpenVINO") and not openvino_ok:
                continue
            timed = load(fmt, speed_weights, speed_files)
            ms = cpu_latency_ms(timed, (x,), runs=args.runs)
            acc_weights = args.weights if fmt.startswith("PyTorch") else acc_files[fmt]
            map50 = score(load(fmt, args.weights, acc_files), acc_weights, args.data, args.imgsz, "bf16" in fmt)
            results[fmt] = {"mAP@0.5": map50, "ms": ms}
            print(f"{fmt:24s} mAP@0.5 {map50:.4f}   {ms:7.1f} ms", flush=True)
    base = results["PyTorch fp32"]
    print(f"\n{args.speed_cfg} @ {args.speed_imgsz} for speed ({args.runs} runs, median, {args.threads} threads); "
          f"{args.weights} @ {args.imgsz} for mAP@0.5 on {args.data} val\n")
    print("| format | mAP@0.5 | Δ vs PyTorch fp32 (points) | ms | × PyTorch fp32 |\n|---|---:|---:|---:|---:|")
    for fmt, r in results.items():
        print(f"| {fmt} | {r['mAP@0.5']:.3f} | {100 * (r['mAP@0.5'] - base['mAP@0.5']):+.1f} | {r['ms']:.1f} | "
              f"{r['ms'] / base['ms']:.2f} |")
    fastest = min((f for f, r in results.items() if base["mAP@0.5"] - r["mAP@0.5"] <= 0.01), key=lambda f: results[f]["ms"])
    print(f"\nFastest format within 1 point of PyTorch fp32 here: {fastest}")
    return results


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
