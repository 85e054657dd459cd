"""Deployment back-ends: run a .pt checkpoint, an .onnx or a .torchscript export behind one call.

Predictor (detect.py) and the validator (val.py) need only `model(images) -> decoded (B, N, 5 + nc)` (a
segmenter's: (decoded, prototypes), `nm` telling them apart),
`stride`, `names`, `side_inputs` and the device of `next(model.parameters())`; `load_backend` gives
them that for every format, so the scripts take `--weights model.onnx` unchanged. Exports carry the
class names, strides and input size in their own metadata (ONNX `metadata_props`, TorchScript
`_extra_files`), so they are self-describing without the checkpoint.

A static-shape ONNX export takes exactly its exported size: smaller inputs (detect.py's stride-
multiple letterbox, val.py's rectangular batches) are padded on the right and bottom with the
letterbox grey, which keeps box coordinates, and detections centred in that padding are zeroed;
larger ones are an error. Batches run image by image when the export has a fixed batch of 1.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.loading import load_model
from utils.augmentations import PAD_VALUE
from utils.checkpoints import CheckpointError
from utils.torch_utils import channels_last

LOGGER = logging.getLogger(__name__)

EXPORT_FORMAT = "d3n-export/2"  # /1 kept each field as its own JSON key, "stride" and "names" among them
TORCHSCRIPT_CONFIG = "config.json"  # the _extra_files entry holding ExportMetadata
YOLOV5_TORCHSCRIPT_CONFIG = "config.txt"  # the _extra_files entry ultralytics/yolov5's DetectMultiBackend reads
EXPORT_SUFFIXES = (".onnx", ".torchscript")
OPENVINO_METADATA = "metadata.json"  # beside an OpenVINO IR: ExportMetadata


@dataclass
class ExportMetadata:
    """What an exported detector must carry to be run without its checkpoint."""

    names: list[str]
    stride: list[float]  # per detection level, e.g. [8, 16, 32]
    imgsz: tuple[int, int]  # (h, w) the export was traced at
    batch: int = 1  # traced batch size (any batch when dynamic)
    dynamic: bool = False  # batch, height and width are free
    half: bool = False  # fp16 weights and inputs
    source: str = ""  # the checkpoint it came from
    int8: str = ""  # "qdq" / "qoperator" for quantized ONNX models, "" otherwise
    nm: int = 0  # a segmenter's mask coefficients per row (its second output: the prototypes); 0 for detectors

    def yolov5(self) -> dict[str, Any]:
        """What ultralytics/yolov5's DetectMultiBackend reads: the largest stride as an int, names as {index: name}."""
        return {"stride": int(max(self.stride)), "names": dict(enumerate(self.names))}

    def to_strings(self) -> dict[str, str]:
        """ONNX metadata_props want str -> str: ours as JSON under "d3n", beside YOLOv5's `stride` (int(...) reads
        it) and `names` (ast.literal_eval reads it), so ultralytics/yolov5's detect.py runs our exports too."""
        yolov5 = self.yolov5()
        return {"format": EXPORT_FORMAT, "d3n": json.dumps(asdict(self)), "stride": str(yolov5["stride"]),
                "names": str(yolov5["names"])}

    @classmethod
    def from_strings(cls, props: dict[str, str], path: Path) -> "ExportMetadata":
        if props.get("format") not in (EXPORT_FORMAT, "d3n-export/1"):
            raise CheckpointError(f"{path}: not a D3N detector export (no {EXPORT_FORMAT!r} metadata; "
                                  "export it with export.py)")
        try:
            fields = json.loads(props["d3n"]) if props.get("format") == EXPORT_FORMAT else \
                {k: json.loads(props[k]) for k in cls.__dataclass_fields__ if k in props}
            values = {k: v for k, v in fields.items() if k in cls.__dataclass_fields__}
            meta = cls(**values)
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{path}: unreadable export metadata ({e})") from None
        meta.imgsz = (int(meta.imgsz[0]), int(meta.imgsz[1]))
        return meta


