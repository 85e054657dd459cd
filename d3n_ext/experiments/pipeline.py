"""The whole D3N pipeline in one command: baseline, controls, stage 1, teacher, student, and their table.

    python -m d3n_ext.experiments.pipeline --data data/synth-defects.yaml
    python -m d3n_ext.experiments.pipeline --data data/synth-defects.yaml --out runs/pipeline --seeds 0 1 2
    python -m d3n_ext.experiments.pipeline --summarise runs/a/seed0/table.json runs/b/seed1/table.json --out runs/all
    python -m d3n_ext.experiments.pipeline --task segment --data data/NEU-Seg.yaml    # Table IV: box and mask

Stages write under --out (default runs/pipeline/exp): baseline/, self-distilled/ (the control,
--controls), features/, teacher/, student/, val/, detect/, table.md / table.json, and the paper's
comparison figures curves.png (Fig. 12) and accuracy_vs_gflops.png (Fig. 13). The
self-distilled student is distilled exactly like the D3N student but from the trained baseline
itself (same scale, no DDPM), so "DDPM contribution = D3N student − self-distilled student" is
the DDPM's share of the student's gain. Checkpoints are chosen on val; the table is on the data
YAML's test split when it has one (else val) and says which. A stage whose finished outputs exist
with the same settings is reused, and an interrupted training stage resumes from its last.pt, so
rerunning the command after a crash continues where it stopped. `--task segment` runs the same stages
with YOLOv5-seg models (yolov5n-seg.yaml, yolov5n-seg-d3n-gated.yaml unless --cfg/--teacher-cfg say
otherwise) on polygon labels, and the table adds each model's mask P, R and mAP (paper Table IV).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from d3n_ext.distill import DistillationTask, DistillOptions, SegmentDistillationTask
from d3n_ext.experiments.summary import (BASELINE, MARGINS, SELF_DISTILLED, STUDENT, TEACHER, format_seed_summary,  # noqa: F401
                                         seed_summary, summarise_tables, write_seed_summary)
from d3n_ext.experiments.label_efficient import provenance_extra, summarise_fractions, with_label_subset
from d3n_ext.experiments.progress import StageProgress
from d3n_ext.fusion.task import D3NSegmentationTask, D3NTask
from engine.segment_validator import SegmentValResult
from d3n_ext.fusion.teacher_inputs import RepositoryInputs
from engine.plugins import SideInputs
from engine.predict import OutputOptions, predict
from engine.predictor import PredictOptions
from engine.tasks import DetectionTask, SegmentationTask
from engine.trainer import StopTraining, Trainer, TrainOptions
from engine.validate import ValidationRun, validate
from engine.validator import ValOptions
from models.loading import load_model
from utils.checkpoints import load_checkpoint
from utils.cli import exit_on_user_error
from utils.data_config import load_data_config
from utils.files import atomic_write_text, increment_path
from utils.image_size import check_img_size
from utils.logging import set_logging
from utils.profiling import count_parameters, cpu_latency_ms

LOGGER = logging.getLogger("d3n_ext.experiments.pipeline")
ROOT = Path(__file__).resolve().parents[1]


TASK_MODELS = {"detect": ("yolov5n.yaml", "yolov5n-d3n-lite.yaml"),  # (baseline and student, teacher)
               "segment": ("yolov5n-seg.yaml", "yolov5n-seg-d3n-gated.yaml")}


@dataclass
class PipelineOptions:
    data: str = "data/synth-defects.yaml"
    out: str = "runs/pipeline/exp"
    cfg: str = "yolov5n.yaml"  # baseline and student
    teacher_cfg: str = "yolov5n-d3n-lite.yaml"  # same scale + fusion (lite: <= 1.5x the step on CPU)
    controls: bool = True  # also train the self-distilled student (the no-DDPM control)
    teacher_init: str = "scratch"  # or 'baseline': the teacher starts from the trained baseline's weights
    ddpm_cfg: str = "ddpm-tiny"
    hyp: str = "data/hyps/hyp.cpu-small.yaml"
    optimizer: str = "Adam"
    epochs: int = 12
    batch_size: int = 16
    imgsz: int = 160  # the main job's size (docs/results.md: its time by setting); the NEU-DET protocols pass their own
    workers: int = 2
    device: str = ""
    seed: int = 0
    dist_lambda: float = 0.1  # eq. 6 weight; the paper (and train_distill.py) use 1, which hurt here (docs/results.md)
    dist_feat: float = 0.0  # weight of feature-level distillation of the neck maps (0 = outputs only)
    stage1_overrides: dict | None = None  # {'section.key': value} for the DDPM/VAE preset
    detect_source: str = "data/images"
    task: str = "detect"  # or "segment": YOLOv5-seg baseline, teacher and students, box and mask metrics
    val_interval: int = 1  # validate every N epochs (best.pt chosen among those)
    labels: str = ""  # labelled share of the train split (0.1) or count (126); '' = every label
    unlabeled_share: float = 0.5  # students: share of each batch from the data's unlabeled images (when it has any)
    unlabeled_weight: float = 1.0  # weight of an unlabelled image's distillation terms
    features: str = ""  # stage-1 folder to train once and reuse ('' = <out>/features)
    weights: str = ""  # start baseline, teacher's detector part, students from it (ours or yolov5s.pt); '' = scratch

    def __post_init__(self):
        if self.task not in TASK_MODELS:
            raise ValueError(f"--task {self.task!r}: expected one of {', '.join(TASK_MODELS)}")
        if self.task == "segment":  # the detection defaults become their segmentation twins
            detect, segment = TASK_MODELS["detect"], TASK_MODELS["segment"]
            self.cfg = segment[0] if self.cfg == detect[0] else self.cfg
            self.teacher_cfg = segment[1] if self.teacher_cfg == detect[1] else self.teacher_cfg


def baseline_task(p: PipelineOptions) -> DetectionTask:
    return SegmentationTask() if p.task == "segment" else DetectionTask()


def teacher_task(p: PipelineOptions, features: RepositoryInputs) -> D3NTask:
    return D3NSegmentationTask(features) if p.task == "segment" else D3NTask(features)


def distillation_task(p: PipelineOptions, options: DistillOptions,
                      features: RepositoryInputs | None = None) -> DistillationTask:
    return SegmentDistillationTask(options, features) if p.task == "segment" else DistillationTask(options, features)


def train_options(p: PipelineOptions, name: str, cfg: str, task: DetectionTask | None = None,
                  weights: str | None = None) -> TrainOptions:
    task = task or DetectionTask()
    weights = p.weights if weights is None else weights
    return TrainOptions(cfg=cfg, data=p.data, hyp=p.hyp, epochs=p.epochs, batch_size=p.batch_size, imgsz=p.imgsz,
                        optimizer=p.optimizer, workers=p.workers, device=p.device, seed=p.seed, scale=True,
                        project=str(Path(p.out)), name=name, exist_ok=True, quiet=True, task=task.kind,
                        task_state=task.state(), weights=weights, val_interval=p.val_interval)


TEACHER_INITS = ("scratch", "baseline")


def teacher_weights(p: PipelineOptions, baseline: Path) -> str:
    """--teacher-init: --weights (from scratch when none, like the baseline) or the baseline's best.pt (a warm start).

    A warm start with gated fusion rows makes the teacher exactly the baseline at step 0; it then
    trains `epochs` more, so compare it with the baseline knowing it had twice the detector training.
    """
    if p.teacher_init not in TEACHER_INITS:
        raise ValueError(f"--teacher-init {p.teacher_init!r}: expected one of {', '.join(TEACHER_INITS)}")
    return str(baseline / "weights" / "best.pt") if p.teacher_init == "baseline" else p.weights


def _finished(run: Path, opt: TrainOptions) -> bool:
    """best.pt of a completed run with the same options (compared without resume/device/workers)."""
    best, last = run / "weights" / "best.pt", run / "weights" / "last.pt"
    if not (best.exists() and last.exists()):
        return False
    saved = {**asdict(TrainOptions()), **(load_checkpoint(best, expect="detector").get("train_opts") or {})}
    keep = lambda d: {k: v for k, v in d.items() if k not in ("resume", "device", "workers", "quiet")}  # noqa: E731
    return keep(saved) == keep(asdict(opt)) and load_checkpoint(last).get("optimizer") is None


def train_stage(opt: TrainOptions, task, label: str, progress: StageProgress | None = None) -> Path:
    """Train, reuse a finished run, or resume an interrupted one; `progress` prints the stage's lines."""
    run = Path(opt.project) / opt.name
    if _finished(run, opt):
        if progress is not None:
            progress.begin(label, note=f"reusing {run}")
        LOGGER.info("%s: reusing %s", label, run)
        return run
    last = run / "weights" / "last.pt"
    if last.exists() and load_checkpoint(last).get("optimizer") is not None:
        LOGGER.info("%s: resuming %s", label, last)
        opt.resume = str(last)
    LOGGER.info("%s: training %s (%d epochs at %d px)", label, opt.cfg, opt.epochs, opt.imgsz)
    trainer = Trainer(opt, task)
    if progress is not None:
        progress.begin(label, opt.epochs, note=f"{opt.epochs} epochs")
        trainer.epoch_callbacks.append(progress.epoch_done)
    return trainer.train()


