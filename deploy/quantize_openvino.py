"""int8 OpenVINO IR by NNCF post-training quantization (`export.py --include openvino --int8`).

NNCF's default recipe (symmetric int8 weights per channel, activations per tensor, mixed preset: asymmetric
activations where zero is not the bottom of the range) calibrated on letterboxed images of the data YAML's
train split. As for ONNX (deploy/quantize.py), the first layer, which reads raw pixels, and the Detect head,
whose outputs are pixel boxes and scores, stay in floating point.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from deploy.backends import load_backend
from deploy.export import import_openvino, save_openvino
from deploy.quantize import LetterboxReader
from utils.logging import quieter

LOGGER = logging.getLogger(__name__)
LAYER = re.compile(r"/model\.(\d+)/")  # layer i's operations are named '/model/model.<i>/...' (from the ONNX graph)


def kept_float_ops(model) -> list[str]:
    """Names of the convolutions (and the rest) of the model's first and last layers."""
    names = [op.get_friendly_name() for op in model.get_ops()]
    indices = [int(m.group(1)) for n in names if (m := LAYER.search(n))]
    if not indices:
        raise ValueError("int8: cannot find the model's layers in the OpenVINO IR (was it made by export.py?)")
    kept = (f"/model.{min(indices)}/", f"/model.{max(indices)}/")
    return [n for n in names if any(k in n for k in kept)]


def calibration_inputs(files: list[Path], hw: tuple[int, int]) -> list[np.ndarray]:
    """The calibration images as the detector sees them: letterboxed, RGB, 0-1, (1, 3, h, w) float32."""
    reader, items = LetterboxReader(files, "images", hw), []
    while (item := reader.get_next()) is not None:
        items.append(item["images"])
    if not items:
        raise ValueError("int8: none of the calibration images could be read")
    return items


def quantize_openvino(src: str | Path, dst: str | Path, calib: list[Path]) -> Path:
    """Write the int8 IR of the fp32 OpenVINO export folder `src` into the folder `dst`, metadata carried over."""
    ov = import_openvino()
    try:
        import nncf
    except ImportError:
        raise ValueError("--int8 for OpenVINO needs NNCF: pip install nncf") from None
    source = load_backend(src)
    meta = source.meta
    if meta.int8 or meta.half:
        raise ValueError(f"{src}: quantize an fp32 OpenVINO export (this one is {'int8' if meta.int8 else 'fp16'})")
    model = ov.Core().read_model(str(next(Path(source.path).glob("*.xml"))))
    kept = kept_float_ops(model)
    items = calibration_inputs(calib, meta.imgsz)
    nncf.set_log_level(logging.ERROR)  # its progress bars and notes are not for our users
    with quieter(""), contextlib.redirect_stdout(io.StringIO()):  # NNCF draws progress bars on stdout
        quantized = nncf.quantize(model, nncf.Dataset(items), preset=nncf.QuantizationPreset.MIXED,
                                  subset_size=len(items), ignored_scope=nncf.IgnoredScope(names=kept, validate=False))
    folder = save_openvino(quantized, replace(meta, int8="nncf"), Path(dst))
    LOGGER.info("int8 (NNCF): %s, calibrated on %d images, first layer and Detect head kept in float (%d ops)",
                folder, len(items), len(kept))
    return folder
