"""Hyper-parameter search (`train.py --evolve [N]`, `train_distill.py --evolve [N]`) on Optuna.

Each trial is a short training run with hyper-parameters drawn from YOLOv5's evolve search space (learning
rate and schedule, momentum, decay, warm-up, loss gains, anchor threshold, colour and geometric
augmentation); its score is YOLOv5's fitness, 0.1 mAP@0.5 + 0.9 mAP@0.5:0.95 on val, reported every validated epoch
so the median pruner stops trials that fall behind. A distillation run adds its λ (`dist_lambda`).

Everything lands in runs/evolve/<--name><N>/ (exp, exp2, ...): trials/<number>/ (each run), evolve.csv
(every trial), and hyp_evolve.yaml (the best trial's full hyp, ready for --hyp) plus Optuna's plots. The study lives in an
Optuna storage: by default SQLite beside them; `--evolve-storage <RDB URL>` (sqlite:///study.db, or a
PostgreSQL/MySQL URL) lets several processes or machines work on one study, and naming an existing study
again continues it.

Each trial draws from its own random stream, seeded from `--seed` and the trial's number in the study. The
storage hands every number out once, so processes and machines sharing a study never repeat each other's
start-up points (a sampler seeded with `--seed` alone made every process draw the same ones), and a study
replayed with the same seed draws the same hyps for the same trial numbers.
"""

from __future__ import annotations

import csv
import io
import logging
import random
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from engine.tasks import DetectionTask, task_from_state
from engine.trainer import Trainer, TrainOptions, check_run_inputs
from utils.files import atomic_write_text, increment_path
from utils.hyp import load_hyp
from utils.text import plain_text

LOGGER = logging.getLogger(__name__)

# (low, high, log scale) per hyp key: YOLOv5's evolve bounds for the keys this project's Hyp trains with
SEARCH_SPACE: dict[str, tuple[float, float, bool]] = {
    "lr0": (1e-5, 1e-1, True), "lrf": (0.01, 1.0, False), "momentum": (0.6, 0.98, False),
    "weight_decay": (0.0, 0.001, False), "warmup_epochs": (0.0, 5.0, False), "warmup_momentum": (0.0, 0.95, False),
    "warmup_bias_lr": (0.0, 0.2, False), "box": (0.02, 0.2, False), "cls": (0.2, 4.0, False),
    "cls_pw": (0.5, 2.0, False), "obj": (0.2, 4.0, False), "obj_pw": (0.5, 2.0, False),
    "anchor_t": (2.0, 8.0, False), "hsv_h": (0.0, 0.1, False), "hsv_s": (0.0, 0.9, False),
    "hsv_v": (0.0, 0.9, False), "degrees": (0.0, 45.0, False), "translate": (0.0, 0.9, False),
    "scale": (0.0, 0.9, False), "shear": (0.0, 10.0, False), "perspective": (0.0, 0.001, False),
    "flipud": (0.0, 1.0, False), "fliplr": (0.0, 1.0, False), "mosaic": (0.0, 1.0, False), "mixup": (0.0, 1.0, False),
}
DIST_LAMBDA = (0.01, 2.0, True)  # distillation's λ (eq. 7), searched when the task has one


