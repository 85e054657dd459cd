"""Detector checkpoints: save a Model as YAML dict + state_dict, rebuild it without pickled classes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from models.yolo import Model, ModelConfigError
from utils.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
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


def build_from_checkpoint(ckpt: dict[str, Any], path: str | Path, use_ema: bool = True) -> Model:
    """Rebuild the Model a checkpoint describes and load its weights (EMA weights when present)."""
    try:
        model = Model(ckpt["model_yaml"])
    except ModelConfigError as e:
        raise CheckpointError(f"{path}: cannot rebuild its model ({e})") from None
    except KeyError:
        raise CheckpointError(f"{path}: detector checkpoint without 'model_yaml'") from None
    state = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt.get("state_dict")
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: weights do not fit its model ({first[:200]})") from None
    model.names = list(ckpt.get("names") or model.names)
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu", fuse: bool = False, use_ema: bool = True) -> Model:
    """Load a detector checkpoint (weights_only) for inference: eval mode, optionally fused."""
    ckpt = load_checkpoint(path, expect="detector")
    model = build_from_checkpoint(ckpt, path, use_ema).to(device).eval()
    return model.fuse() if fuse else model
