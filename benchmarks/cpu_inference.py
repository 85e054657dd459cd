"""CPU inference of the deployable detector, batch 1: PyTorch fp32 (fused, inference_mode), PyTorch bf16
autocast, ONNX Runtime fp32 (static and dynamic shapes) and int8 (QDQ and QOperator), median of --runs
after warm-up. Each back-end is timed in its own block, in two rounds, so load drifting on a shared
machine hits them all alike (round-robin would let one thread pool's spinning slow the next).

    python -m benchmarks.cpu_inference [--cfg yolov5s.yaml] [--imgsz 640] [--runs 20] [--threads 2]
    python -m benchmarks.cpu_inference --weights runs/train/exp/weights/best.pt --acc-imgsz 160
    python -m benchmarks.cpu_inference --reference   # + ultralytics/yolov5 timed in the same run

Speed uses random weights of --cfg (nc 80, as the ultralytics/yolov5 figures this is compared with);
int8 models are calibrated on --calib images of the data YAML's train split. With --weights (a trained
checkpoint) it also prints mAP@0.5 of PyTorch, ONNX Runtime fp32 and int8 on the val split, and how
many fp32 detections on data/images bf16 and int8 keep (same class, IoU >= 0.9).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

import export
from benchmarks.reference_yolov5 import INSTALL_HINT, export_reference_onnx, quietly, reference_model
from deploy.backends import load_backend, onnx_session
from deploy.quantize import INT8_FORMATS, calibration_files, quantize_onnx
from engine.validate import evaluate
from engine.predictor import PredictOptions, Predictor
from models.loading import save_model
from models.yolo import Model
from utils.augmentations import letterbox
from utils.boxes import box_iou
from utils.data_config import load_data_config
from utils.sources import resolve_source

ROOT = Path(__file__).resolve().parents[1]
# ultralytics/yolov5 on the 2-core machine of FACTS.md (Xeon, AMX); other CPUs: compare with --reference
TARGETS_MS = {"PyTorch fp32 fused": 104.0, "PyTorch bf16 autocast": 70.0, "ONNX Runtime fp32": 58.0}
REFERENCE_PAIRS = {"PyTorch fp32 fused": "ultralytics/yolov5 fp32 fused",
                   "PyTorch bf16 autocast": "ultralytics/yolov5 bf16 autocast",
                   "ONNX Runtime fp32": "ultralytics/yolov5 ONNX Runtime fp32"}


def export_onnx(weights: Path, imgsz: int, dynamic: bool) -> Path:
    flags = ["--weights", str(weights), "--include", "onnx", "--imgsz", str(imgsz), "--quiet"]
    path = export.main(flags + (["--dynamic"] if dynamic else []))["onnx"]
    return path.rename(path.with_name(f"{path.stem}-{'dynamic' if dynamic else 'static'}.onnx"))


def quantized(onnx_path: Path, calib: list[Path]) -> dict[str, Path]:
    return {fmt: quantize_onnx(onnx_path, onnx_path.with_name(f"{onnx_path.stem}-{fmt}.onnx"), calib, fmt)
            for fmt in INT8_FORMATS}


def sample_input(imgsz: int) -> torch.Tensor:
    """data/images' first picture letterboxed to imgsz x imgsz: (1, 3, imgsz, imgsz) in 0-1."""
    im = letterbox(cv2.imread(str(resolve_source(ROOT / "data" / "images")[0])), imgsz, auto=False)[0]
    return torch.from_numpy(np.ascontiguousarray(im[..., ::-1].transpose(2, 0, 1)))[None].float() / 255


def torch_runners(model: torch.nn.Module, x: torch.Tensor, label: str) -> dict[str, Callable[[], object]]:
    def fp32():
        with torch.inference_mode():
            return model(x)

    def bf16():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)

    return {f"{label} fp32 fused": fp32, f"{label} bf16 autocast": bf16}


def ort_runner(path: Path, x: torch.Tensor) -> Callable[[], object]:
    session, feed = onnx_session(path, torch.device("cpu"), None)[0], {"images": x.numpy()}
    return lambda: session.run(None, feed)


