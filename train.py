"""Train a YOLOv5 detector (from scratch or from a checkpoint), offline.

    python train.py --data data/synth-defects.yaml --cfg yolov5n.yaml --imgsz 160 --epochs 30
    torchrun --nproc_per_node 2 train.py ...   # DDP (gloo on CPU, nccl on GPU)

Models that read side inputs take their plug-in's flags (plugins.yaml; e.g. D3N's hybrid teacher:
--cfg models/yolov5s-d3n.yaml --latents <feature repository>). Results go to runs/train/exp<N>/.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields
from pathlib import Path

from engine.plugins import add_plugin_flags, apply_input_rules, load_plugins
from models.loading import read_detector_checkpoint
from models.yolo import ModelConfigError, load_model_yaml
from utils.checkpoints import CheckpointError, load_checkpoint
from utils.cli import exit_on_user_error, given_flags
from utils.logging import set_logging
from engine.tasks import SCRIPT_COMMANDS, DetectionTask, check_resume_script, task_from_state, training_task
from engine.evolve import EvolveOptions, run_evolution, trial_tasks
from engine.trainer import StopTraining, Trainer, TrainOptions

ROOT = Path(__file__).resolve().parent
LOGGER = logging.getLogger("train")


def add_train_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The YOLOv5 training flags (shared with train_distill.py)."""
    p.add_argument("--weights", default="",
                   help="initial weights to fine-tune: a detector checkpoint, ours or ultralytics/yolov5's (yolov5s.pt, "
                   "read without running it) (default: none, train from scratch)")
    p.add_argument("--cfg", default="",
                   help="model YAML, path or name in models/ (default: the --weights checkpoint's own "
                   "model, else yolov5s.yaml; segment.train: yolov5s-seg.yaml)")
    p.add_argument("--data", default=str(ROOT / "data" / "synth-defects.yaml"),
                   help="data YAML: image folders and class names (default: %(default)s)")
    p.add_argument("--hyp", default="", help="hyper-parameter YAML (default: data/hyps/hyp.scratch-low.yaml)")
    p.add_argument("--epochs", type=int, default=100, help="total training epochs (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="total batch size for all processes (default: %(default)s)")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640,
                   help="train/val image size in pixels (default: %(default)s)")
    p.add_argument("--rect", action="store_true",
                   help="rectangular training batches (each batch padded to its images' aspect ratio, not shuffled)")
    p.add_argument("--resume", nargs="?", const=True, default=False,
                   help="resume an interrupted run from its last.pt; alone: the newest last.pt under --project "
                   "(default: off)")
    p.add_argument("--nosave", action="store_true", help="only save checkpoints after the final epoch")
    p.add_argument("--noval", action="store_true", help="only validate after the final epoch")
    p.add_argument("--val-interval", type=int, default=1, metavar="N",
                   help="validate every N epochs and after the last; best.pt is chosen among those (default: %(default)s)")
    p.add_argument("--noautoanchor", action="store_true",
                   help="keep the YAML's anchors: skip the anchor check and k-means refit")
    p.add_argument("--noplots", action="store_true", help="write no plots (labels, batches, curves)")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                   help="write no TensorBoard event files (on by default: tensorboard --logdir runs/train)")
    p.add_argument("--evolve", type=int, nargs="?", const=300, default=None, metavar="TRIALS",
                   help="hyper-parameter search on Optuna: TRIALS short runs into runs/evolve/exp "
                        "(default: off; the flag alone: %(const)s trials)")
    p.add_argument("--evolve-storage", default="", metavar="URL",
                   help="Optuna RDB storage shared by several processes or machines, e.g. sqlite:///study.db "
                        "(default: none, the study lives in this process)")
    p.add_argument("--evolve-study", default="evolve",
                   help="--evolve study name in the storage; an existing one continues (default: %(default)s)")
    p.add_argument("--cache", nargs="?", const="ram", default=None, choices=["ram"],
                   help="cache decoded images in RAM (default: off, read from disk every epoch)")
    p.add_argument("--device", default="",
                   help="device: cpu or a CUDA index such as 0 (default: the first GPU, else cpu)")
    p.add_argument("--multi-scale", action="store_true", help="vary the image size by +/- 50%% from batch to batch")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as one class")
    p.add_argument("--optimizer", choices=["SGD", "Adam", "AdamW"], default="SGD",
                   help="optimizer (default: %(default)s)")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers per process (default: %(default)s)")
    p.add_argument("--project", default=str(ROOT / "runs" / "train"),
                   help="save to project/name (default: %(default)s)")
    p.add_argument("--name", default="exp", help="save to project/name, numbered exp, exp2, ... (default: %(default)s)")
    p.add_argument("--exist-ok", action="store_true",
                   help="reuse an existing project/name instead of numbering a new one")
    p.add_argument("--cos-lr", action="store_true", help="cosine learning-rate schedule (default: linear)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon (default: %(default)s)")
    p.add_argument("--patience", type=int, default=100,
                   help="stop after this many epochs without improvement, 0 never (default: %(default)s)")
    p.add_argument("--freeze", nargs="+", type=int, default=[],
                   help="freeze layers: one number N freezes the first N (--freeze 10: the yolov5 backbone), "
                        "several are indices (--freeze 0 1 2) (default: none)")
    p.add_argument("--save-period", type=int, default=-1,
                   help="also save weights/epoch<N>.pt every N epochs, off if < 1 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="global training seed (default: %(default)s)")
    p.add_argument("--scale", action="store_true",
                   help="letterbox-free: stretch images to imgsz x imgsz (as the D3N paper)")
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


RESUME_OVERRIDES = ("device", "workers")  # flags a resumed run takes when the user types them again


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """Flags -> TrainOptions; with --resume the run's saved options are restored: --device and --workers change
    only when typed again (args.given), so `--resume last.pt` alone continues exactly as the run started."""
    resume = resolve_resume(args.resume, args.project)
    values = {f.name: getattr(args, f.name) for f in fields(TrainOptions) if hasattr(args, f.name)}
    if not values.get("cfg") and not values.get("weights"):
        values["cfg"] = TrainOptions.cfg  # yolov5s, when neither --cfg nor --weights names a model
    if resume:
        saved = load_checkpoint(resume, expect="detector").get("train_opts") or {}
        if not saved:
            raise SystemExit(f"error: {resume}: has no training state to resume (a stripped final checkpoint?)")
        unknown = set(saved) - {f.name for f in fields(TrainOptions)}
        if unknown:
            raise SystemExit(f"error: {resume}: saved by another version (options {sorted(unknown)}); "
                             f"start a new run with --weights {resume}")
        typed = {k: getattr(args, k) for k in RESUME_OVERRIDES if k in getattr(args, "given", ())}
        values = {**saved, **typed, "quiet": args.quiet}
    values["resume"] = resume
    return TrainOptions(**values)


def run_training(opt: TrainOptions, task: DetectionTask | None = None) -> Path:
    """Train and return the run directory; user errors and Ctrl-C become one-line exits."""
    def body() -> Path:
        trainer = Trainer(opt, task)
        try:
            return trainer.train()
        except KeyboardInterrupt:
            raise SystemExit(interrupted_message(trainer.wdir / "last.pt", trainer.task)) from None
    return exit_on_user_error(body, extra=(StopTraining,))


def interrupted_message(last: Path, task: DetectionTask) -> str:
    """Ctrl-C's one line: how to go on from the last finished epoch (last.pt is written atomically, so it is whole)."""
    if not last.is_file():
        return "interrupted before the first epoch finished: nothing to resume; start the run again"
    command = SCRIPT_COMMANDS[task.script]
    command = command if command.startswith("python ") else f"python {command}"
    return f"interrupted; {last} holds the last finished epoch: resume with {command} --resume {last}"


def model_yaml_of(args: argparse.Namespace) -> dict | None:
    """The YAML of the model to train (--cfg, else the --weights checkpoint's); unreadable ones are left for
    the trainer to report."""
    try:
        if args.cfg or not args.weights:
            return load_model_yaml(args.cfg or TrainOptions.cfg)[0]
        return read_detector_checkpoint(args.weights)["model_yaml"]
    except (ModelConfigError, CheckpointError, KeyError, TypeError):
        return None


def task_for(args: argparse.Namespace, script: str = "train") -> tuple[TrainOptions, DetectionTask]:
    """The run's options and task: rebuilt from the checkpoint on --resume, else from the flags and plug-ins."""
    if getattr(args, "evolve", None) is not None and args.resume:
        raise SystemExit("error: --evolve starts fresh trials; drop --resume (a study continues through "
                         "--evolve-storage and --evolve-study)")
    if args.resume:
        opt = options_from_args(args)
        task = task_from_state(opt.task, opt.task_state, args, source=opt.resume)
        check_resume_script(task, script, opt.resume)
        return opt, task
    task = training_task(args, model_yaml_of(args), script)
    apply_input_rules(args, task.rules, args.cfg or args.weights or "the model")
    return options_from_args(args), task


def parse_train_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse; `args.given` holds the flags the user typed, which --resume lets override the run's own."""
    args = parser.parse_args(argv)
    args.given = given_flags(parser, argv)
    return args


def build_parser(script: str = "train") -> argparse.ArgumentParser:
    """train.py's parser with the loaded plug-ins' flags; builds only, parses nothing."""
    parser = add_train_flags(argparse.ArgumentParser(description=__doc__,
                                                     formatter_class=argparse.RawDescriptionHelpFormatter))
    return add_plugin_flags(parser, script)


def parse_opt(argv: list[str] | None = None, script: str = "train") -> argparse.Namespace:
    return parse_train_args(build_parser(script), argv)


def run_or_evolve(args: argparse.Namespace, opt: TrainOptions, task: DetectionTask) -> Path:
    """One training run, or with --evolve a hyper-parameter search of such runs (engine/evolve.py)."""
    if args.evolve is None:
        return run_training(opt, task)
    project = Path(args.project)
    if project.parent == ROOT / "runs" and project.name.startswith("train"):  # a script's default: runs/evolve
        project = ROOT / "runs" / "evolve"

    def body() -> Path:
        options = EvolveOptions(args.evolve, args.evolve_storage, args.evolve_study, opt.seed)
        try:
            return run_evolution(opt, trial_tasks(task), options, project)
        except KeyboardInterrupt:
            raise SystemExit("interrupted; the study keeps its finished trials (evolve.csv is written at the end): "
                             "with --evolve-storage, the same command continues it") from None
    return exit_on_user_error(body, extra=(StopTraining,))


def main(argv: list[str] | None = None) -> Path:
    exit_on_user_error(load_plugins)
    args = parse_opt(argv)
    set_logging(not args.quiet)
    opt, task = exit_on_user_error(lambda: task_for(args))
    return run_or_evolve(args, opt, task)


if __name__ == "__main__":
    main()