def table_row(name: str, weights: Path, result, imgsz: int) -> dict:
    model = load_model(weights, "cpu")  # parameters as YOLOv5 reports them (unfused); timing on the fused model
    imgsz = check_img_size(imgsz, int(model.stride.max()))  # what training and val.py ran at
    row = {"model": name, "weights": str(weights), "parameters": count_parameters(model),
           "GFLOPs": round(model.gflops(imgsz), 2), "P": round(result.mp, 4), "R": round(result.mr, 4),
           "mAP@0.5": round(result.map50, 4), "mAP@0.5:0.95": round(result.map, 4)}
    if isinstance(result, SegmentValResult):  # Table IV: the masks beside the boxes
        row.update({"mask P": round(result.mask_mp, 4), "mask R": round(result.mask_mr, 4),
                    "mask mAP@0.5": round(result.mask_map50, 4), "mask mAP@0.5:0.95": round(result.mask_map, 4)})
    return {**row, "CPU ms/img": round(cpu_latency_ms(model.fuse(), model.example_inputs(imgsz)), 1)}




def report_split(data: str) -> str:
    """The split tables report on: test when the data YAML has one (checkpoints were chosen on val), else val."""
    return "test" if load_data_config(data, autogenerate=False).splits.get("test") else "val"


MASK_COLUMNS = ("mask P", "mask R", "mask mAP@0.5", "mask mAP@0.5:0.95")