def reference_runners(cfg: str, x: torch.Tensor, tmp: Path) -> dict[str, Callable[[], object]]:
    """ultralytics/yolov5 on the same input, fused, as its detect.py runs it, and its ONNX export under
    the same ONNX Runtime settings as ours (empty when the reference is not installed)."""
    torch.manual_seed(0)
    model = reference_model(cfg)
    if model is None:
        print(INSTALL_HINT)
        return {}
    model = quietly(model.eval().fuse)
    onnx = export_reference_onnx(model, x, tmp / "reference.onnx")
    return {**torch_runners(model, x, "ultralytics/yolov5"), "ultralytics/yolov5 ONNX Runtime fp32": ort_runner(onnx, x)}


def runners(weights: Path, onnx: dict[str, Path], x: torch.Tensor) -> dict[str, Callable[[], object]]:
    model = load_backend(weights)  # fused, channels-last: what detect.py and val.py run

    return {**torch_runners(model, x, "PyTorch"),
            **{f"ONNX Runtime {name}": ort_runner(path, x) for name, path in onnx.items()}}


def wait_for_quiet(max_load: float | None, patience_s: float = 1200) -> str:
    """On a shared machine, wait (up to patience_s) for the 1-minute load average to drop below max_load."""
    deadline = time.monotonic() + patience_s
    while max_load is not None and os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        time.sleep(10)
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def time_ms(fns: dict[str, Callable[[], object]], runs: int, rounds: int = 2,
            warmup: int = 3, pause_s: float = 1.0) -> dict[str, tuple[list, list]]:
    """Per back-end (wall ms, process CPU ms) of each run.

    Each back-end runs in a block of its own (PyTorch's OpenMP threads and ONNX Runtime's pool both spin
    for a while after a run and would slow whichever runs next), and the blocks repeat `rounds` times,
    so load drifting on a shared machine hits every back-end alike. CPU time counts every thread of this
    process: with one thread it is what a run costs on an idle core, which load barely moves.
    """
    times: dict[str, tuple[list, list]] = {name: ([], []) for name in fns}
    per_round = [runs // rounds + (r < runs % rounds) for r in range(rounds)]
    for n in per_round:
        for name, fn in fns.items():
            time.sleep(pause_s)  # let the previous back-end's spinning threads go to sleep
            for _ in range(warmup):
                fn()
            for _ in range(n):
                t, c = time.perf_counter(), time.process_time()
                fn()
                times[name][0].append(1e3 * (time.perf_counter() - t))
                times[name][1].append(1e3 * (time.process_time() - c))
    return times


def speed(opt: argparse.Namespace, tmp: Path) -> None:
    torch.manual_seed(0)
    weights = tmp / Path(opt.cfg).with_suffix(".pt").name
    save_model(weights, Model(opt.cfg))
    static, dynamic = export_onnx(weights, opt.imgsz, False), export_onnx(weights, opt.imgsz, True)
    calib = calibration_files(load_data_config(opt.data).images("train"), opt.calib)
    int8 = {f"int8 {k}": v for k, v in quantized(static, calib).items()}
    onnx = {"fp32": static, "fp32 dynamic": dynamic, **int8}
    x = sample_input(opt.imgsz)
    fns = {**runners(weights, onnx, x), **(reference_runners(opt.cfg, x, tmp) if opt.reference else {})}
    load = wait_for_quiet(opt.wait_load)
    times = time_ms(fns, opt.runs)
    print(f"\n{Path(opt.cfg).stem} at {opt.imgsz}, batch 1, {opt.threads} threads, random weights, "
          f"{opt.runs} runs (load average when timing began: {load}, after: {wait_for_quiet(None)})")
    print(f"  {'':38s} {'median ms':>10s} {'min ms':>8s} {'speed-up':>9s} {'CPU ms':>8s}")
    ref = statistics.median(times["PyTorch fp32 fused"][0])
    for name, (wall, cpu) in times.items():
        med = statistics.median(wall)
        print(f"  {name:38s} {med:10.1f} {min(wall):8.1f} {ref / med:8.2f}x {statistics.median(cpu):8.1f}")
    medians = {name: statistics.median(wall) for name, (wall, _) in times.items()}
    for name, target in TARGETS_MS.items():
        verdict = "met" if medians[name] <= target else "NOT met"
        print(f"  target {name} <= {target:.0f} ms (figure from the FACTS.md machine): {verdict}")
    for ours, theirs in REFERENCE_PAIRS.items():
        if theirs in medians:
            print(f"  same run: {ours} {medians[ours]:.1f} ms vs {theirs} {medians[theirs]:.1f} ms "
                  f"= {medians[theirs] / medians[ours]:.2f}x the reference's speed")


def kept_detections(reference: Predictor, other: Predictor, images: list[Path]) -> tuple[int, int]:
    """(reference detections with a same-class partner at IoU >= 0.9 in `other`, reference detections)."""
    kept = total = 0
    for path in images:
        im = cv2.imread(str(path))
        a, b = reference(im), other(im)
        total += len(a)
        if len(a) and len(b):
            same = (box_iou(a[:, :4], b[:, :4]) >= 0.9) & (a[:, None, 5] == b[None, :, 5])
            kept += int(same.any(1).sum())
    return kept, total


def accuracy(opt: argparse.Namespace, tmp: Path) -> None:
    weights = Path(shutil.copy(opt.weights, tmp / "trained.pt"))
    data = load_data_config(opt.data)
    dynamic = export_onnx(weights, opt.acc_imgsz, True)
    int8 = quantized(dynamic, calibration_files(data.images("train"), opt.calib))
    print(f"\n{opt.weights} on {data.yaml_path.name} val at {opt.acc_imgsz} (rect batches, conf 0.001, IoU 0.6)")
    results = {"PyTorch fp32": weights, "ONNX Runtime fp32": dynamic,
               **{f"ONNX Runtime int8 {k}": v for k, v in int8.items()}}
    base = None
    for name, path in results.items():
        r = evaluate(path, data, opt.acc_imgsz, workers=opt.workers)
        base = r.map50 if base is None else base
        print(f"  {name:32s} mAP@0.5 {r.map50:.4f}  mAP@0.5:0.95 {r.map:.4f}  ({100 * (r.map50 - base):+.2f} points)")
    images = resolve_source(ROOT / "data" / "images")
    options, bf16 = PredictOptions(imgsz=opt.acc_imgsz), PredictOptions(imgsz=opt.acc_imgsz, half=True)
    fp32 = Predictor(load_backend(weights), options)
    others = {"PyTorch bf16 autocast": Predictor(load_backend(weights), bf16),
              **{f"ONNX Runtime int8 {k}": Predictor(load_backend(v), options) for k, v in int8.items()}}
    for name, predictor in others.items():
        kept, total = kept_detections(fp32, predictor, images)
        print(f"  {name:32s} keeps {kept}/{total} fp32 detections on data/images (conf 0.25, same class, IoU >= 0.9)")


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags; parses nothing."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="yolov5s.yaml", help="model YAML timed with random weights (default: %(default)s)")
    p.add_argument("--imgsz", type=int, default=640, help="timing input size, square (default: %(default)s)")
    p.add_argument("--runs", type=int, default=20,
                   help="timed runs per back-end, median reported (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="threads for PyTorch and ONNX Runtime (default: %(default)s)")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "synth-defects.yaml",
                   help="calibration / val data YAML (default: %(default)s)")
    p.add_argument("--calib", type=int, default=64,
                   help="int8 calibration images from the train split (default: %(default)s)")
    p.add_argument("--weights", type=Path, default=None,
                   help="trained checkpoint for the accuracy comparison (default: none, speed only)")
    p.add_argument("--acc-imgsz", type=int, default=160,
                   help="image size of the accuracy comparison (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="dataloader workers for mAP (default: %(default)s)")
    p.add_argument("--skip-speed", action="store_true", help="only the accuracy comparison")
    p.add_argument("--reference", action="store_true",
                   help="also time ultralytics/yolov5's own model in the same run (see benchmarks/reference_yolov5.py)")
    p.add_argument("--wait-load", type=float, default=None,
                   help="shared machines: wait (up to 20 min) for the 1-min load average to drop below this "
                        "(default: off, start at once)")
    return p


def parse_opt() -> argparse.Namespace:
    return build_parser().parse_args()


def main() -> None:
    opt = parse_opt()
    torch.set_num_threads(opt.threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {wait_for_quiet(None)}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')}")
    with tempfile.TemporaryDirectory(prefix="cpu-bench-") as tmp:
        if not opt.skip_speed:
            speed(opt, Path(tmp))
        if opt.weights is not None:
            accuracy(opt, Path(tmp))
        else:
            print("\nno --weights: random-weight speed only (pass a trained checkpoint for mAP fp32 vs int8)")
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
