"""Sliced inference against whole-image inference on large frames with small defects, in one run.

    python -m benchmarks.tiling --weights runs/pipeline/exp/student/weights/best.pt \
        [--data data/synth-large.yaml] [--imgsz 640] [--tile 640] [--tile-overlap 0.2] [--tile-merge nms]

Both modes go through the same predictor and the same scoring (val.py --tile's): "whole image" is
the frame shrunk to --imgsz alone, "tiled" adds the overlapping --tile windows at full resolution.
Prints P, R (at IoU 0.5, at the confidence of best F1, as val.py), mAP@0.5 and ms per frame for
each, and the ratios: the recall bought and what it costs.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from PIL import Image

from engine.predictor import PredictOptions
from engine.validate import ValidationRun, load_eval_model, validate_tiled
from engine.validator import ValOptions, ValResult
from utils.data_config import DataConfig, load_data_config
from utils.logging import quieter
from utils.torch_utils import select_device


def score(model: torch.nn.Module, data: DataConfig, args: argparse.Namespace, tile: int) -> ValResult:
    """val.py --tile's scoring of every val frame; a tile as large as the frame means the whole image only."""
    run = ValidationRun(args.weights, args.data, "val", args.imgsz, 1, workers=0)
    options = ValOptions(plots=False)
    tiling = PredictOptions(args.imgsz, options.conf_thres, options.iou_thres, tile=tile,
                            tile_overlap=args.tile_overlap, tile_merge=args.tile_merge)
    with quieter("engine.validator", "engine.validate"):
        return validate_tiled(run, options, tiling, model, data)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags; parses nothing."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True, help="trained detector (.pt or an export)")
    ap.add_argument("--data", type=Path, default=Path("data/synth-large.yaml"),
                    help="data YAML of large frames, val split scored (default: %(default)s)")
    ap.add_argument("--imgsz", type=int, default=640, help="input size of the whole-image pass (default: %(default)s)")
    ap.add_argument("--tile", type=int, default=640, help="window side in the frame's pixels (default: %(default)s)")
    ap.add_argument("--tile-overlap", type=float, default=0.2,
                    help="overlap of neighbouring windows, as a share of a tile (default: %(default)s)")
    ap.add_argument("--tile-merge", default="nms", choices=("nms", "nmm"),
                    help="merge duplicates across windows by NMS, or nmm: join boxes a window border cut "
                         "(default: %(default)s)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch CPU threads (default: torch's, here %(default)s)")
    return ap


def main(argv: list[str] | None = None) -> dict[str, ValResult]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    data = load_data_config(args.data)
    model = load_eval_model(args.weights, select_device("cpu"))
    largest = max(max(h, w) for h, w in (read_shape(p) for p in data.images("val")))
    with torch.inference_mode():  # first-call set-up is not charged to whichever mode runs first
        model(torch.zeros(1, 3, args.imgsz, args.imgsz))
    results = {"whole image": score(model, data, args, largest),
               f"tiled ({args.tile} px)": score(model, data, args, args.tile)}
    frames = next(iter(results.values())).seen
    print(f"\n{args.weights} on {frames} frames of {args.data} val (frames up to {largest} px); whole image at "
          f"{args.imgsz}; tiles {args.tile} px, overlap {args.tile_overlap}, merge {args.tile_merge}; "
          f"{args.threads} threads\n")
    print("| inference | P | R | mAP@0.5 | ms/frame |\n|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r.mp:.3f} | {r.mr:.3f} | {r.map50:.3f} | {sum(r.speed):.0f} |")
    whole, tiled = results.values()
    print(f"\nrecall {whole.mr:.3f} -> {tiled.mr:.3f} ({tiled.mr - whole.mr:+.3f}) for "
          f"{sum(tiled.speed) / max(sum(whole.speed), 1e-9):.1f}x the time per frame")
    return results


def read_shape(path: Path) -> tuple[int, int]:
    """(h, w) of an image file without decoding its pixels."""
    with Image.open(path) as im:
        return im.height, im.width


if __name__ == "__main__":
    main()
