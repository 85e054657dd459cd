"""Training hyper-parameters (YOLOv5's hyp YAML keys), loaded once into a frozen object.

Unknown keys are rejected with the file name so a typo never silently falls back to a default.
Values derived from them (loss gains scaled by layers, classes and image size) live elsewhere
(`utils.loss.LossGains`), never written back here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

from utils.config import read_yaml_mapping, reject_unknown

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HYP = REPO_ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"


@dataclass(frozen=True)
class Hyp:
    lr0: float = 0.01  # initial learning rate (SGD 1e-2, Adam 1e-3)
    lrf: float = 0.01  # final learning rate = lr0 * lrf
    momentum: float = 0.937  # SGD momentum / Adam beta1
    weight_decay: float = 0.0005  # on conv/linear weights only
    warmup_epochs: float = 3.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    box: float = 0.05  # box loss gain; also the mask loss gain of segmentation (as YOLOv5-seg)
    cls: float = 0.5  # class loss gain
    cls_pw: float = 1.0  # class BCE positive weight
    obj: float = 1.0  # objectness loss gain (scales with pixels)
    obj_pw: float = 1.0  # objectness BCE positive weight
    iou_t: float = 0.20  # IoU training threshold (unused by the loss, kept for YAML compatibility)
    anchor_t: float = 4.0  # anchor-multiple threshold for matching
    fl_gamma: float = 0.0  # focal loss gamma (0 = plain BCE)
    hsv_h: float = 0.015  # HSV hue augmentation (fraction)
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    degrees: float = 0.0  # rotation (+/- deg)
    translate: float = 0.1  # translation (+/- fraction)
    scale: float = 0.5  # scale gain (+/-)
    shear: float = 0.0  # shear (+/- deg)
    perspective: float = 0.0  # perspective (+/- fraction), 0-0.001
    flipud: float = 0.0  # probability of a vertical flip
    fliplr: float = 0.5  # probability of a horizontal flip
    mosaic: float = 1.0  # probability of a 4-image mosaic
    mixup: float = 0.0  # probability of mixup
    copy_paste: float = 0.0  # segment copy-paste (not implemented; must be 0)
    anchors: float = 3.0  # anchors per output grid (informational; the model YAML decides)
    nbs: float = 64.0  # nominal batch size: gradients accumulate up to it, weight decay scales with it
    label_smoothing: float = 0.0  # set by --label-smoothing

    def replace(self, **changes) -> "Hyp":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        """The log line, each value as its YAML wrote it (Python's shortest repr: 0.16 stays 0.16)."""
        return ", ".join(f"{k}={v:g}" if float(v).is_integer() else f"{k}={v!r}" for k, v in self.as_dict().items())


def load_hyp(path: str | Path | None = None) -> Hyp:
    """Read a hyp YAML; every key must be a known Hyp field, every value a number."""
    path = Path(path) if path else DEFAULT_HYP
    if not path.is_file() and (REPO_ROOT / "data" / "hyps" / path.name).is_file():
        path = REPO_ROOT / "data" / "hyps" / path.name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: hyp YAML not found")
    raw = read_yaml_mapping(path, "a mapping of hyper-parameters", empty_ok=True)
    reject_unknown(raw, [f.name for f in fields(Hyp)], str(path), what="hyper-parameter(s)")
    bad = [k for k, v in raw.items() if not isinstance(v, (int, float)) or isinstance(v, bool)]
    if bad:
        raise ValueError(f"{path}: hyper-parameter(s) {bad} must be numbers")
    hyp = Hyp(**{k: float(v) for k, v in raw.items()})
    if hyp.copy_paste:
        raise ValueError(f"{path}: copy_paste (segment copy-paste) is not implemented; set it to 0")
    return hyp
