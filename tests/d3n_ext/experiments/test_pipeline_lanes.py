"""--jobs 2: the two lanes train in two processes and give the very weights and table of a sequential run."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from d3n_ext.experiments import pipeline
from d3n_ext.experiments.lanes import LaneError, run_side_by_side
from tests.scripts.conftest import make_dataset


def test_two_lanes_give_the_weights_of_one_after_another(tmp_path):
    data = make_dataset(tmp_path / "synth", n_train=8, n_val=4, size=96, n_test=4)
    common = ["--data", str(data), "--epochs", "1", "--imgsz", "64", "--batch-size", "4", "--workers", "0",
              "--detect-source", str(data.parent / "images" / "val"), "--stage1", "ddpm_train.iterations=2",
              "vae.epochs=1", "--quiet"]
    sequential = pipeline.main([*common, "--out", str(tmp_path / "one")])
    side_by_side = pipeline.main([*common, "--out", str(tmp_path / "two"), "--jobs", "2"])
    assert [{k: v for k, v in r.items() if k not in ("weights", "CPU ms/img")} for r in sequential] == \
           [{k: v for k, v in r.items() if k not in ("weights", "CPU ms/img")} for r in side_by_side]
    for arm in ("baseline", "self-distilled", "teacher", "student"):
        a = torch.load(tmp_path / "one" / arm / "weights" / "best.pt", weights_only=True)["state_dict"]
        b = torch.load(tmp_path / "two" / arm / "weights" / "best.pt", weights_only=True)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), arm
    logs = tmp_path / "two" / "lanes"
    assert "stage 1/6 baseline" in (logs / "baseline.log").read_text()
    assert "stage 4/6 teacher" in (logs / "d3n.log").read_text()  # numbered as in the sequential run
    assert json.loads((tmp_path / "two" / "table.json").read_text())["options"]["jobs"] == 2


def test_a_failing_lane_stops_the_other_and_is_one_line(tmp_path):
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    failing = [sys.executable, "-c", "print('stage 1/2 x'); raise SystemExit('error: bad input.yaml')"]
    shown = []
    with pytest.raises(LaneError, match=r"the d3n lane failed \(exit 1\); its log .*d3n.log ends: error: bad input.yaml"):
        run_side_by_side({"baseline": sleeper, "d3n": failing}, tmp_path, keep=lambda s: s.startswith("stage "),
                         show=shown.append, poll=0.1)
    assert shown == ["stage 1/2 x"]


@pytest.mark.parametrize("argv, message", [(["--jobs", "3"], "--jobs 3: expected 1"),
                                           (["--jobs", "2", "--teacher-init", "baseline"], "use --jobs 1")])
def test_impossible_jobs_are_one_line(argv, message):
    with pytest.raises(SystemExit, match=message):
        pipeline.main(argv)
