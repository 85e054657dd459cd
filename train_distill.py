"""Distil a hybrid D3N teacher into a plain YOLOv5 student (paper III-D, eqs. 6-7).

    python train_distill.py --teacher runs/train/teacher/weights/best.pt --latents runs/features/exp \
        --cfg yolov5n.yaml --data data/synth-defects.yaml --imgsz 256 --scale --epochs 30
    python train_distill.py --teacher runs/train/exp/weights/best.pt --cfg yolov5n.yaml ...   # self-distillation

A plain YOLOv5 teacher (no latents) is the self-distillation control: the same terms, no DDPM.

The student trains on ground truth plus the frozen teacher's predictions on the same augmented
batch (the teacher reads that batch's latents); it is saved as an ordinary YOLOv5 checkpoint that
val.py and detect.py load without a DDPM, a VAE or latents. Every train.py flag works here too
(--resume, torchrun DDP, ...). Results go to runs/distill/exp<N>/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.plugins import add_plugin_flags, load_plugins
from train import add_train_flags, parse_train_args, run_or_evolve, task_for
from utils.cli import exit_on_user_error
from utils.logging import set_logging

ROOT = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    """train.py's flags (saving to runs/distill) and the plug-in's distillation flags; parses nothing."""
    parser = add_train_flags(argparse.ArgumentParser(description=__doc__,
                                                     formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.set_defaults(project=str(ROOT / "runs" / "distill"))
    return add_plugin_flags(parser, "distill")


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    return parse_train_args(build_parser(), argv)


def main(argv: list[str] | None = None) -> Path:
    exit_on_user_error(load_plugins)
    args = parse_opt(argv)
    set_logging(not args.quiet)
    opt, task = exit_on_user_error(lambda: task_for(args, "distill"))
    return run_or_evolve(args, opt, task)


if __name__ == "__main__":
    main()
