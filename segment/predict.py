"""Run a trained YOLOv5-seg model on images, directories, globs, .txt lists or videos: boxes and masks.

    python -m segment.predict --weights runs/train-seg/exp/weights/best.pt --source data/images

detect.py's flags. Masks are painted under the boxes on the saved images; --save-txt writes YOLOv5
segment rows (`class x1 y1 ... xn yn [conf]`, normalised polygons). Results go to runs/predict-seg/exp<N>/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python segment/predict.py`, as YOLOv5 users type it: the repository root is importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detect import build_parser as build_detect_parser
from detect import run
from engine.plugins import load_plugins
from utils.cli import exit_on_user_error
from utils.logging import set_logging


def build_parser() -> argparse.ArgumentParser:
    """detect.py's flags with the segmenter's defaults; parses nothing."""
    return build_detect_parser("segment", prog="python -m segment.predict", description=__doc__)


def main(argv: list[str] | None = None) -> Path:
    exit_on_user_error(load_plugins)
    opt = build_parser().parse_args(argv)
    set_logging(not opt.quiet)
    return exit_on_user_error(lambda: run(opt, "segment"))


if __name__ == "__main__":
    main()
