"""The training loop shared by train.py and train_distill.py.

One Trainer runs any task (engine.tasks): warm-up, linear/cosine LR, EMA, gradient accumulation to a
nominal batch of 64, AMP on CUDA, per-epoch validation, atomic best/last checkpoints, exact
--resume, early stopping, results.csv and plots, and DDP under torchrun.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from engine.tasks import DetectionTask
from engine.tensorboard_log import TensorBoardLog
from engine.validator import ValOptions, run_validation
from models.loading import build_from_checkpoint, read_detector_checkpoint, save_model, transfer_weights
from models.yolo import Model, load_model_yaml
from utils.autoanchor import check_anchors
from utils.checkpoints import CheckpointError, load_checkpoint
from utils.data_config import check_data_yaml, load_data_config
from utils.dataloaders import create_dataloader, join_batches
from utils.epoch_stream import epoch_heads, epoch_stream, epochs
from utils.files import atomic_write_text, increment_path
from utils.hyp import Hyp, load_hyp
from utils.image_size import check_img_size
from utils.loss import LossGains
from utils.optim import build_optimizer, lr_factor, warmup_step
from utils.plots import plot_images, plot_labels, plot_results
from utils.torch_utils import (ModelEMA, barrier, channels_last, de_parallel, distributed_env, init_distributed,
                               init_seeds, is_main_process, select_device)

LOGGER = logging.getLogger(__name__)
TRANSFER_WARN_SHARE = 0.9  # --weights filling less of the model than this is warned about: another architecture

@dataclass
class TrainOptions:
    """train.py's flags, parsed once (YOLOv5 names and defaults)."""

    weights: str = ""  # initial weights (a detector checkpoint); '' trains from scratch
    cfg: str = "yolov5s.yaml"  # '' with weights: the checkpoint's own architecture
    data: str = "data/synth-defects.yaml"
    hyp: str = ""
    epochs: int = 100
    batch_size: int = 16
    imgsz: int = 640
    rect: bool = False
    resume: str = ""  # path to last.pt ('' = fresh run)
    nosave: bool = False
    noval: bool = False
    noautoanchor: bool = False
    noplots: bool = False
    tensorboard: bool = True  # event files beside results.csv (--no-tensorboard: off)
    cache: str | None = None
    device: str = ""
    multi_scale: bool = False
    single_cls: bool = False
    optimizer: str = "SGD"
    workers: int = 8
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    cos_lr: bool = False
    label_smoothing: float = 0.0
    patience: int = 100
    freeze: list[int] = field(default_factory=list)
    save_period: int = -1
    seed: int = 0
    val_interval: int = 1  # validate every N epochs (and after the last); best.pt is chosen among those
    scale: bool = False  # letterbox-free: stretch images to imgsz x imgsz (the D3N paper's input)
    quiet: bool = False
    task: str = "detect"  # the training task's kind (engine.tasks.TASKS), set by the Trainer
    task_state: dict = field(default_factory=dict)  # its options, which rebuild it on --resume


def frozen_layers(freeze: list[int]) -> list[int]:
    """--freeze as YOLOv5 reads it: one number N is the first N layers, several are layer indices."""
    if any(x < 0 for x in freeze):
        raise ValueError(f"--freeze {' '.join(map(str, freeze))}: layer numbers cannot be negative")
    return list(range(freeze[0])) if len(freeze) == 1 else list(freeze)


class StopTraining(RuntimeError):
    """A NaN/inf loss: training stops with the step and the loss items."""


