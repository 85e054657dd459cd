"""TensorBoard event files beside results.csv, so `tensorboard --logdir runs/train` shows every run.

Every results.csv column is a scalar per epoch (losses, P/R/mAP of boxes and masks, learning rates,
the fusion blocks' branch weights of Fig. 11); at the end the run's images join them (label statistics,
the first train and val batches, PR/F1 curves, the confusion matrix, results.png). Rank 0 only; the
trainer's `--no-tensorboard` turns it off.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

LOGGER = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".png")


class TensorBoardLog:
    """One SummaryWriter for a run directory; without the tensorboard package it warns once and does nothing."""

    def __init__(self, save_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # torch's module needs the separate tensorboard package
            LOGGER.warning("WARNING: TensorBoard logging off (%s); pip install tensorboard, or pass --no-tensorboard", e)
            self.writer = None
            return
        self.writer = SummaryWriter(str(save_dir))
        LOGGER.info("TensorBoard: tensorboard --logdir %s", Path(save_dir).parent)

    def scalars(self, row: dict, epoch: int) -> None:
        """A results.csv row: each numeric column as the scalar of its name."""
        if self.writer is None:
            return
        for name, value in row.items():
            if name != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(name, float(value), epoch)
        self.writer.flush()

    def images(self, save_dir: Path, step: int) -> None:
        """The run's plots and batch mosaics, each under its file's stem, as the files' own PNG/JPEG bytes.

        TensorBoard stores images encoded; handing it the file skips a decode and a PNG re-encode of
        every plot (3.5 s of a small run's end on a 2-core CPU, for the same picture).
        """
        if self.writer is None:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        for path in sorted(p for p in Path(save_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            data = path.read_bytes()
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # readable? its size
            if image is None:
                continue
            channels = image.shape[2] if image.ndim == 3 else 1  # TensorBoard: 1 gray, 3 RGB, 4 RGBA
            encoded = Summary.Image(height=image.shape[0], width=image.shape[1], colorspace=channels,
                                    encoded_image_string=data)
            self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=path.stem, image=encoded)]), step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
