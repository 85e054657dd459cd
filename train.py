"""Train a YOLOv5 detector (from scratch or from a checkpoint), offline.

    python train.py --data data/synth-defects.yaml --cfg yolov5n.yaml --imgsz 160 --epochs 30
    torchrun --nproc_per_node 2 train.py ...   # DDP (gloo on CPU, nccl on GPU)

D3N teacher (hybrid) models train with --cfg models/yolov5s-d3n.yaml --latents <feature repository>.
Results go to runs/train/exp<N>/.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields
from pathlib import Path

from engine.trainer import StopTraining, Trainer, TrainOptions
from models.yolo import ModelConfigError, load_model_yaml, reads_side_inputs
from utils.checkpoints import CheckpointError, load_checkpoint
from utils.cli import exit_on_user_error
from utils.logging import set_logging

ROOT = Path(__file__).resolve().parent
LOGGER = logging.getLogger("train")


def add_train_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The YOLOv5 training flags (shared with train_distill.py)."""
    p.add_argument("--weights", default="", help="initial weights (detector checkpoint); '' = from scratch")
    p.add_argument("--cfg", default="", help="model YAML (path or name in models/); default: the --weights "
                   "checkpoint's own model, else yolov5s.yaml")
    p.add_argument("--data", default=str(ROOT / "data" / "synth-defects.yaml"), help="data YAML")
    p.add_argument("--hyp", default="", help="hyper-parameter YAML (default data/hyps/hyp.scratch-low.yaml)")
    p.add_argument("--epochs", type=int, default=100, help="total training epochs")
    p.add_argument("--batch-size", type=int, default=16, help="total batch size for all processes")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="train/val image size (pixels)")
    p.add_argument("--rect", action="store_true", help="rectangular training batches")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume a run: path to last.pt, or the newest run")
    p.add_argument("--nosave", action="store_true", help="only save the final checkpoint")
    p.add_argument("--noval", action="store_true", help="only validate after the final epoch")
    p.add_argument("--noautoanchor", action="store_true", help="keep the YAML's anchors")
    p.add_argument("--noplots", action="store_true", help="write no plots")
    p.add_argument("--evolve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cache", nargs="?", const="ram", default=None, choices=["ram"], help="cache images in RAM")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or cpu")
    p.add_argument("--multi-scale", action="store_true", help="vary image size +/- 50%%")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--optimizer", choices=["SGD", "Adam", "AdamW"], default="SGD", help="optimizer")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers (per process under DDP)")
    p.add_argument("--project", default=str(ROOT / "runs" / "train"), help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="reuse an existing project/name")
    p.add_argument("--cos-lr", action="store_true", help="cosine LR schedule")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon")
    p.add_argument("--patience", type=int, default=100, help="early stopping patience (epochs without improvement)")
    p.add_argument("--freeze", nargs="+", type=int, default=[], help="freeze layers, e.g. --freeze 0 1 2")
    p.add_argument("--save-period", type=int, default=-1, help="save a checkpoint every x epochs (disabled if < 1)")
    p.add_argument("--seed", type=int, default=0, help="global training seed")
    p.add_argument("--scale", action="store_true", help="letterbox-free: stretch images to imgsz x imgsz (D3N paper)")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    return p


def resolve_resume(resume, project: str) -> str:
    """--resume with no path takes the newest last.pt under the project."""
    if resume is True:
        candidates = sorted(Path(project).glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise SystemExit(f"error: --resume: no last.pt found under {project}")
        return str(candidates[-1])
    return str(resume) if resume else ""


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """Flags -> TrainOptions; with --resume the run's saved options are restored (device/workers may change)."""
    if args.evolve:
        raise SystemExit("error: --evolve (hyper-parameter evolution) is not supported; tune the hyp YAML instead")
    resume = resolve_resume(args.resume, args.project)
    values = {f.name: getattr(args, f.name) for f in fields(TrainOptions) if hasattr(args, f.name)}
    if not values.get("cfg") and not values.get("weights"):
        values["cfg"] = TrainOptions.cfg  # yolov5s, when neither --cfg nor --weights names a model
    if resume:
        saved = load_checkpoint(resume, expect="detector").get("train_opts") or {}
        if not saved:
            raise SystemExit(f"error: {resume}: has no training state to resume (a stripped final checkpoint?)")
        values = {**saved, "device": args.device, "workers": args.workers, "quiet": args.quiet}
    values["resume"] = resume
    return TrainOptions(**values)


def run_training(opt: TrainOptions, task=None) -> Path:
    """Train and return the run directory; user errors become one-line exits."""
    return exit_on_user_error(lambda: Trainer(opt, task).train(), extra=(StopTraining,))


def model_reads_side_inputs(opt: TrainOptions) -> bool:
    """Whether the model to train (--cfg, else the --weights checkpoint's) has SideInput rows (a D3N teacher).

    Unreadable YAMLs and checkpoints are left for the trainer to report.
    """
    try:
        d = load_model_yaml(opt.cfg)[0] if opt.cfg else load_checkpoint(opt.weights, expect="detector")["model_yaml"]
        return reads_side_inputs(d)
    except (ModelConfigError, CheckpointError, KeyError, AttributeError):
        return False


def teacher_task(opt: TrainOptions):
    """The D3N hybrid task when the run has a feature repository; the plug-in is imported only then."""
    if "teacher" in opt.extra:
        raise SystemExit(f"error: {opt.resume or 'this run'}: a distillation run; resume it with train_distill.py")
    latents = opt.extra.get("latents")
    if not latents:
        if not opt.resume and model_reads_side_inputs(opt):
            raise SystemExit(f"error: {opt.cfg or opt.weights}: this model reads side inputs (a D3N teacher): "
                             "pass --latents <repository>")
        return None
    from d3n_ext.fusion.task import D3NTask

    try:
        return D3NTask(latents, plots=not opt.noplots)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    parser = add_train_flags(argparse.ArgumentParser(description=__doc__,
                                                     formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--latents", default="", help="feature repository (extract_features.py) read by a D3N "
                        "model YAML: trains the hybrid teacher")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_opt(argv)
    set_logging(not args.quiet)
    if args.latents and not args.resume:
        args.extra = {"latents": args.latents}
        if not args.scale:
            LOGGER.warning("WARNING: the latents describe the whole stretched image: turning on --scale")
            args.scale = True
    opt = exit_on_user_error(lambda: options_from_args(args))
    if args.latents and opt.resume:
        opt.extra = {**opt.extra, "latents": args.latents}  # the repository may have moved since
    return run_training(opt, teacher_task(opt))


if __name__ == "__main__":
    main()
