"""ultralytics/yolov5, timed beside our code in the same run, when its pip package is importable.

The issues' speed targets are what ultralytics/yolov5 reached on the machine they were first measured
on (FACTS.md). On any other CPU the fair yardstick is the reference itself, timed in the same process on
the same input. Nothing in the project needs this package; the benchmarks use it only with --reference:

    python -m venv --system-site-packages /tmp/refenv
    /tmp/refenv/bin/pip install --no-deps yolov5==7.0.14 ultralytics psutil
    /tmp/refenv/bin/python -m benchmarks.cpu_inference --reference

(`yolov5` is the PyPI packaging of ultralytics/yolov5 v7.0; `--no-deps` keeps it from pulling in its cloud
extras. Its models are built from its own YAMLs with random weights; nothing is downloaded.)
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

INSTALL_HINT = ("ultralytics/yolov5 reference not importable: see benchmarks/reference_yolov5.py "
                "(pip install --no-deps yolov5==7.0.14 ultralytics psutil)")


def quietly(fn: Callable, *args, **kwargs):
    """The reference logs its model tables on stdout and via logging; keep our figures readable."""
    logging.disable(logging.INFO)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return fn(*args, **kwargs)
    finally:
        logging.disable(logging.NOTSET)


def reference_model(cfg: str, nc: int | None = None) -> nn.Module | None:
    """ultralytics/yolov5's Model for a standard YAML name (e.g. 'yolov5s.yaml'); None when not installed."""
    try:
        yolov5_models = quietly(__import__, "yolov5.models.yolo", fromlist=["Model"])
    except Exception:  # ImportError, or the package failing on a missing optional dependency
        return None
    yaml_path = Path(yolov5_models.__file__).parent / Path(cfg).name
    return quietly(yolov5_models.Model, str(yaml_path), nc=nc)


def reference_train_step(model: nn.Module, imgsz: int, nc: int, accumulate: int,
                         lr: float = 0.01) -> Callable[[torch.Tensor, torch.Tensor, int], None]:
    """One step of the reference's train.py loop: forward, its ComputeLoss, backward, and SGD + its EMA every
    `accumulate` steps (what its train.py does at batch 16, nominal batch 64). Hyps: its hyp.scratch-low."""
    from yolov5.utils.loss import ComputeLoss
    from yolov5.utils.torch_utils import ModelEMA

    nl = model.model[-1].nl
    model.hyp = dict(box=0.05 * 3 / nl, cls=0.5 * nc / 80 * 3 / nl, cls_pw=1.0, obj=1.0 * (imgsz / 640) ** 2 * 3 / nl,
                     obj_pw=1.0, anchor_t=4.0, fl_gamma=0.0, label_smoothing=0.0)
    model.train()
    compute_loss = ComputeLoss(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.937, nesterov=True)
    ema = ModelEMA(model)

    def step(imgs: torch.Tensor, targets: torch.Tensor, i: int) -> None:
        loss, _ = compute_loss(model(imgs), targets)
        loss.backward()
        if i % accumulate == 0:
            optimizer.step()
            optimizer.zero_grad()
            ema.update(model)

    return step


def export_reference_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int = 17) -> Path:
    """The reference model (eval, fused) as a static-shape ONNX graph with one output, as its export.py
    writes it (its Detect returns only the decoded predictions when `export` is set)."""
    model.model[-1].export = True
    quietly(torch.onnx.export, model, (example,), str(path), opset_version=opset, input_names=["images"],
            output_names=["output0"], dynamo=False)
    model.model[-1].export = False
    return path
