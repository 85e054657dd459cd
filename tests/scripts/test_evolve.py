"""--evolve: an Optuna study of short training runs writes evolve.csv and a hyp_evolve.yaml that --hyp takes;
processes share one study through an RDB storage; train_distill.py searches its λ too."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

import train
import train_distill
from utils.hyp import load_hyp

REPO = Path(__file__).resolve().parents[2]


def _flags(data: Path, cfg: Path, project: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--cfg", str(cfg), "--imgsz", "64", "--batch-size", "8", "--epochs", "1",
            "--workers", "0", "--project", str(project), "--quiet", *extra]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_two_trials_write_a_usable_hyp(tmp_path, tiny_data, tiny_model_yaml):
    out = train.main(_flags(tiny_data, tiny_model_yaml, tmp_path / "evolve", "--evolve", "2", "--hyp",
                            "hyp.cpu-small.yaml"))
    rows = _rows(out / "evolve.csv")
    assert [r["trial"] for r in rows] == ["0", "1"] and all(r["state"] == "COMPLETE" for r in rows)
    base = load_hyp("hyp.cpu-small.yaml")
    assert float(rows[0]["lr0"]) == base.lr0 and float(rows[1]["lr0"]) != base.lr0  # trial 0 is the base hyp
    best = load_hyp(out / "hyp_evolve.yaml")  # ready for --hyp: every key a Hyp field
    assert best.nbs == base.nbs and {best.lr0} <= {float(r["lr0"]) for r in rows}
    assert (out / "trials" / "1" / "weights" / "best.pt").exists() and (out / "study.db").exists()


def test_two_processes_share_one_study(tmp_path, tiny_data, tiny_model_yaml):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    argv = [sys.executable, "train.py", *_flags(tiny_data, tiny_model_yaml, tmp_path / "runs", "--evolve", "1",
                                                 "--evolve-storage", storage, "--evolve-study", "shared")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(argv, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    study = optuna.load_study(study_name="shared", storage=storage)
    assert sorted(t.number for t in study.trials) == [0, 1]
    train.main(_flags(tiny_data, tiny_model_yaml, tmp_path / "runs", "--evolve", "1", "--evolve-storage", storage,
                      "--evolve-study", "shared"))  # naming the study again continues it
    assert len(optuna.load_study(study_name="shared", storage=storage).trials) == 3
    assert len(_rows(tmp_path / "runs" / "shared" / "evolve.csv")) == 3


def test_distillation_searches_lambda(tmp_path, tiny_data, tiny_model_yaml):
    teacher = train.main(_flags(tiny_data, tiny_model_yaml, tmp_path, "--name", "teacher"))
    out = train_distill.main(_flags(tiny_data, tiny_model_yaml, tmp_path / "evolve", "--teacher",
                                    str(teacher / "weights" / "best.pt"), "--evolve", "1"))
    assert float(_rows(out / "evolve.csv")[0]["dist_lambda"]) > 0


def test_a_storage_creation_race_is_retried(monkeypatch):
    from engine import evolve

    class OperationalError(Exception):
        """Named as SQLAlchemy's: what the losing process gets when two create one SQLite storage at once."""

    calls = []

    class FakeOptuna:
        @staticmethod
        def create_study(**kwargs):
            calls.append(kwargs)
            if len(calls) == 1:
                raise OperationalError("table studies already exists")
            return "study"

    monkeypatch.setattr(evolve.time, "sleep", lambda s: None)
    assert evolve._create_study(FakeOptuna, study_name="s") == "study" and len(calls) == 2
    FakeOptuna.create_study = staticmethod(lambda **kwargs: (_ for _ in ()).throw(ValueError("bad direction")))
    with pytest.raises(ValueError, match="bad direction"):  # anything else is not retried
        evolve._create_study(FakeOptuna, study_name="s")


def test_the_pruner_hears_only_validated_epochs(tmp_path, tiny_data, tiny_model_yaml):
    """With --val-interval 2 over 3 epochs, epochs 1 and 2 (the last) are validated; epoch 0 reports nothing
    rather than a fitness of zero that would drag the median down."""
    out = train.main(_flags(tiny_data, tiny_model_yaml, tmp_path / "evolve", "--evolve", "1", "--epochs", "3",
                            "--val-interval", "2"))
    trial = optuna.load_study(study_name=None, storage=f"sqlite:///{out / 'study.db'}").trials[0]
    assert sorted(trial.intermediate_values) == [1, 2]
