"""Detector checkpoints: save a Model as YAML dict + state_dict, rebuild it without pickled classes."""

from __future__ import annotations

import functools
import logging
import zipfile
from pathlib import Path
from typing import Any

import torch

from models.yolo import Model, ModelConfigError, reads_side_inputs
from models.yolov5_checkpoint import read_yolov5_checkpoint
from utils.checkpoints import CheckpointError, UnreadableCheckpoint, load_checkpoint, save_checkpoint
from utils.torch_utils import de_parallel

LOGGER = logging.getLogger(__name__)


def model_payload(model: torch.nn.Module, ema: torch.nn.Module | None = None, **extra: Any) -> dict[str, Any]:
    """The dict a detector checkpoint holds; `extra` carries training state (optimizer, epoch, ...)."""
    m = de_parallel(model)
    return {
        "kind": "detector",
        "model_yaml": m.yaml,
        "names": list(m.names),
        "stride": m.stride.tolist(),
        "state_dict": {k: v.detach().cpu() for k, v in m.state_dict().items()},
        "ema": None if ema is None else {k: v.detach().cpu() for k, v in de_parallel(ema).state_dict().items()},
        **extra,
    }


def save_model(path: str | Path, model: torch.nn.Module, ema: torch.nn.Module | None = None, **extra: Any) -> None:
    save_checkpoint(model_payload(model, ema, **extra), path)


def _detect_index(state: dict[str, torch.Tensor]) -> str | None:
    """'model.<i>.' of the Detect head in a state_dict (the row holding the `anchors` buffer)."""
    return next((k[: -len("anchors")] for k in state if k.startswith("model.") and k.endswith(".anchors")), None)


def _detect_renamed(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with its Detect head's keys moved to the row where `own` has its Detect.

    A hybrid teacher's YAML adds rows before Detect (yolov5n's Detect is row 24, yolov5n-d3n's 36), so
    warm-starting it from a plain checkpoint needs the head matched by role, not by row number.
    """
    theirs, ours = _detect_index(state), _detect_index(own)
    if theirs is None or ours is None or theirs == ours:
        return state
    return {(ours + k[len(theirs):] if k.startswith(theirs) else k): v for k, v in state.items()
            if not k.startswith(ours)}


def transfer_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[int, int, str]:
    """Load every tensor of `state` whose name and shape fit `model` -> (loaded, model's tensors, first misfit).

    The misfit names the first model tensor left as initialised, with both shapes, so a warning about a
    partial transfer can say where the two architectures part.
    """
    own = model.state_dict()
    state = _detect_renamed(state, own)
    fit = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    model.load_state_dict(fit, strict=False)
    misfit = next((k for k in own if k not in fit), None)
    if misfit is None:
        return len(fit), len(own), "none"
    theirs = tuple(state[misfit].shape) if misfit in state else "absent"
    return len(fit), len(own), f"{misfit} {tuple(own[misfit].shape)} vs {theirs}"


def build_from_checkpoint(ckpt: dict[str, Any], path: str | Path, use_ema: bool = True) -> Model:
    """Rebuild the Model a checkpoint describes and load its weights (EMA weights when present)."""
    model_yaml = ckpt.get("model_yaml")
    if not isinstance(model_yaml, dict):
        raise CheckpointError(f"{path}: detector checkpoint without 'model_yaml'")
    try:
        model = Model(model_yaml)
    except ModelConfigError as e:
        if reads_side_inputs(model_yaml) and "unknown module" in str(e):
            raise CheckpointError(f"{path}: a model with side inputs (a D3N teacher) whose blocks are not loaded: "
                                  "pass --latents <feature repository>") from None
        raise CheckpointError(f"{path}: cannot rebuild its model ({e})") from None
    state = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt.get("state_dict")
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: weights do not fit its model ({first[:200]})") from None
    model.names = checkpoint_names(ckpt, model.detect.nc, path)
    return model


def checkpoint_names(ckpt: dict[str, Any], nc: int, path: str | Path) -> list[str]:
    """The class names a checkpoint stores, one per class (scripts index them by class id)."""
    names = ckpt.get("names")
    if names is None:
        return [str(i) for i in range(nc)]
    if not isinstance(names, (list, tuple)) or len(names) != nc:
        count = len(names) if isinstance(names, (list, tuple, dict)) else type(names).__name__
        raise CheckpointError(f"{path}: 'names' holds {count} class names but the model has nc={nc}; "
                              "the checkpoint was edited or damaged: re-save it with one name per class")
    return [str(n) for n in names]


def read_detector_checkpoint(path: str | Path) -> dict[str, Any]:
    """A detector checkpoint dict from our own file (weights_only) or, recognised by its content, from an
    ultralytics/yolov5 file (yolov5s.pt, a run's best.pt), imported by a reader that runs nothing in it.

    Every script's --weights goes through here, so each takes the files YOLOv5 users already have.
    """
    try:
        return load_checkpoint(path, expect="detector")
    except UnreadableCheckpoint:
        if not zipfile.is_zipfile(path):  # truncated, or not a PyTorch file at all: the first answer stands
            raise
    stat = Path(path).stat()
    return dict(imported_yolov5(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=2)
def imported_yolov5(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    """One import (and one notice) per file, however many steps of a command read it (a teacher is read
    for its repository, its head and its weights)."""
    ckpt = read_yolov5_checkpoint(path)
    LOGGER.info("imported ultralytics/yolov5 checkpoint %s (%s); only tensors, YAML, names and stride were "
                "read, nothing in the file was run", path, ckpt["imported_from"])
    return ckpt


def load_model(path: str | Path, device: str | torch.device = "cpu", fuse: bool = False, use_ema: bool = True) -> Model:
    """Load a detector checkpoint (ours, or an ultralytics/yolov5 file) for inference: eval mode, optionally fused."""
    ckpt = read_detector_checkpoint(path)
    model = build_from_checkpoint(ckpt, path, use_ema).to(device).eval()
    return model.fuse() if fuse else model