class DetectBackend(nn.Module):
    """The face Predictor and the validator see: decoded outputs, stride, names, a device.

    The empty `anchor` parameter only reports the device: code written for Model asks
    `next(model.parameters()).device`.
    """

    def __init__(self, path: Path, meta: ExportMetadata, device: torch.device):
        super().__init__()
        self.path, self.meta, self.names = Path(path), meta, list(meta.names)
        self.register_buffer("stride", torch.tensor(meta.stride, dtype=torch.float32, device=device))
        self.anchor = nn.Parameter(torch.zeros(0, device=device), requires_grad=False)

    @property
    def side_inputs(self) -> dict[str, tuple[int, int]]:
        return {}  # D3N teachers are refused at export time

    @property
    def nm(self) -> int:
        """Mask coefficients per detection row: a segmenter's exports also return prototypes."""
        return self.meta.nm

    @property
    def fixed_hw(self) -> tuple[int, int] | None:
        """(h, w) a static export takes; None when any (stride-multiple) size runs."""
        return None if self.meta.dynamic else self.meta.imgsz

    def run(self, images: torch.Tensor):
        """Format-specific forward: (b, 3, H, W) float -> (b, N, 5 + nc) float32 [, (b, nm, H/4, W/4) prototypes]."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor):
        """Images (B, 3, h, w) in 0-1 -> decoded (B, N, 5 + nc [+ nm]) in input pixels, float32; a segmenter's
        export returns (decoded, prototypes), as the Segment head in export mode."""
        if self.fixed_hw is None:
            return self.run(images)
        h, w = images.shape[-2:]
        H, W = self.fixed_hw
        if h > H or w > W:
            hint = f"use --imgsz {H}" if H == W else "export a square --imgsz"
            raise ValueError(f"{self.path}: exported for a fixed {H}x{W} input, got {h}x{w}; "
                             f"{hint} or re-export with --dynamic")
        if self.meta.batch not in (1, images.shape[0]):
            raise ValueError(f"{self.path}: exported for batch {self.meta.batch}, got {images.shape[0]}; "
                             "re-export with --dynamic")
        padded = F.pad(images, (0, W - w, 0, H - h), value=PAD_VALUE / 255.0)
        step = self.meta.batch
        runs = [self.run(padded[i:i + step]) for i in range(0, images.shape[0], step)]
        out = torch.cat([r[0] if self.nm else r for r in runs], 0)
        if (h, w) != (H, W):  # detections centred in the added padding are not in the image
            outside = (out[..., 0] >= w) | (out[..., 1] >= h)  # (B, N)
            out[..., 4] = out[..., 4].masked_fill(outside, 0.0)
        if not self.nm:
            return out
        protos = torch.cat([r[1] for r in runs], 0)
        ph, pw = protos.shape[-2:]
        return out, protos[..., :h * ph // H, :w * pw // W]  # the prototypes of the image, not of the padding


class OnnxBackend(DetectBackend):
    """ONNX Runtime on CPU, or with its CUDA provider when the device is a GPU and the provider exists."""

    def __init__(self, path: Path, device: torch.device = torch.device("cpu"), threads: int | None = None):
        session, device = onnx_session(path, device, threads)
        super().__init__(path, ExportMetadata.from_strings(session.get_modelmeta().custom_metadata_map, path), device)
        self.session = session
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = torch.float16 if "float16" in inp.type else torch.float32

    def run(self, images: torch.Tensor):
        x = images.detach().to("cpu", self.input_dtype).contiguous().numpy()
        outs = [torch.from_numpy(o).to(self.anchor.device, torch.float32)
                for o in self.session.run(None, {self.input_name: x})]
        return (outs[0], outs[1]) if self.nm else outs[0]


def onnx_session(path: Path, device: torch.device, threads: int | None):
    """(InferenceSession, the device its outputs belong on); threads default to torch's."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            LOGGER.warning("WARNING: %s: onnxruntime has no CUDA provider here; running on CPU", path)
            device = torch.device("cpu")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's own warnings are not for our users
    try:
        return ort.InferenceSession(str(path), options, providers=providers), device
    except Exception as e:  # noqa: BLE001 - ORT raises its own pybind exception types for bad files
        raise CheckpointError(f"{path}: not a readable ONNX model (truncated or foreign file: "
                              f"{_first_line(e)})") from None