def check_train_options(opt: TrainOptions) -> None:
    """Refuse counts no run can use, before any data is read (one line naming the flag)."""
    for flag, value in (("--epochs", opt.epochs), ("--batch-size", opt.batch_size), ("--val-interval", opt.val_interval)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{flag} {value}: expected a positive integer")
    check_img_size(opt.imgsz, 1)
    frozen_layers(opt.freeze)
    if not opt.cfg and not opt.weights and not opt.resume:
        raise ValueError("no model given: pass --cfg <model YAML> or --weights <checkpoint>")


def check_run_inputs(opt: TrainOptions) -> dict | None:
    """The cheap checks of a run, before a folder is made, data generated or labels scanned: the flags, the data
    YAML and the --weights checkpoint (returned, so it is read once)."""
    check_train_options(opt)
    check_data_yaml(opt.data)
    if opt.resume or not opt.weights:
        return None
    ckpt = read_detector_checkpoint(opt.weights)  # ours, or an ultralytics/yolov5 file imported without running it
    if not isinstance(ckpt.get("model_yaml"), dict):
        raise CheckpointError(f"{opt.weights}: detector checkpoint without 'model_yaml'")
    return ckpt


def check_resumable(ckpt: dict, path: str | Path, epochs: int) -> None:
    """A run is resumable while it has epochs left and its optimizer state (final checkpoints drop it)."""
    done = int(ckpt.get("epoch", -1)) + 1
    if ckpt.get("optimizer") is None or done >= epochs:
        raise CheckpointError(f"{path}: training already finished after {done} of {epochs} epochs; nothing to "
                              f"resume. To train further, start a new run with --weights {path}")


def remove_stale_temp_files(*folders: Path) -> list[Path]:
    """Delete `.name.XXXX.tmp` files an atomic write left when the process was killed; returns them."""
    stale = [p for folder in folders if folder.is_dir() for p in folder.glob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        LOGGER.info("Removed %d temporary file(s) of an interrupted save: %s", len(stale),
                    ", ".join(p.name for p in stale))
    return stale


class Trainer:
    def __init__(self, opt: TrainOptions, task: DetectionTask | None = None):
        self.init_ckpt = check_run_inputs(opt)  # the --weights checkpoint, read before anything is written
        self.task = task or DetectionTask()
        opt.task, opt.task_state = self.task.kind, self.task.state()  # saved with opt: --resume rebuilds the task
        self.opt = opt
        self.device = select_device(opt.device)
        self.distributed = init_distributed(self.device)
        self.rank, self.local_rank, self.world = distributed_env()
        if self.device.type == "cuda" and self.distributed:
            self.device = torch.device("cuda", self.local_rank)
        self.main = is_main_process()
        self.ckpt = load_checkpoint(opt.resume, expect="detector") if opt.resume else None
        if self.ckpt is not None:
            check_resumable(self.ckpt, opt.resume, opt.epochs)
        self.hyp: Hyp = load_hyp(opt.hyp or None).replace(label_smoothing=opt.label_smoothing)
        self.save_dir = Path(opt.resume).parents[1] if opt.resume else \
            increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok)
        self.wdir = self.save_dir / "weights"
        self.tensorboard: TensorBoardLog | None = None  # rank 0 opens it in setup()
        # (epoch, fitness) on rank 0 after each epoch, e.g. pruning; fitness None where the epoch was not validated
        self.epoch_callbacks: list[Callable[[int, float | None], None]] = []
        init_seeds(opt.seed + self.rank, deterministic=True)

    # --- set-up ---------------------------------------------------------------------------
    def _build_model(self, nc: int, names: list[str]) -> Model:
        if self.ckpt is not None:
            model = build_from_checkpoint(self.ckpt, self.opt.resume, use_ema=False)
        elif self.opt.weights:
            model = self._model_from_weights(nc)
        else:
            model = Model(self.task.model_cfg(load_model_yaml(self.opt.cfg)[0]), nc=nc)
        model = self.task.prepare_model(model)
        model.names = names
        frozen = frozen_layers(self.opt.freeze)
        for k, v in model.named_parameters():
            if any(k.startswith(f"model.{x}.") for x in frozen):
                v.requires_grad = False  # parts frozen by their own block (e.g. a decoder) stay frozen too
        return channels_last(model.to(self.device))

    def _model_from_weights(self, nc: int) -> Model:
        """--weights: the checkpoint's own architecture (or --cfg's), filled with every tensor that fits."""
        path, ckpt = self.opt.weights, self.init_ckpt
        self.init_ckpt = None  # its tensors are copied into the model below; do not keep a second set
        cfg = load_model_yaml(self.opt.cfg or ckpt["model_yaml"])[0]
        model = Model(self.task.model_cfg(cfg), nc=nc)
        state = ckpt.get("ema") or ckpt.get("state_dict") or {}
        if self.opt.cfg:  # as in YOLOv5, anchors written in the --cfg YAML win over the checkpoint's
            state = {k: v for k, v in state.items() if not k.endswith(".anchors")}
        fit, total, mismatch = transfer_weights(model, state)
        if fit < TRANSFER_WARN_SHARE * total:
            built = f"--cfg {self.opt.cfg}; drop --cfg to fine-tune the checkpoint's own model" if self.opt.cfg else \
                "the model this run builds from it"
            LOGGER.warning("WARNING: transferred only %d/%d tensors from %s (first mismatch: %s): its model (%s) is "
                           "not %s", fit, total, path, mismatch, ckpt["model_yaml"].get("yaml_file", "?"), built)
        else:
            LOGGER.info("Transferred %d/%d items from %s", fit, total, path)
        return model

    def setup(self) -> None:
        opt = self.opt
        if self.main:
            self.wdir.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(self.save_dir, self.wdir)
            atomic_write_text(self.save_dir / "opt.yaml", _yaml_dump(asdict(opt)))
            atomic_write_text(self.save_dir / "hyp.yaml", _yaml_dump(self.hyp.as_dict()))
            if opt.tensorboard:
                self.tensorboard = TensorBoardLog(self.save_dir)
        self.data = load_data_config(opt.data) if self.main else None
        barrier()
        self.data = self.data or load_data_config(opt.data, autogenerate=False)
        names = ["item"] if opt.single_cls else self.data.names
        self.model = self._build_model(len(names), names)
        self.gs = max(int(self.model.stride.max()), 32)
        self.imgsz = check_img_size(opt.imgsz, self.gs)
        kwargs = self.task.dataset_kwargs(self.model)
        common = dict(hyp=self.hyp, cache=opt.cache, scale_mode=opt.scale, workers=opt.workers, seed=opt.seed,
                      single_cls=opt.single_cls, nc=len(names), dataset_cls=self.task.dataset_cls, dataset_kwargs=kwargs)
        self.train_loader, self.dataset = create_dataloader(
            self.data.images("train"), self.imgsz, opt.batch_size // self.world, self.gs, augment=True,
            rect=opt.rect, shuffle=not opt.rect, prefix="train: ", **common)
        n_unlabeled = self.task.unlabeled_batch(opt.batch_size)
        self.unlabeled_loader = self._unlabeled_loader(common, n_unlabeled) if n_unlabeled else None
        if self.main:
            val_kwargs = {**kwargs, **({} if opt.scale else {"pad": 0.5})}
            self.val_loader, _ = create_dataloader(
                self.data.images("val"), self.imgsz, max(opt.batch_size // self.world, 1) * 2, self.gs, augment=False,
                rect=not opt.scale, shuffle=False, prefix="val: ", distributed=False,
                **{**common, "hyp": None, "dataset_kwargs": val_kwargs})
        self.nb = len(self.train_loader)
        self._stream_epoch: int | None = None  # the epoch the open batch streams stand at (None: none open)
        self._setup_optimization()
        if self.ckpt is None and self.main:
            self._first_run_checks()
        self.task.setup(self.model, self.hyp, self.imgsz, self.device)
        self.gains = LossGains.from_hyp(self.hyp, self.model.detect.nl, self.model.detect.nc, self.imgsz)
        LOGGER.info("hyperparameters (%s): %s", opt.hyp or "hyp.scratch-low.yaml", self.hyp)
        LOGGER.info("Loss gains (derived from %s): %s", opt.hyp or "hyp.scratch-low.yaml", self.gains)
        if self.distributed:
            self.model = DDP(self.model, device_ids=[self.local_rank] if self.device.type == "cuda" else None)

    def _unlabeled_loader(self, common: dict, batch_size: int):
        """The task's unlabelled images (the data YAML's `unlabeled:`), leak-checked, no label file opened."""
        from utils.unlabeled import check_unlabeled

        if self.opt.rect:
            raise ValueError("--rect: a batch that joins labelled and unlabeled images needs square images")
        if not self.data.splits.get("unlabeled"):
            raise ValueError(f"{self.data.yaml_path}: this run draws {batch_size} unlabeled images per "
                             "batch, but the data YAML names none (add 'unlabeled: <folder>')")
        images = check_unlabeled(self.data)
        per_rank = max(batch_size // self.world, 1)
        kwargs = {**common, "seed": self.opt.seed + 1,  # its own shuffle and augmentation stream
                  "dataset_kwargs": {**common["dataset_kwargs"], "labelled": False}}
        loader, _ = create_dataloader(images, self.imgsz, per_rank, self.gs, augment=True, shuffle=True,
                                      prefix="unlabeled: ", **kwargs)
        return loader

    def _batches(self, epoch: int):
        """The epoch's batches: the labelled loader's, each joined with the next unlabelled batch when the task
        draws them (the unlabelled pass restarts, reshuffled by epoch, every epoch: --resume replays it exactly).

        Both come from streams that span the remaining epochs (`utils.epoch_stream`), so the workers prepare the
        next epoch's first batches while this one ends; an epoch not drawn to its end reopens them."""
        if self._stream_epoch != epoch:
            self._open_streams(epoch)
        self._stream_epoch = None  # until this epoch's batches are all drawn
        for _ in range(self.nb):
            batch = next(self._labelled)
            yield batch if self._unlabeled is None else join_batches(batch, next(self._unlabeled))
        self._stream_epoch = epoch + 1

    def _open_streams(self, epoch: int) -> None:
        """Streams from `epoch` to the last: every labelled epoch whole; per epoch the head of fresh unlabelled
        passes, as many batches as the labelled epoch has (none is prepared for nothing)."""
        self._labelled = epoch_stream(self.train_loader, epochs(epoch, self.opt.epochs))
        self._unlabeled = None
        if self.unlabeled_loader is not None:
            passes = epoch_heads(epoch, self.opt.epochs, self.nb, len(self.unlabeled_loader))
            self._unlabeled = epoch_stream(self.unlabeled_loader, passes)

    def _setup_optimization(self) -> None:
        opt, hyp = self.opt, self.hyp
        self.accumulate = max(round(hyp.nbs / opt.batch_size), 1)
        decay = hyp.weight_decay * opt.batch_size * self.accumulate / hyp.nbs
        self.optimizer = build_optimizer(self.model, opt.optimizer, hyp.lr0, hyp.momentum, decay)
        self.lf = lr_factor(opt.epochs, hyp.lrf, opt.cos_lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)
        self.ema = ModelEMA(self.model) if self.main else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda")
        self.start_epoch, self.best_fitness = 0, 0.0
        self.rows: list[dict] = []  # results.csv; a fresh run in a reused folder starts a new file
        if self.ckpt is not None:
            self._restore(self.ckpt)

    def _restore(self, ckpt: dict) -> None:
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.ema is not None:
            self.ema.ema.load_state_dict(ckpt["ema"])
            self.ema.updates = int(ckpt["updates"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch, self.best_fitness = int(ckpt["epoch"]) + 1, float(ckpt["best_fitness"])
        self.scheduler.last_epoch = self.start_epoch - 1
        self.rows = results_until(_read_results(self.save_dir / "results.csv"), ckpt)
        LOGGER.info("Resuming %s from epoch %d of %d", self.opt.resume, self.start_epoch, self.opt.epochs)

    def _first_run_checks(self) -> None:
        labels = np.concatenate([lb for lb in self.dataset.labels if len(lb)] or [np.zeros((0, 5))], 0)
        if not self.opt.noplots and len(labels):
            plot_labels(labels, self.model.names, self.save_dir)
        if not self.opt.noautoanchor:
            check_anchors(self.dataset.labels, self.dataset.shapes, self.model, self.hyp.anchor_t, self.imgsz,
                          stretch=self.opt.scale)
            if self.ema is not None:
                self.ema.ema.detect.anchors.copy_(self.model.detect.anchors)

    # --- the loop -------------------------------------------------------------------------
    def train(self) -> Path:
        self.setup()
        opt = self.opt
        # YOLOv5's warm-up: max(warmup_epochs of batches, 100 iterations); warmup_epochs 0 turns it off
        nw = max(round(self.hyp.warmup_epochs * self.nb), 100) if self.hyp.warmup_epochs > 0 else -1
        stopper = EarlyStopping(opt.patience, self.best_fitness, self.start_epoch - 1)
        LOGGER.info("Image sizes %d train, %d val; %d dataloader workers; logging to %s; %d epochs from %d",
                    self.imgsz, self.imgsz, opt.workers, self.save_dir, opt.epochs, self.start_epoch)
        t0 = time.time()
        for epoch in range(self.start_epoch, opt.epochs):
            train_items = self.train_epoch(epoch, nw)
            stop = False
            if self.main:
                last = epoch == opt.epochs - 1
                due = (epoch + 1) % opt.val_interval == 0 and not opt.noval
                result = self.validate(final=False) if due or last else None
                fitness = result.fitness() if result is not None else 0.0
                self.best_fitness = max(self.best_fitness, fitness)
                row = self.results_row(epoch, train_items, result)
                self.save(epoch, fitness, row)
                self.write_results(row)  # after the checkpoint: a kill in between never shows an epoch twice
                stop = stopper(epoch, fitness)
                for callback in self.epoch_callbacks:
                    callback(epoch, fitness if result is not None else None)
            if self.distributed:
                flag = torch.tensor([int(stop)], device=self.device)
                torch.distributed.broadcast(flag, 0)
                stop = bool(flag.item())
            if stop:
                break
        if self.main:
            LOGGER.info("%d epochs completed in %.3f hours.", epoch - self.start_epoch + 1, (time.time() - t0) / 3600)
            self.finish()
        if self.distributed:
            torch.distributed.destroy_process_group()
        return self.save_dir

    def train_epoch(self, epoch: int, nw: int) -> np.ndarray:
        model, opt = self.model, self.opt
        model.train()
        mloss = torch.zeros(len(self.task.loss_names), device=self.device)
        bar = tqdm(enumerate(self._batches(epoch)), total=self.nb, disable=not self.main or opt.quiet,
                   bar_format="{l_bar}{bar:10}{r_bar}", desc=f"{epoch}/{opt.epochs - 1}")
        self.optimizer.zero_grad()
        last_opt_step = -1
        for i, (imgs, targets, paths, _, extras) in bar:
            ni = i + self.nb * epoch
            imgs = imgs.to(self.device, non_blocking=True).float() / 255
            extras = {k: v.to(self.device, non_blocking=True) for k, v in extras.items()}
            if ni <= nw:
                self.accumulate = max(1, round(1 + (self.hyp.nbs / opt.batch_size - 1) * ni / nw))
                h = self.hyp
                warmup_step(self.optimizer, ni, nw, self.lf(epoch), h.lr0, h.warmup_bias_lr, h.warmup_momentum, h.momentum)
            if opt.multi_scale:
                imgs = self._multi_scale(imgs, epoch, i)
            with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                preds = self.task.forward(model, imgs, extras)
                loss, items = self.task.loss(preds, targets.to(self.device), imgs, extras)
            if not torch.isfinite(loss).all():
                raise StopTraining(f"non-finite loss at epoch {epoch} step {i}: " +
                                   ", ".join(f"{n}={v:.4g}" for n, v in zip(self.task.loss_names, items.tolist())))
            self.scaler.scale(loss * self.world).backward()
            if ni - last_opt_step >= self.accumulate:
                self._optimizer_step()
                last_opt_step = ni
            mloss = (mloss * i + items.detach()) / (i + 1)
            if self.main and epoch == self.start_epoch and i < 3 and not opt.noplots:
                plot_images(imgs, targets, list(paths), self.save_dir / f"train_batch{i}.jpg", self.model_names)
            bar.set_postfix_str(" ".join(f"{v:.4g}" for v in mloss.tolist()) + f" {targets.shape[0]} {imgs.shape[-1]}")
        self.lr = [g["lr"] for g in self.optimizer.param_groups]
        self.scheduler.step()
        return mloss.cpu().numpy()

    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        if self.ema is not None:
            self.ema.update(self.model)

    def _multi_scale(self, imgs: torch.Tensor, epoch: int, i: int) -> torch.Tensor:
        rng = np.random.default_rng([self.opt.seed, epoch, i])
        sz = int(rng.uniform(self.imgsz * 0.5, self.imgsz * 1.5 + self.gs)) // self.gs * self.gs
        factor = sz / max(imgs.shape[2:])
        if factor == 1:
            return imgs
        size = [math.ceil(x * factor / self.gs) * self.gs for x in imgs.shape[2:]]
        return nn.functional.interpolate(imgs, size=size, mode="bilinear", align_corners=False)

    @property
    def model_names(self) -> list[str]:
        return de_parallel(self.model).names

    # --- validation, logging, checkpoints ------------------------------------------------
    def validate(self, final: bool, model: nn.Module | None = None):
        options = ValOptions(plots=final and not self.opt.noplots, verbose=final)
        model = self.task.validation_model(model or self.ema.ema)
        return run_validation(model, self.val_loader, self.model_names, self.save_dir if final else None, options,
                              compute_loss=self.task.compute_loss, device=self.device,
                              validator_cls=self.task.validator_cls)

    def results_row(self, epoch: int, items: np.ndarray, result) -> dict:
        """One results.csv row: epoch, train losses, validation metrics and losses, learning rates, task columns."""
        row = {"epoch": epoch}
        row.update({f"train/{n}": float(v) for n, v in zip(self.task.loss_names, items)})
        columns = self.task.validator_cls.result_type.columns
        skipped = 0.0 if self.opt.noval else float("nan")  # --val-interval's skipped epochs: a gap in the curves
        values = result.results_row() if result is not None else (skipped,) * len(columns)
        row.update(dict(zip(columns, map(float, values))))
        row.update({f"x/lr{j}": lr for j, lr in enumerate(self.lr)})
        row.update(self.task.epoch_log(de_parallel(self.model)))
        return row

    def write_results(self, row: dict) -> None:
        self.rows.append(row)
        atomic_write_text(self.save_dir / "results.csv", _csv_text(self.rows))
        if self.tensorboard is not None:
            self.tensorboard.scalars(row, int(row["epoch"]))

    def save(self, epoch: int, fitness: float, row: dict | None = None) -> None:
        """last.pt (and best.pt, epoch<N>.pt); the epoch's results row rides along for --resume."""
        if self.opt.nosave and epoch != self.opt.epochs - 1:
            return
        extra = dict(epoch=epoch, best_fitness=self.best_fitness, fitness=fitness, updates=self.ema.updates,
                     results_row=row,
                     optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
                     train_opts=asdict(self.opt), hyp=self.hyp.as_dict(), task=self.task.checkpoint_extra(),
                     date=time.strftime("%Y-%m-%d %H:%M:%S"))
        model = de_parallel(self.model)
        save_model(self.wdir / "last.pt", model, self.ema.ema, **extra)
        if fitness >= self.best_fitness:
            save_model(self.wdir / "best.pt", model, self.ema.ema, **extra)
        if self.opt.save_period > 0 and epoch % self.opt.save_period == 0:
            save_model(self.wdir / f"epoch{epoch}.pt", model, self.ema.ema, **extra)

    def finish(self) -> None:
        for name in ("last.pt", "best.pt"):
            path = self.wdir / name
            if path.exists():
                _strip_optimizer(path)
        best = self.wdir / "best.pt"
        if best.exists() and not self.opt.noval:
            ckpt = load_checkpoint(best, expect="detector")
            model = build_from_checkpoint(ckpt, best).to(self.device)
            LOGGER.info("Validating %s...", best)
            self.final_result = self.validate(final=True, model=model)
        if not self.opt.noplots and (self.save_dir / "results.csv").exists():
            plot_results(self.save_dir / "results.csv")
        self.task.on_train_end(self.save_dir)
        if self.tensorboard is not None:
            self.tensorboard.images(self.save_dir, int(self.rows[-1]["epoch"]) if self.rows else 0)
            self.tensorboard.close()
        LOGGER.info("Results saved to %s", self.save_dir)


class EarlyStopping:
    """Stop when fitness has not improved for `patience` epochs."""

    def __init__(self, patience: int, best: float = 0.0, best_epoch: int = 0):
        self.patience, self.best, self.best_epoch = patience or float("inf"), best, best_epoch

    def __call__(self, epoch: int, fitness: float) -> bool:
        if fitness >= self.best:
            self.best, self.best_epoch = fitness, epoch
        stop = epoch - self.best_epoch >= self.patience
        if stop:
            LOGGER.info("Stopping early: no improvement in the last %d epochs (best at epoch %d)", self.patience, self.best_epoch)
        return stop


def _strip_optimizer(path: Path) -> None:
    """Final checkpoints keep weights and facts, not the optimizer state (smaller, nothing to resume)."""
    from utils.checkpoints import save_checkpoint

    ckpt = load_checkpoint(path, expect="detector")
    ckpt.update(optimizer=None, scaler=None)
    ckpt.pop("format", None)
    save_checkpoint(ckpt, path)


def _read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v != ""}
                for row in csv.DictReader(f)]


def results_until(rows: list[dict], ckpt: dict) -> list[dict]:
    """results.csv rows up to the checkpoint's epoch: rows written after it (a kill before the next save) go,
    and the checkpoint's own row (stored with it) stands in for one the kill kept from the file."""
    epoch = int(ckpt["epoch"])
    own = ckpt.get("results_row")
    kept = [r for r in rows if r.get("epoch", -1) < epoch or (own is None and r.get("epoch") == epoch)]
    return kept + [dict(own)] if own is not None else kept


def _csv_text(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _yaml_dump(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)
