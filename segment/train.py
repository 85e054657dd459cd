"""Train a YOLOv5 instance segmenter (YOLOv5-seg) on polygon labels, offline, with the shared trainer.

    python -m segment.train --data <segment data YAML> --cfg yolov5n-seg.yaml --imgsz 160 --epochs 30
    python -m segment.train --data <segment data YAML> --cfg yolov5n-seg-d3n-gated.yaml --latents <repository>

train.py's flags, plus --mask-ratio and --no-overlap. Labels are YOLOv5 segment rows (`class x1 y1 ... xn yn`,
normalised). Each epoch scores boxes and masks (fitness: both, as YOLOv5-seg). A D3N segmentation YAML with
--latents trains the hybrid segmentation teacher (paper Table IV). Results go to runs/train-seg/exp<N>/.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python segment/train.py`, as YOLOv5 users type it: the repository root is importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

from engine.plugins import add_plugin_flags, load_plugins
from train import ROOT, add_train_flags, parse_train_args, run_or_evolve, task_for
from utils.cli import exit_on_user_error
from utils.logging import set_logging

DEFAULT_CFG = "yolov5s-seg.yaml"


def build_parser() -> argparse.ArgumentParser:
    """train.py's flags (saving to runs/train-seg), the mask flags and the plug-ins'; parses nothing."""
    parser = add_train_flags(argparse.ArgumentParser(prog="python -m segment.train", description=__doc__,
                                                     formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.set_defaults(project=str(ROOT / "runs" / "train-seg"))
    parser.add_argument("--mask-ratio", type=int, default=4,
                        help="masks at 1/mask-ratio of the input size (default: %(default)s)")
    parser.add_argument("--no-overlap", action="store_true", help="one mask per object instead of YOLOv5's "
                        "overlapping instance map per image")
    return add_plugin_flags(parser, "segment")


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    args = parse_train_args(build_parser(), argv)
    if not args.resume and not args.cfg and not args.weights:
        args.cfg = DEFAULT_CFG
    return args


def main(argv: list[str] | None = None) -> Path:
    exit_on_user_error(load_plugins)
    args = parse_opt(argv)
    set_logging(not args.quiet)
    opt, task = exit_on_user_error(lambda: task_for(args, "segment"))
    return run_or_evolve(args, opt, task)


if __name__ == "__main__":
    main()