@dataclass
class EvolveOptions:
    trials: int = 300  # this process's trials (several processes on one storage add theirs)
    storage: str = ""  # Optuna RDB URL; '' = sqlite:///<run dir>/study.db
    study: str = "evolve"  # study name within the storage; an existing one is continued
    seed: int | None = None  # with each trial's number, seeds that trial's draws (None: Optuna's randomness)

    def __post_init__(self):
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise ValueError(f"--evolve {self.trials}: expected a positive number of trials (e.g. --evolve 300)")


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ValueError("--evolve needs Optuna: pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def suggest_hyp(trial, base: dict) -> dict:
    """The base hyp with every searchable key drawn for this trial (the first trial keeps the base values)."""
    hyp = dict(base)
    for key, (low, high, log) in SEARCH_SPACE.items():
        if key in hyp:
            hyp[key] = trial.suggest_float(key, low, high, log=log)
    return hyp


def trial_tasks(task: DetectionTask) -> Callable[[object], DetectionTask]:
    """A fresh task per trial, rebuilt from `task`'s state; a distillation's λ is drawn per trial."""
    def make(trial) -> DetectionTask:
        state = dict(task.state())
        if "dist_lambda" in state:
            state["dist_lambda"] = trial.suggest_float("dist_lambda", DIST_LAMBDA[0], DIST_LAMBDA[1], log=DIST_LAMBDA[2])
        return task_from_state(task.kind, state)
    return make


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial `number`'s draws: --seed and the trial number mixed (numpy's SeedSequence), so
    neighbouring seeds or numbers give unrelated streams."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def trial_seeded_sampler(optuna, seed: int | None):
    """Optuna's TPE sampler, re-seeded at the start of every trial from (seed, trial number); TPE keeps no state
    but its random stream (it reads the study's history each time), so a fresh one per trial loses nothing."""

    class TrialSeededTPE(optuna.samplers.BaseSampler):
        def __init__(self):
            self.tpe = optuna.samplers.TPESampler(seed=seed)

        def before_trial(self, study, trial) -> None:
            if seed is not None:
                self.tpe = optuna.samplers.TPESampler(seed=trial_seed(seed, trial.number))
            self.tpe.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self.tpe.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self.tpe.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.tpe.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values) -> None:
            self.tpe.after_trial(study, trial, state, values)

    return TrialSeededTPE()


