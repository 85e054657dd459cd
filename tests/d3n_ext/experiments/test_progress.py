"""The pipeline's stage lines: which stage of how many, which epoch, time so far and the stage's time left."""

from __future__ import annotations

import logging

from d3n_ext.experiments import progress as progress_module
from d3n_ext.experiments.progress import StageProgress


def test_stage_lines_count_stages_and_estimate_the_rest(caplog, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "time", lambda: now[0])
    p = StageProgress(6)
    with caplog.at_level(logging.INFO, logger="d3n_ext.experiments.pipeline"):
        now[0] = 60.0
        p.begin("teacher", 12, note="12 epochs")
        now[0] = 120.0
        p.epoch_done(0, 0.1)  # 60 s for the first epoch: 11 epochs, 11 minutes to go
        now[0] = 180.0
        p.epoch_done(1, 0.2)
        p.begin("student", 4)
        now[0] = 200.0
        p.epoch_done(2, 0.3)  # resumed at epoch 3 of 4: timed from here, one epoch left
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "stage 1/6 teacher · 12 epochs · 1.0 min elapsed"
    assert lines[1] == "stage 1/6 teacher · epoch 1/12 · 2.0 min elapsed · ~11 min left in this stage"
    assert lines[2] == "stage 1/6 teacher · epoch 2/12 · 3.0 min elapsed · ~10 min left in this stage"
    assert lines[3] == "stage 2/6 student · 3.0 min elapsed"
    assert lines[4] == "stage 2/6 student · epoch 3/4 · 3.3 min elapsed · ~0 min left in this stage"
