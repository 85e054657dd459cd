"""ultralytics/yolov5 checkpoints (yolov5s.pt, a run's best.pt) read as D3N detector checkpoints.

Their files pickle the whole model (`models.yolo.DetectionModel` from a git checkout or torch.hub,
`yolov5.models.yolo...` from the pip package); `models.safe_pickle` reads them without running anything.
From the pickled model only its tensors, its YAML dict, its class names and its stride are taken; the
network is rebuilt from the YAML by our own parser and the tensors are loaded by name (the keys are the same
one for one; our Detect adds its `stride` buffer). Detect's `anchors` buffer is taken as stored, in stride
units, so anchors that AutoAnchor changed come along.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.registry import BLOCKS
from models.safe_pickle import PickledObject, read_pickled_checkpoint
from models.yolo import MODEL_KEYS
from utils.checkpoints import FORMAT, CheckpointError

SOURCE = "ultralytics/yolov5"
MODEL_MODULES = ("models.yolo.", "yolov5.models.yolo.")  # git checkout / torch.hub, and the pip package
MODEL_CLASSES = {"DetectionModel": "detection", "Model": "detection", "SegmentationModel": "segmentation"}
DROPPED_BUFFERS = ("anchor_grid",)  # v5.0's Detect kept pixel anchors as a buffer too; ours derives them


def _unsupported(path: Path, refs: set[str], obj: Any) -> str | None:
    """Why a readable pickle is not an ultralytics/yolov5 detector we can rebuild, or None when it is one."""
    if any(r.startswith("ultralytics.") for r in refs):
        return ("an ultralytics 8.x checkpoint (YOLOv8/YOLO11 or 'yolov5u': an anchor-free head, another "
                "architecture); D3N reads ultralytics/yolov5 v5.0-v7.0 files such as yolov5s.pt")
    if not isinstance(obj, dict) or not isinstance(obj.get("model") or obj.get("ema"), PickledObject):
        return "not a YOLOv5 checkpoint (no pickled 'model' entry)"
    net = obj.get("ema") or obj["model"]
    module, _, name = net.ref.rpartition(".")
    if not net.ref.startswith(MODEL_MODULES) or name not in MODEL_CLASSES:
        kind = "a classification model" if name == "ClassificationModel" else f"a {net.ref}"
        return f"holds {kind}, not an ultralytics/yolov5 detection or segmentation model"
    if not isinstance(net.state, dict) or not isinstance(net.state.get("yaml"), dict):
        return f"its {name} carries no model YAML (saved by a YOLOv5 older than v5.0?)"
    return None


def _check_yaml(cfg: dict, path: Path) -> dict:
    """The model YAML with only the keys our parser reads; blocks and options it cannot build are refused."""
    unknown = sorted(set(cfg) - MODEL_KEYS - {"yaml_file"})
    if unknown:
        raise CheckpointError(f"{path}: its model YAML sets {', '.join(map(str, unknown))}, which D3N's parser does "
                              "not apply (e.g. a custom activation); it would not compute the same outputs")
    rows = [*(cfg.get("backbone") or []), *(cfg.get("head") or [])]
    missing = sorted({str(r[2]) for r in rows if isinstance(r, list) and len(r) == 4 and str(r[2]) not in BLOCKS})
    if missing:
        raise CheckpointError(f"{path}: an ultralytics/yolov5 model with blocks D3N does not have ({', '.join(missing)});"
                              " standard v5.0-v7.0 YAMLs (Conv, C3, SPPF, Focus, SPP, Detect, Segment) are supported")
    return {k: v for k, v in cfg.items() if k in MODEL_KEYS or k == "yaml_file"}


def module_tensors(net: PickledObject, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state_dict of a pickled nn.Module tree: parameters, then persistent buffers, then each child's."""
    state = net.state if isinstance(net.state, dict) else {}
    out: dict[str, torch.Tensor] = {}
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if isinstance(value, torch.Tensor) and name not in skip and name not in DROPPED_BUFFERS:
                out[prefix + name] = value.float() if value.is_floating_point() else value.clone()
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, PickledObject):
            out.update(module_tensors(child, f"{prefix}{name}."))
    return out


def _with_stride(tensors: dict[str, torch.Tensor], stride: torch.Tensor) -> dict[str, torch.Tensor]:
    """Add our Detect's `stride` buffer beside its `anchors` (their model keeps the stride on the model)."""
    head = next((k[: -len("anchors")] for k in tensors if k.endswith(".anchors")), None)
    if head is None:
        raise CheckpointError("its model has no Detect anchors")
    return {**tensors, f"{head}stride": stride.float().reshape(-1)}


def _names(names: Any, nc: int) -> list[str] | None:
    if isinstance(names, dict):
        names = [names[i] for i in sorted(names) if isinstance(i, int)]
    return [str(n) for n in names] if isinstance(names, (list, tuple)) and len(names) == nc else None


def read_yolov5_checkpoint(path: str | Path) -> dict[str, Any]:
    """A D3N detector checkpoint dict (what `utils.checkpoints.load_checkpoint` returns for ours) read from an
    ultralytics/yolov5 file: `state_dict` from its `model`, `ema` from its `ema` when present (stripped files
    hold the EMA in `model`), no training state. `imported_from` says what the file was."""
    path = Path(path)
    obj, refs = read_pickled_checkpoint(path)
    reason = _unsupported(path, refs, obj)
    if reason:
        raise CheckpointError(f"{path}: {reason}")
    net = obj.get("ema") or obj["model"]
    attrs = net.state
    cfg = _check_yaml(attrs["yaml"], path)
    stride = attrs.get("stride")
    if not isinstance(stride, torch.Tensor):
        raise CheckpointError(f"{path}: its model carries no stride tensor")
    try:
        weights = {key: _with_stride(module_tensors(m), stride) if isinstance(m, PickledObject) else None
                   for key, m in (("state_dict", obj.get("model")), ("ema", obj.get("ema")))}
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    kind = MODEL_CLASSES[net.ref.rpartition(".")[2]]
    which = "EMA" if obj.get("ema") is not None else "model"
    return {"format": FORMAT, "kind": "detector", "model_yaml": cfg, "names": _names(attrs.get("names"), cfg.get("nc")),
            "stride": stride.float().tolist(), "state_dict": weights["state_dict"] or weights["ema"],
            "ema": weights["ema"], "imported_from": f"{SOURCE} {kind} model {net.ref}, {which} weights"}
