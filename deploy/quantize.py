"""Static int8 post-training quantization of an exported ONNX detector, and the mAP check that judges it.

ONNX Runtime's static quantizer with weights int8 per output channel and activations uint8 (U8S8,
the fast path of its x86 kernels; S8S8 activations measured ~2.8x slower here), min-max ranges
calibrated on letterboxed images of the data YAML's train split. The Detect head stays fp32: its
1x1 convolutions are a sliver of the compute, and its decoding writes boxes in pixels (0..640),
which an 8-bit grid would round to 2.5-pixel steps at 640.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from deploy.backends import ExportMetadata, load_backend
from utils.augmentations import letterbox
from utils.files import atomic_write_bytes
from utils.logging import quieter
from utils.sources import read_image

LOGGER = logging.getLogger(__name__)

INT8_FORMATS = ("qdq", "qoperator")  # QuantizeLinear/DequantizeLinear pairs, or QLinear* operators


def calibration_files(files: list[Path], n: int = 64) -> list[Path]:
    """n images spread evenly over a split (not its first n: generated and sorted splits drift)."""
    if not files:
        raise ValueError("calibration: the split has no images")
    idx = np.linspace(0, len(files) - 1, min(n, len(files))).round().astype(int)
    return [files[i] for i in sorted(set(idx.tolist()))]


class LetterboxReader(CalibrationDataReader):
    """Feeds calibration images as the detector sees them: letterboxed, RGB, 0-1, (1, 3, h, w)."""

    def __init__(self, files: list[Path], input_name: str, hw: tuple[int, int]):
        self.files, self.input_name, self.hw = list(files), input_name, hw
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        while self.position < len(self.files):
            path = self.files[self.position]
            self.position += 1
            im = read_image(path)  # the readers' one rule: a truncated JPEG is used with a warning
            if im is None:
                LOGGER.warning("WARNING: calibration: skipping unreadable image %s", path)
                continue
            im = letterbox(im, self.hw, auto=False)[0]
            x = im[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0  # (1, 3, h, w)
            return {self.input_name: np.ascontiguousarray(x)}
        return None

    def rewind(self) -> None:
        self.position = 0


def kept_fp32_nodes(proto) -> list[str]:
    """Names of the nodes of the first and last model layers, exported as '/.../model.<i>/...'.

    The Detect head's outputs are boxes and scores, and the first conv reads raw pixels; quantizing
    either costs accuracy out of proportion to its share of the time (yolov5n at 256 px on the synthetic
    val split: mAP@0.5 -2.2 points with only the head kept fp32, +0.2 with both)."""
    layer = re.compile(r"/model\.(\d+)/")
    indices = [int(m.group(1)) for n in proto.graph.node if (m := layer.search(n.name))]
    if not indices:
        raise ValueError("int8: cannot find the model's layers in the ONNX graph (was it made by export.py?)")
    kept = (f"/model.{min(indices)}/", f"/model.{max(indices)}/")
    return [n.name for n in proto.graph.node if any(k in n.name for k in kept)]


def quantize_onnx(src: str | Path, dst: str | Path, calib: list[Path], fmt: str = "qdq") -> Path:
    """Write the int8 version of the fp32 export `src` to `dst` (atomically), metadata carried over."""
    if fmt not in INT8_FORMATS:
        raise ValueError(f"int8 format {fmt!r}: expected one of {', '.join(INT8_FORMATS)}")
    src, dst = Path(src), Path(dst)
    source = load_backend(src)  # checks the file and reads ExportMetadata
    meta: ExportMetadata = source.meta
    if meta.half or meta.int8:
        raise ValueError(f"{src}: quantize an fp32 export (this one is {'fp16' if meta.half else 'int8'})")
    reader = LetterboxReader(calib, source.input_name, meta.imgsz)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".int8-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        # ONNX shape inference and graph clean-up; ORT's symbolic (sympy) pass takes ~20 s on dynamic graphs and
        # leaves sym_shape_infer_temp.onnx in the working directory when it gives up, so it is skipped
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        excluded = kept_fp32_nodes(onnx.load(str(prepared)))
        with quieter(""):
            quantize_static(str(prepared), str(quantized), reader,
                            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            nodes_to_exclude=excluded)
        proto = onnx.load(str(quantized))
    del proto.metadata_props[:]
    meta.int8 = fmt
    for key, value in meta.to_strings().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write_bytes(dst, proto.SerializeToString())
    LOGGER.info("int8 (%s): %s, calibrated on %d images, first layer and Detect head kept fp32 (%d nodes)",
                fmt, dst, len(calib), len(excluded))
    return dst