def format_table(rows: list[dict], imgsz: int, split: str = "val") -> str:
    masks = [c for c in MASK_COLUMNS if all(c in r for r in rows)]
    titles = ["mAP@0.5", "mAP@0.5:0.95", *(["box P", "box R", *masks] if masks else [])]
    keys = ["mAP@0.5", "mAP@0.5:0.95", *(["P", "R", *masks] if masks else [])]
    head = (f"| model | parameters | GFLOPs | {' | '.join(titles)} | CPU ms/img |\n"
            f"|---|---:|---:|{'---:|' * len(titles)}---:|\n")
    body = "".join(f"| {r['model']} | {r['parameters']:,} | {r['GFLOPs']:.2f} | "
                   f"{' | '.join(f'{r[k]:.3f}' for k in keys)} | {r['CPU ms/img']:.1f} |\n" for r in rows)
    chosen = "best.pt chosen on val, figures on the test split" if split == "test" else "val split (no test split)"
    note = (f"\nAll at {imgsz} px (letterbox-free); {chosen}; GFLOPs by torch's FlopCounterMode; CPU ms: "
            f"median forward of batch 1, fused, {torch.get_num_threads()} threads. The teacher's figures exclude "
            "computing its latents (DDPM + VAE encoder), which unseen images need.\n")
    return head + body + note + "".join(f"\n{line}" for line in contribution_lines(rows))