def open_study(optuna, options: EvolveOptions, storage: str):
    """The study in `storage`, created or continued; a storage that cannot be opened (a bad URL, a database
    driver not installed, a read-only file) is one line naming --evolve-storage."""
    try:
        return _create_study(optuna, study_name=options.study, storage=storage, direction="maximize",
                             load_if_exists=True, sampler=trial_seeded_sampler(optuna, options.seed),
                             pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    except ImportError:
        raise ValueError(f"--evolve-storage {storage}: its database driver is not installed (PostgreSQL: pip install "
                         "psycopg2-binary; MySQL: pip install PyMySQL)") from None
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's and the drivers' errors have no common importable base
        storage_error = type(e).__module__.split(".")[0] in ("sqlalchemy", "sqlite3", "optuna")
        if not storage_error and not isinstance(e, ValueError):
            raise
        raise ValueError(f"--evolve-storage {storage}: cannot open study {options.study!r}: {plain_text(str(e))} "
                         "(expected an RDB URL such as sqlite:///study.db on a writable disk)") from None


def run_evolution(opt: TrainOptions, make_task: Callable[[object], DetectionTask], options: EvolveOptions,
                  project: Path) -> Path:
    """Run `options.trials` trials of `opt` (each a fresh training run of the task `make_task(trial)` builds);
    returns the evolve run directory (project/<--name>, or project/<study> for a shared storage) with evolve.csv
    and hyp_evolve.yaml. The inputs and the storage are checked before any folder is made."""
    optuna = _optuna()
    check_run_inputs(opt)
    base = load_hyp(opt.hyp or None).as_dict()
    if options.storage:
        storage = options.storage
        study = open_study(optuna, options, storage)
        out = _shared_dir(project, options.study)
    else:
        out = increment_path(project / opt.name, exist_ok=opt.exist_ok, mkdir=True)
        storage = f"sqlite:///{(out / 'study.db').resolve()}"
        study = open_study(optuna, options, storage)
    if not study.trials:
        study.enqueue_trial({k: v for k, v in base.items() if k in SEARCH_SPACE})  # the base hyp is trial 0
    LOGGER.info("Evolving %d trials of %d epochs in study %r (%s); results in %s", options.trials, opt.epochs,
                options.study, storage, out)

    def objective(trial) -> float:
        folder = out / "trials"
        hyp_file = folder / f"hyp{trial.number}.yaml"
        atomic_write_text(hyp_file, _yaml(suggest_hyp(trial, base)))
        trial_opt = replace(opt, hyp=str(hyp_file), project=str(folder), name=str(trial.number), exist_ok=True,
                            noplots=True, tensorboard=False, resume=False)
        trainer = Trainer(trial_opt, make_task(trial))

        def report(epoch: int, fitness: float | None) -> None:
            if fitness is None:  # not validated this epoch (--val-interval): nothing to report, not a zero
                return
            trial.report(fitness, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: fitness {fitness:.4f} below the median of earlier trials")

        trainer.epoch_callbacks.append(report)
        trainer.train()
        return trainer.best_fitness

    study.optimize(objective, n_trials=options.trials, catch=())
    write_results(study, base, out)
    return out


RACE_ERRORS = ("OperationalError", "IntegrityError")  # SQLAlchemy's, when processes create one storage at once


def _create_study(optuna, attempts: int = 5, **kwargs):
    """optuna.create_study, retried when another process is creating the same storage's tables or study at the
    same moment (SQLite answers "table ... already exists" or "database is locked" to the loser)."""
    for attempt in range(attempts):
        try:
            return optuna.create_study(**kwargs)
        except Exception as e:  # noqa: BLE001 - the storage's driver errors have no common importable base
            if attempt == attempts - 1 or type(e).__name__ not in RACE_ERRORS or "readonly" in str(e):
                raise
            time.sleep(0.2 + random.random())


def _shared_dir(project: Path, study: str) -> Path:
    """A study shared through a storage keeps one folder per study name, whichever process writes it."""
    out = project / study
    out.mkdir(parents=True, exist_ok=True)
    return out


def _yaml(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)


def write_results(study, base: dict, out: Path) -> None:
    """evolve.csv (every trial of the study), hyp_evolve.yaml (the best complete trial's hyp) and plots."""
    trials = study.trials
    keys = sorted({k for t in trials for k in t.params})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["trial", "state", "fitness", *keys])
    for t in trials:
        writer.writerow([t.number, t.state.name, "" if t.value is None else f"{t.value:.5f}",
                         *(t.params.get(k, "") for k in keys)])
    atomic_write_text(out / "evolve.csv", buffer.getvalue())
    complete = [t for t in trials if t.value is not None]
    if not complete:
        LOGGER.warning("WARNING: no trial of study %r completed; no hyp_evolve.yaml", study.study_name)
        return
    best = max(complete, key=lambda t: t.value)
    hyp = {**base, **{k: v for k, v in best.params.items() if k in base}}
    header = (f"# hyp_evolve.yaml: trial {best.number} of study {study.study_name!r}, fitness {best.value:.5f} "
              f"(0.1 mAP@0.5 + 0.9 mAP@0.5:0.95 on val); use with --hyp\n")
    atomic_write_text(out / "hyp_evolve.yaml", header + _yaml(hyp))
    if "dist_lambda" in best.params:
        LOGGER.info("best dist_lambda: %.4g (pass it as --dist-lambda)", best.params["dist_lambda"])
    LOGGER.info("Best trial %d: fitness %.5f; %s", best.number, best.value, out / "hyp_evolve.yaml")
    _plots(study, out)


def _plots(study, out: Path) -> None:
    """Optuna's optimisation history and parameter importances (matplotlib); a failure is a warning."""
    optuna = _optuna()
    from utils.plots import save_axes

    for name, plot in (("evolve_history.png", optuna.visualization.matplotlib.plot_optimization_history),
                       ("evolve_importances.png", optuna.visualization.matplotlib.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" and "too few trials" notes are not for users
                save_axes(plot(study), out / name)
        except (ValueError, RuntimeError, ImportError, ZeroDivisionError) as e:
            LOGGER.warning("WARNING: %s not drawn: %s", name, e)
