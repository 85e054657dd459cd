"""One lane of a `pipeline --jobs 2` run, in its own process; the pipeline starts it, users do not.

    python -m d3n_ext.experiments.lane_worker {baseline,d3n} <out>/lanes/options.json

The JSON holds the pipeline's options as run (a --labels subset already chosen), the data stage 1 learns
from, the pipeline's torch thread count (kept, so the weights equal a sequential run's) and the run's start
time (so the stage lines count minutes from the command's start).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from d3n_ext.experiments.pipeline import PipelineOptions, train_baseline_lane, train_d3n_lane
from d3n_ext.experiments.progress import StageProgress
from engine.trainer import StopTraining
from utils.cli import exit_on_user_error
from utils.logging import set_logging

LANES = ("baseline", "d3n")


def build_parser() -> argparse.ArgumentParser:
    """The worker's two arguments; parses nothing."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lane", choices=LANES, help="which lane: baseline (baseline, self-distilled student) or d3n "
                                                "(stage 1, teacher, D3N student)")
    ap.add_argument("spec", help="the options.json the pipeline wrote into <out>/lanes")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    lane, spec = args.lane, json.loads(Path(args.spec).read_text())
    set_logging(True)
    torch.set_num_threads(spec["threads"])  # the pipeline's own: the weights are then the sequential run's
    p = PipelineOptions(**spec["options"])
    progress = StageProgress(spec["stages"], spec["start"])
    if lane == "baseline":
        exit_on_user_error(lambda: train_baseline_lane(p, progress), extra=(StopTraining,))
    else:
        progress.index = spec["baseline_stages"]  # numbered as in a sequential run
        exit_on_user_error(lambda: train_d3n_lane(p, spec["stage1_data"], progress), extra=(StopTraining,))


if __name__ == "__main__":
    main()