def contribution_lines(rows: list[dict]) -> list[str]:
    """'D3N student − baseline' and, with the control, 'DDPM contribution = D3N student − self-distilled student'."""
    m = {r["model"]: r for r in rows}
    lines = []
    for label, _, a, b in MARGINS:
        if a in m and b in m:
            masks = "".join(f", {m[a][k] - m[b][k]:+.3f} {k}" for k in ("mask mAP@0.5", "mask mAP@0.5:0.95")
                            if k in m[a] and k in m[b])
            lines.append(f"{label}: {m[a]['mAP@0.5'] - m[b]['mAP@0.5']:+.3f} mAP@0.5, "
                         f"{m[a]['mAP@0.5:0.95'] - m[b]['mAP@0.5:0.95']:+.3f} mAP@0.5:0.95{masks}")
    return lines


def evaluate_run(p: PipelineOptions, name: str, run_dir: Path, inputs: SideInputs | None, split: str = "val") -> dict:
    """The run's best.pt scored on `split` as val.py would (the hybrid reads `inputs`), then its table row."""
    weights = run_dir / "weights" / "best.pt"
    save_dir = increment_path(Path(p.out) / "val" / f"{run_dir.name}-{split}", exist_ok=True, mkdir=True)
    job = ValidationRun(weights, Path(p.data), split, p.imgsz, scale=True, device=p.device, workers=p.workers,
                        save_dir=save_dir, kind=p.task)
    result = validate(job, ValOptions(), inputs)
    return {**table_row(name, weights, result, p.imgsz), "split": split}


