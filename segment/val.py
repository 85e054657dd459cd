"""Validate a trained YOLOv5-seg model on a dataset split: box and mask P, R, mAP@0.5 and mAP@0.5:0.95.

    python -m segment.val --data <segment data YAML> --weights runs/train-seg/exp/weights/best.pt --imgsz 640

val.py's flags. Masks are scored on the original image's pixels against the label polygons (mask IoU,
COCO's matching); --save-json writes predictions.json with each mask as compressed RLE, which
pycocotools' `segm` evaluation reads. Results go to runs/val-seg/exp<N>/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python segment/val.py`, as YOLOv5 users type it: the repository root is importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.plugins import load_plugins
from engine.validator import ValResult
from utils.cli import exit_on_user_error
from utils.logging import set_logging
from val import build_parser as build_val_parser
from val import run


def build_parser() -> argparse.ArgumentParser:
    """val.py's flags with the segmenter's defaults; parses nothing."""
    return build_val_parser("segment", prog="python -m segment.val", description=__doc__)


def main(argv: list[str] | None = None) -> ValResult:
    exit_on_user_error(load_plugins)
    opt = build_parser().parse_args(argv)
    set_logging(not opt.quiet)
    return exit_on_user_error(lambda: run(opt, "segment"))


if __name__ == "__main__":
    main()