class TorchScriptBackend(DetectBackend):
    """A traced module; traced graphs keep their shapes symbolic, so any stride-multiple size runs."""

    def __init__(self, path: Path, device: torch.device = torch.device("cpu")):
        extra = {TORCHSCRIPT_CONFIG: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
                module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        except (RuntimeError, ValueError, OSError) as e:
            raise CheckpointError(f"{path}: not a readable TorchScript model (truncated or foreign file: "
                                  f"{_first_line(e)})") from None
        try:
            props = json.loads(extra[TORCHSCRIPT_CONFIG] or "{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            props = {}
        super().__init__(path, ExportMetadata.from_strings(props, path), device)
        self.module = module.eval()

    @torch.no_grad()
    def run(self, images: torch.Tensor):
        x = images.to(self.anchor.device, torch.float16 if self.meta.half else torch.float32)
        out = self.module(x)
        return (out[0].float(), out[1].float()) if self.nm else out.float()


class OpenVINOBackend(DetectBackend):
    """An OpenVINO IR folder (export.py --include openvino), compiled for the CPU."""

    def __init__(self, path: Path, device: torch.device = torch.device("cpu"), threads: int | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise CheckpointError(f"{path}: an OpenVINO model needs the openvino package (pip install openvino)") from None
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        xml = sorted(folder.glob("*.xml"))
        meta_file = folder / OPENVINO_METADATA
        if len(xml) != 1 or not meta_file.is_file():
            raise CheckpointError(f"{path}: not an OpenVINO export of export.py (want one .xml with its .bin and "
                                  f"{OPENVINO_METADATA})")
        try:
            props = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            props = {}
        if device.type != "cpu":
            LOGGER.warning("WARNING: %s: OpenVINO runs on the CPU here; device %s is not used", path, device)
            device = torch.device("cpu")
        super().__init__(folder, ExportMetadata.from_strings(props, folder), device)
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
                  "INFERENCE_PRECISION_HINT": "f32"}  # fp32 as exported: no silent bf16 on CPUs that have it
        try:
            self.compiled = core.compile_model(core.read_model(str(xml[0])), "CPU", config)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: not a readable OpenVINO model ({_first_line(e)})") from None

    def run(self, images: torch.Tensor):
        result = self.compiled(images.detach().to("cpu", torch.float32).contiguous().numpy())
        outs = [torch.from_numpy(result[o].copy()).to(torch.float32) for o in self.compiled.outputs]
        return (outs[0], outs[1]) if self.nm else outs[0]


def is_openvino(path: Path) -> bool:
    return path.suffix.lower() == ".xml" or (path.is_dir() and (path / OPENVINO_METADATA).is_file())


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def load_backend(weights: str | Path, device: str | torch.device = "cpu", fuse: bool = True) -> nn.Module:
    """The model for `weights`: .onnx / .torchscript exports, an OpenVINO folder (<name>_openvino_model/ or its
    .xml), anything else a checkpoint.

    A checkpoint comes back as the Model itself (as `load_model`, weights stored channels-last for speed),
    exports as DetectBackends.
    """
    path, device = Path(weights), torch.device(device)
    suffix = path.suffix.lower()
    if is_openvino(path) or path.name.endswith("_openvino_model"):
        if not path.exists():
            raise CheckpointError(f"{path}: model folder not found")
        return OpenVINOBackend(path, device)
    if suffix in EXPORT_SUFFIXES and not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    if suffix == ".onnx":
        return OnnxBackend(path, device)
    if suffix == ".torchscript":
        return TorchScriptBackend(path, device)
    return channels_last(load_model(path, device, fuse=fuse))