def provenance(p: PipelineOptions, seconds: float) -> dict:
    """How a table was made: the command, the options, the machine and the wall time."""
    cpu = next((line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or platform.machine())
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and p.device != "cpu" else "cpu"
    return {"command": "python -m d3n_ext.experiments.pipeline " + shlex.join(sys.argv[1:]), "options": asdict(p),
            "machine": f"{cpu}, {torch.get_num_threads()} threads, {device}", "minutes": round(seconds / 60, 1),
            "torch": torch.__version__}


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def stage1(p: PipelineOptions, compressor: str = "resvae", data: str = "") -> Path:
    """Stage 1 under --features or <out>/features (reused when finished), on `data` (default the run's): the
    repository `compressor`'s latents live in. A shared --features folder is trained with seed 0."""
    from d3n_ext.stage1.run import Stage1Options, run_all

    features = Path(p.features or Path(p.out) / "features")
    LOGGER.info("stage 1: DDPM, %s and the latent repository in %s", compressor, features)
    run_all(Stage1Options(data=data or p.data, out=features, config=p.ddpm_cfg, overrides=p.stage1_overrides or {},
                          device=p.device, seed=0 if p.features else p.seed, compressor=compressor, quiet=True))
    return features / "pca" if compressor == "pca" else features


def run(p: PipelineOptions) -> list[dict]:
    """Every stage, then the table on the report split: baseline, teacher, [self-distilled student], D3N student.

    With --labels the arms read a labelled subset of the train split (label_efficient.with_label_subset)
    and stage 1 still learns from every image of the given data.
    """
    start, requested = time.time(), p
    teacher_weights(p, Path(p.out))  # a bad --teacher-init fails now, not after the baseline has trained
    load_data_config(p.data)  # builds the synthetic data on first use
    extra = {}
    if p.labels:
        p, facts = with_label_subset(p)
        extra = provenance_extra(requested, facts)
    out = Path(p.out)
    unlabeled = p.unlabeled_share if load_data_config(p.data, autogenerate=False).splits.get("unlabeled") else 0.0
    progress = StageProgress(6 if p.controls else 5, start)
    task = baseline_task(p)
    baseline = train_stage(train_options(p, "baseline", p.cfg, task), task, "baseline", progress)
    runs = [(BASELINE, baseline, None)]
    if p.controls:  # needs no DDPM: trained before stage 1
        control = DistillOptions(teacher=str(baseline / "weights" / "best.pt"), dist_lambda=p.dist_lambda,
                                 dist_feat=p.dist_feat, unlabeled_share=unlabeled, unlabeled_weight=p.unlabeled_weight)
        task = distillation_task(p, control)
        runs.append((SELF_DISTILLED, train_stage(train_options(p, "self-distilled", p.cfg, task), task,
                                                 "self-distilled student", progress), None))
    progress.begin("stage 1 (DDPM, ResVAE, latent repository)")
    features = RepositoryInputs.open(stage1(p, data=requested.data))
    task = teacher_task(p, features)
    teacher = train_stage(train_options(p, "teacher", p.teacher_cfg, task, teacher_weights(p, baseline)), task,
                          "teacher", progress)
    distill = DistillOptions(teacher=str(teacher / "weights" / "best.pt"), latents=str(features.root),
                             dist_lambda=p.dist_lambda, dist_feat=p.dist_feat, unlabeled_share=unlabeled,
                             unlabeled_weight=p.unlabeled_weight)
    task = distillation_task(p, distill, features)
    student = train_stage(train_options(p, "student", p.cfg, task), task, "student", progress)
    runs[1:1] = [(TEACHER, teacher, features)]
    runs.append((STUDENT, student, None))
    split = report_split(p.data)
    progress.begin(f"evaluation ({split} split) and detect.py")
    rows = [evaluate_run(p, name, run_dir, latents, split) for name, run_dir, latents in runs]
    made = {**provenance(p, time.time() - start), **extra}  # options as run; extra: the protocol as asked
    text = format_table(rows, p.imgsz, split) + (f"\nCommand: `{made['command']}` (seed {p.seed}); machine: "
                                                 f"{made['machine']}; {made['minutes']} minutes.\n")
    atomic_write_text(out / "table.md", text)
    atomic_write_text(out / "table.json", json.dumps({"rows": rows, **made}, indent=2))
    write_figures(out, {name: run_dir for name, run_dir, _ in runs}, rows, split)
    predict(student / "weights" / "best.pt", p.detect_source, PredictOptions(p.imgsz, scale=True),
            OutputOptions(out / "detect"), p.device, kind=p.task)
    print(text)
    return rows


def write_figures(out: Path, runs: dict[str, Path], rows: list[dict], split: str) -> None:
    """curves.png (Fig. 12: every run's val curves and training loss per epoch) and accuracy_vs_gflops.png
    (Fig. 13: each model of the table) beside table.md; a figure that cannot be drawn is a warning."""
    from utils.plots import plot_accuracy_vs_cost, plot_runs  # matplotlib only when drawing

    try:
        plot_runs({name: run / "results.csv" for name, run in runs.items()}, out / "curves.png",
                  "per-epoch validation (val split) and training loss")
        plot_accuracy_vs_cost([(r["model"], r["GFLOPs"], r["mAP@0.5"]) for r in rows], out / "accuracy_vs_gflops.png",
                              title=f"mAP@0.5 ({split} split) vs GFLOPs")
    except (OSError, ValueError, KeyError) as e:
        LOGGER.warning("WARNING: pipeline figures not drawn: %s", e)


FLAG_HELP = {  # PipelineOptions field -> its flag's help (a field without one fails tests/scripts/test_cli_help.py)
    "data": "data YAML; the synthetic one is generated on first use (default: %(default)s)",
    "out": "folder of every stage's outputs and the table; finished stages there are reused (default: %(default)s)",
    "cfg": "model YAML of the baseline and the students (default: %(default)s; --task segment: yolov5n-seg.yaml)",
    "teacher_cfg": "model YAML of the D3N hybrid teacher (default: %(default)s; --task segment: "
                   "yolov5n-seg-d3n-gated.yaml)",
    "controls": "also train the self-distilled student, the no-DDPM control; --no-controls skips it (default: on)",
    "teacher_init": "the teacher starts from scratch, or from the trained baseline's weights: scratch or baseline "
                    "(default: %(default)s)",
    "ddpm_cfg": "stage-1 preset, as extract_features.py --ddpm-cfg (default: %(default)s)",
    "hyp": "hyper-parameter YAML of every training stage (default: %(default)s)",
    "optimizer": "optimizer of every training stage: SGD, Adam or AdamW (default: %(default)s)",
    "epochs": "epochs of each training stage: baseline, teacher, students (default: %(default)s)",
    "batch_size": "batch size of every training stage (default: %(default)s)",
    "imgsz": "image size of every stage, letterbox-free (default: %(default)s)",
    "workers": "max dataloader workers (default: %(default)s)",
    "device": "device: cpu or a CUDA index such as 0 (default: the first GPU, else cpu)",
    "seed": "seed of stage 1 and of every training stage (default: %(default)s)",
    "dist_lambda": "weight lambda of the students' distillation terms, eq. 7 (default: %(default)s)",
    "dist_feat": "weight of the students' feature-level distillation, 0 = outputs only (default: %(default)s)",
    "detect_source": "images the D3N student predicts at the end, into <out>/detect (default: %(default)s)",
    "task": "detect, or segment: YOLOv5-seg models, box and mask metrics (default: %(default)s)",
    "val_interval": "validate every N epochs and after the last; --labels scales it with the epochs "
                    "(default: %(default)s)",
    "unlabeled_share": "students: share of each batch drawn from the data's unlabeled: images when it has any, "
                       "which get the distillation terms only; 0.5 = as many as labelled (default: %(default)s)",
    "unlabeled_weight": "students: weight of an unlabelled image's distillation terms, a labelled image's being 1 "
                        "(default: %(default)s)",
    "weights": "checkpoint the baseline, the teacher's detector part and both students start from: ours or "
               "ultralytics/yolov5's (yolov5s.pt, read without running it) (default: none, from scratch)",
    "features": "stage-1 folder trained once (seed 0) and shared by every seed and labelled share "
                "(default: none, <out>/features per run; with --labels per seed)",
}


def add_pipeline_flags(ap: argparse.ArgumentParser, defaults: PipelineOptions, skip: frozenset[str] = frozenset()) -> None:
    """One flag per PipelineOptions field (--stage1 for the preset overrides), plus --quiet. Fields in `skip`
    get no flag, so a command that would ignore them refuses them instead (argparse: unrecognized arguments)."""
    for key, value in asdict(defaults).items():
        if key in skip:
            continue
        if key == "labels":
            ap.add_argument("--labels", nargs="+", default=[], metavar="SHARE",
                            help="label-efficient runs: per value, keep that share (0.1) or count (126) of the train "
                                 "labels, the rest unlabeled (label_efficient.py) (default: none, every label)")
            continue
        if key == "stage1_overrides":
            ap.add_argument("--stage1", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                            help="override DDPM/VAE preset keys, e.g. ddpm_train.iterations=200 (default: none)")
            continue
        if isinstance(value, bool):
            ap.add_argument(f"--{key.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=value,
                            help=FLAG_HELP.get(key))
            continue
        ap.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value, help=FLAG_HELP.get(key))
    ap.add_argument("--quiet", action="store_true", help="only warnings and errors")


