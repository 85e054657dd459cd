"""Train a YOLOv5 instance segmenter (YOLOv5-seg) on polygon labels, offline, with the shared trainer.

    python -m segment.train --data <segment data YAML> --cfg yolov5n-seg.yaml --imgsz 160 --epochs 30

train.py's flags, plus --mask-ratio and --no-overlap. Labels are YOLOv5 segment rows (`class x1 y1 ... xn yn`,
normalised). Per-epoch validation scores the boxes (mask metrics come with the segmentation validator).
Results go to runs/train-seg/exp<N>/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.plugins import load_plugins
from engine.tasks import SegmentationTask, task_from_state
from train import ROOT, add_train_flags, options_from_args, run_training
from utils.cli import exit_on_user_error
from utils.logging import set_logging

DEFAULT_CFG = "yolov5s-seg.yaml"


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    parser = add_train_flags(argparse.ArgumentParser(prog="python -m segment.train", description=__doc__,
                                                     formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.set_defaults(project=str(ROOT / "runs" / "train-seg"))
    parser.add_argument("--mask-ratio", type=int, default=4, help="masks at 1/mask-ratio of the input size")
    parser.add_argument("--no-overlap", action="store_true", help="one mask per object instead of YOLOv5's "
                        "overlapping instance map per image")
    return parser.parse_args(argv)


def task_for(args: argparse.Namespace):
    """(options, SegmentationTask): from the flags, or rebuilt from the checkpoint on --resume."""
    if args.resume:
        opt = options_from_args(args)
        if opt.task != SegmentationTask.kind:
            raise ValueError(f"{opt.resume}: a {opt.task!r} run, not a segmentation one; resume it with train.py")
        return opt, task_from_state(opt.task, opt.task_state, args, source=opt.resume)
    if not args.cfg and not args.weights:
        args.cfg = DEFAULT_CFG
    return options_from_args(args), SegmentationTask(args.mask_ratio, overlap=not args.no_overlap)


def main(argv: list[str] | None = None) -> Path:
    exit_on_user_error(load_plugins)
    args = parse_opt(argv)
    set_logging(not args.quiet)
    opt, task = exit_on_user_error(lambda: task_for(args))
    return run_training(opt, task)


if __name__ == "__main__":
    main()
