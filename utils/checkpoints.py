"""Checkpoints that rebuild themselves: plain dicts of tensors and built-in types, no pickled classes.

A checkpoint is loadable with `torch.load(weights_only=True)`: the model is stored as its YAML dict
plus a state_dict, so loading never imports a class by its path (the pain of pickled YOLOv5 files).
"""

from __future__ import annotations

import io
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from utils.files import atomic_write_bytes
from utils.text import plain_text

LOGGER = logging.getLogger(__name__)

FORMAT = "d3n-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or not ours; the message names the file."""


class UnreadableCheckpoint(CheckpointError):
    """torch.load(weights_only=True) refused the file: truncated, or a pickle of classes (another program's)."""


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Serialise `payload` (tensors, dicts, lists, numbers, strings) atomically to `path`."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    expect: str | None = None) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True; one-line errors for missing, truncated or foreign files.

    `expect` names the `kind` the caller needs ("detector", "ddpm", "resvae", ...), so that passing
    a DDPM checkpoint to detect.py says so instead of failing deep inside.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError) as e:
        first = plain_text(str(e)) or type(e).__name__  # PyTorch's messages carry colour codes and pages of advice
        raise UnreadableCheckpoint(f"{path}: not a readable checkpoint (truncated or foreign file: {first[:160]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a D3N checkpoint (expected format {FORMAT!r})")
    if expect is not None and ckpt.get("kind") != expect:
        raise CheckpointError(f"{path}: holds a {ckpt.get('kind')!r} checkpoint, expected {expect!r}")
    return ckpt