def options_from_flags(args: dict) -> PipelineOptions:
    """PipelineOptions from add_pipeline_flags' parsed values (consumed from `args`); sets up logging.

    A --stage1 item is SECTION.KEY=VALUE; VALUE is JSON (200, 1e-4, true, [100, 150]), a comma
    list (100,150) or a word. The overrides are checked against the --ddpm-cfg preset here, so a
    mistake ends the command with one line before the baseline trains rather than after it.
    """
    from d3n_ext.stage1.config import load_stage1_config

    set_logging(not args.pop("quiet"))
    overrides = {}
    for item in args.pop("stage1"):
        key, sep, value = item.partition("=")
        if not sep or "." not in key or not value:
            raise SystemExit(f"error: --stage1 {item}: expected SECTION.KEY=VALUE, e.g. ddpm_train.iterations=200")
        parts = [value] if value[:1] in "[{" or "," not in value else value.split(",")
        parsed = []
        for part in parts:
            try:
                parsed.append(json.loads(part))
            except ValueError:
                if part.strip()[:1] in "[{":
                    raise SystemExit(f"error: --stage1 {item}: {part} is not a valid JSON list or mapping; "
                                     "write a list as [100, 150] or 100,150") from None
                parsed.append(part.strip())  # a word: per-image, cosine, ...
        overrides[key] = parsed if len(parts) > 1 else parsed[0]
    try:
        load_stage1_config(args["ddpm_cfg"], overrides)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None  # names the preset, the section and the key
    try:
        labels = args.pop("labels", [])
        if len(labels) > 1:
            raise ValueError(f"--labels {' '.join(labels)}: this command runs one labelled share at a time")
        return PipelineOptions(**args, stage1_overrides=overrides, labels=labels[0] if labels else "")
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def run_seeds(p: PipelineOptions, seeds: list[int], labels: list[str] | None = None) -> dict:
    """The pipeline once per seed under <out>/seed<N> (and per labelled share under labels-<share>/), then
    seeds.md / seeds.json beside them — or, with shares, fractions.md and accuracy_vs_labels.png."""
    if not labels:
        per_seed = {s: run(replace(p, seed=s, out=str(Path(p.out) / f"seed{s}"))) for s in seeds}
        return write_seed_summary(per_seed, Path(p.out))
    tables = {}
    for s in seeds:
        for share in labels:
            q = replace(p, seed=s, out=str(Path(p.out) / f"seed{s}"), labels=share)
            run(q)
            table = Path(q.out) / f"labels-{share}" / "table.json"
            tables[str(table)] = json.loads(table.read_text())
    return summarise_fractions(tables, Path(p.out))


