"""One line per stage and epoch while the pipeline runs: where it is, how long so far, how long this stage has left.

    stage 3/6 teacher · epoch 4/12 · 6.1 min elapsed · ~5 min left in this stage
"""

from __future__ import annotations

import logging
import time

LOGGER = logging.getLogger("d3n_ext.experiments.pipeline")


class StageProgress:
    """Counts the pipeline's stages; `epoch_done` is a Trainer epoch callback (rank 0)."""

    def __init__(self, total: int, start: float | None = None):
        self.total, self.index, self.name = total, 0, ""
        self.start = time.time() if start is None else start
        self.stage_start, self.first_epoch, self.epochs = self.start, 0, 0

    def elapsed(self) -> float:
        return (time.time() - self.start) / 60

    def begin(self, name: str, epochs: int = 0, note: str = "") -> None:
        self.index, self.name, self.epochs = self.index + 1, name, epochs
        self.stage_start, self.first_epoch = time.time(), -1
        LOGGER.info("stage %d/%d %s%s · %.1f min elapsed", self.index, self.total, name, f" · {note}" if note else "",
                    self.elapsed())

    def epoch_done(self, epoch: int, fitness: float | None) -> None:
        if self.first_epoch < 0:  # the first epoch this process trained (a resumed stage starts late)
            self.first_epoch = epoch
        done = epoch + 1 - self.first_epoch
        per_epoch = (time.time() - self.stage_start) / max(done, 1)
        left = per_epoch * (self.epochs - epoch - 1) / 60
        LOGGER.info("stage %d/%d %s · epoch %d/%d · %.1f min elapsed · ~%.0f min left in this stage", self.index,
                    self.total, self.name, epoch + 1, self.epochs, self.elapsed(), left)
