"""Validation NMS: greedy NMS over every candidate against NMS stopped at max_det (`utils.nms.nms_first`).

    python -m benchmarks.nms [--weights best.pt --data data.yaml] [--imgsz 160] [--epochs 12] [--reps 3]

val.py keeps every box above conf 0.001 with every class above it, so a detector early in training
hands NMS thousands of (box, class) rows per image, and on a CPU NMS took longer than the network.
Only the first 300 kept boxes are used, and greedy NMS decides a box by the higher-scored ones alone,
so stopping there keeps the same boxes. This times `non_max_suppression` both ways on the same
predictions, alternating: ms per image, the ratio, and whether every kept box is identical. Without
--weights it trains yolov5n for --epochs on a small synthetic set first (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from benchmarks.train_throughput import _make_data
from engine.trainer import Trainer, TrainOptions
from engine.validate import load_eval_model
from utils import nms as nms_module
from utils.data_config import load_data_config
from utils.dataloaders import create_dataloader

CONF, IOU, MAX_DET = 0.001, 0.6, 300  # val.py's defaults


def full_run(boxes, scores, iou_thres, max_det, use_torchvision=None):
    """NMS over every row, then the first max_det: what `nms_first` replaces."""
    return nms_module.nms(boxes, scores, iou_thres, use_torchvision)[:max_det]


def val_nms(predictions: list[torch.Tensor], stop_early: bool) -> list[list[torch.Tensor]]:
    if stop_early:
        return [nms_module.non_max_suppression(p, CONF, IOU, multi_label=True, max_det=MAX_DET) for p in predictions]
    with mock.patch.object(nms_module, "nms_first", full_run):
        return val_nms(predictions, True)


def predictions(weights: Path, data: Path, imgsz: int) -> tuple[list[torch.Tensor], float]:
    """Decoded val predictions per batch of 32 (letterbox-free, as the pipeline validates), forward ms/image."""
    model = load_eval_model(weights, torch.device("cpu"))
    loader, _ = create_dataloader(load_data_config(data).images("val"), imgsz, 32, 32, scale_mode=True, workers=0)
    batches, seconds = [], 0.0
    with torch.no_grad():
        for imgs, *_ in loader:
            t = time.perf_counter()
            out = model(imgs.float() / 255)
            seconds += time.perf_counter() - t
            batches.append((out[0] if isinstance(out, (tuple, list)) else out).float())
    return batches, 1000 * seconds / sum(len(b) for b in batches)


def ms_per_image(predictions_: list[torch.Tensor], stop_early: bool) -> float:
    t = time.perf_counter()
    val_nms(predictions_, stop_early)
    return 1000 * (time.perf_counter() - t) / sum(len(b) for b in predictions_)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags; parses nothing."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="", help="a detector to time on (default: train yolov5n first)")
    p.add_argument("--data", default="", help="data YAML whose val images it runs on (default: the synthetic set)")
    p.add_argument("--imgsz", type=int, default=160, help="image size in pixels (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=12,
                   help="epochs of the yolov5n trained when no --weights (default: %(default)s, the main job's)")
    p.add_argument("--reps", type=int, default=3, help="timed passes of each way, alternating (default: %(default)s)")
    return p


def main() -> None:
    args = build_parser().parse_args()
    if bool(args.weights) != bool(args.data):
        raise SystemExit("benchmarks.nms: pass --weights and --data together, or neither")
    with tempfile.TemporaryDirectory() as tmp:
        weights, data = Path(args.weights), Path(args.data)
        if not args.weights:
            data = _make_data(Path(tmp) / "synth")
            opt = TrainOptions(cfg="yolov5n.yaml", data=str(data), imgsz=args.imgsz, batch_size=16,
                               epochs=args.epochs, optimizer="Adam", hyp="data/hyps/hyp.cpu-small.yaml", workers=0,
                               project=tmp, name="young", noplots=True, noval=True, quiet=True, scale=True)
            weights = Trainer(opt).train() / "weights" / "last.pt"
        batches, forward_ms = predictions(weights, data, args.imgsz)
    full, early = [], []
    for _ in range(args.reps):
        full.append(ms_per_image(batches, stop_early=False))
        early.append(ms_per_image(batches, stop_early=True))
    same = all(torch.equal(a, b) for a, b in zip(sum(val_nms(batches, False), []), sum(val_nms(batches, True), [])))
    rows = statistics.mean(int(((b[..., 5:] * b[..., 4:5]) > CONF).sum()) / len(b) for b in batches)
    print(f"{weights.name if args.weights else f'yolov5n after {args.epochs} epochs'}, {args.imgsz} px, "
          f"{sum(len(b) for b in batches)} val images, {torch.get_num_threads()} threads; "
          f"{rows:.0f} (box, class) rows per image above conf {CONF}")
    print(f"  forward                     : {forward_ms:6.2f} ms/image")
    print(f"  NMS over every row          : {statistics.median(full):6.2f} ms/image (median of {args.reps})")
    print(f"  NMS stopped at {MAX_DET} kept     : {statistics.median(early):6.2f} ms/image -> "
          f"{statistics.median(full) / statistics.median(early):.2f}x faster; identical boxes: {same}")


if __name__ == "__main__":
    main()
