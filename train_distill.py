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
import logging
from pathlib import Path

from models.yolo import reads_side_inputs
from train import add_train_flags, options_from_args, run_training
from utils.checkpoints import CheckpointError, load_checkpoint
from utils.cli import exit_on_user_error
from utils.logging import set_logging

ROOT = Path(__file__).resolve().parent
LOGGER = logging.getLogger("train_distill")


def add_distill_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--teacher", default="", help="teacher checkpoint: a hybrid (train.py --latents ...) or a plain YOLOv5")
    p.add_argument("--latents", default="", help="feature repository the teacher reads (default: the teacher's own)")
    p.add_argument("--dist-lambda", type=float, default=1.0, help="weight lambda of the distillation terms (eq. 7)")
    p.add_argument("--dist-loss", choices=["l2", "kl"], default="l2", help="distance: l2 (paper) or kl on classes")
    p.add_argument("--temperature", type=float, default=20.0, help="softening temperature; used by --dist-loss kl only")
    p.add_argument("--obj-scaled", action="store_true", help="also scale the objectness term by the teacher's objectness")
    p.add_argument("--dist-feat", type=float, default=0.0,
                   help="weight of feature-level distillation of the maps Detect reads (0 = outputs only)")
    return p


def teacher_repository(teacher: str) -> str:
    """The repository a hybrid teacher was trained with, as recorded in its checkpoint; '' for a plain YOLOv5."""
    try:
        ckpt = load_checkpoint(teacher, expect="detector")
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    if not reads_side_inputs(ckpt.get("model_yaml") or {}):
        return ""  # a plain teacher: self-distillation, no latents
    repo = (ckpt.get("task") or {}).get("repository") or ""
    if not repo:
        raise SystemExit(f"error: {teacher}: records no feature repository; pass --latents")
    return str(repo)


def distill_extra(args: argparse.Namespace) -> dict:
    if not args.teacher:
        raise SystemExit("error: --teacher is required (a hybrid D3N checkpoint)")
    latents = args.latents or teacher_repository(args.teacher)
    return {"teacher": args.teacher, "latents": latents, "dist_lambda": args.dist_lambda,
            "dist_loss": args.dist_loss, "temperature": args.temperature, "obj_scaled": args.obj_scaled,
            "dist_feat": args.dist_feat}


def main(argv: list[str] | None = None) -> Path:
    parser = add_distill_flags(add_train_flags(argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)))
    parser.set_defaults(project=str(ROOT / "runs" / "distill"))
    args = parser.parse_args(argv)
    set_logging(not args.quiet)
    if not args.resume:
        args.extra = distill_extra(args)
        if args.extra["latents"] and not args.scale:
            LOGGER.warning("WARNING: the teacher reads latents of the stretched image: turning on --scale")
            args.scale = True
    opt = exit_on_user_error(lambda: options_from_args(args))
    from d3n_ext.distill import DistillationTask, DistillOptions  # the plug-in joins here, not in the core

    try:
        options = DistillOptions(**opt.extra)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    return run_training(opt, DistillationTask(options))


if __name__ == "__main__":
    main()