def summarise(paths: list[str], out: Path) -> dict:
    """--summarise: seeds.md from full-label tables, or per labelled share and fractions.md when any has one."""
    tables = {}
    for path in paths:
        try:
            tables[path] = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a pipeline table.json ({e})") from None
    if any(isinstance(t, dict) and t.get("labels") for t in tables.values()):
        return summarise_fractions(tables, out)
    return summarise_tables(paths, out)


def build_parser() -> argparse.ArgumentParser:
    """The pipeline's flags; parses nothing."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_flags(ap, PipelineOptions())
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="run once per seed into <out>/seed<N> and summarise (seeds.md); overrides --seed "
                         "(default: one run, --seed)")
    ap.add_argument("--summarise", nargs="+", default=None, metavar="TABLE_JSON",
                    help="only write seeds.md/json into --out from earlier runs' table.json files (one per seed) "
                         "(default: off, run the pipeline)")
    return ap


def main(argv: list[str] | None = None) -> list[dict] | dict:
    args = vars(build_parser().parse_args(argv))
    seeds, tables, labels = args.pop("seeds"), args.pop("summarise"), args.pop("labels")
    p = options_from_flags(args)
    if tables:
        return exit_on_user_error(lambda: summarise(tables, Path(p.out)))
    if labels and not seeds:
        seeds = [p.seed]
    return exit_on_user_error(lambda: run_seeds(p, seeds, labels) if seeds else run(p), extra=(StopTraining,))


if __name__ == "__main__":
    main()
