"""The export formats: TorchScript and ONNX files that carry their metadata, and the check that an export
reproduces PyTorch. export.py is the command line over these.

Detector exports return the decoded (B, N, 5 + nc) tensor [x, y, w, h, obj, cls...] in input pixels; a
segmenter's return two outputs, as YOLOv5-seg's: that tensor with nm mask coefficients per row (B, N, 5 + nc + nm)
and the prototypes (B, nm, H/4, W/4).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
import yaml
import torch.nn as nn

from deploy.backends import (OPENVINO_METADATA, TORCHSCRIPT_CONFIG, YOLOV5_TORCHSCRIPT_CONFIG, ExportMetadata,
                             is_openvino, load_backend)
from models.loading import build_from_checkpoint, read_detector_checkpoint
from models.yolo import Model, reads_side_inputs
from utils.checkpoints import UnreadableCheckpoint, load_checkpoint, save_checkpoint
from utils.files import atomic_write_bytes
from utils.image_size import check_img_size

LOGGER = logging.getLogger(__name__)
FORMATS = ("torchscript", "onnx", "openvino", "pt")
DEFAULT_FORMATS = ("torchscript", "onnx")  # openvino is an optional package
CHECKPOINT_SUFFIX = "-d3n.pt"  # yolov5s.pt (ultralytics/yolov5) -> yolov5s-d3n.pt (ours, weights_only)
OPENVINO_SUFFIX = "_openvino_model"  # best.pt -> best_openvino_model/ (best.xml, best.bin, metadata.json), as YOLOv5
MIN_OPSET = 17
VERIFY_TOLERANCE = 1e-2  # max |difference| of decoded outputs (pixels, probabilities) before a warning


class ImagesOnly(nn.Module):
    """Images -> decoded detections (and a segmenter's prototypes): what the exporters trace (Model.forward also
    takes side inputs)."""

    def __init__(self, model: Model):
        super().__init__()
        self.model = model
        self.eval()  # exporters restore the wrapper's mode, recursively, when they finish

    def forward(self, images: torch.Tensor):
        return self.model(images)


def prepare_model(weights: Path, device: torch.device, half: bool) -> Model:
    """Load, refuse D3N teachers, fuse, and make the head return its export outputs (no raw maps)."""
    if weights.suffix.lower() in (".onnx", ".torchscript"):
        raise ValueError(f"{weights}: already an export; pass the .pt checkpoint")
    ckpt = read_detector_checkpoint(weights)
    if reads_side_inputs(ckpt.get("model_yaml") or {}):
        # refused before building: a teacher's blocks may belong to a plug-in export.py never loads
        raise ValueError(f"{weights}: a D3N teacher needs latent side inputs; export the distilled student instead")
    model = build_from_checkpoint(ckpt, weights).to(device).eval().fuse()
    model.detect.export = True
    return model.half() if half else model


def export_checkpoint(weights: Path) -> Path:
    """An ultralytics/yolov5 checkpoint re-saved as ours beside it (<name>-d3n.pt): later loads are plain
    torch.load(weights_only=True), without the import. The file written is loaded back before it is reported."""
    try:
        load_checkpoint(weights, expect="detector")
    except UnreadableCheckpoint:
        pass  # not ours: the import below says what it is
    else:
        raise ValueError(f"{weights}: already a D3N checkpoint; --include pt converts ultralytics/yolov5 files")
    ckpt = read_detector_checkpoint(weights)
    build_from_checkpoint(ckpt, weights)  # refuses what would not rebuild before anything is written
    path = weights.with_name(weights.stem + CHECKPOINT_SUFFIX)
    save_checkpoint({k: v for k, v in ckpt.items() if k != "format"}, path)
    build_from_checkpoint(load_checkpoint(path, expect="detector"), path)
    return path


def check_imgsz(imgsz: list[int], stride: int) -> tuple[int, int]:
    """--imgsz H [W] -> (h, w), each rounded up to a multiple of the model's largest stride."""
    if len(imgsz) not in (1, 2) or min(imgsz) < 1:
        raise ValueError(f"--imgsz {' '.join(map(str, imgsz))}: expected one or two positive sizes")
    h, w = (imgsz * 2)[:2]
    return check_img_size(h, stride), check_img_size(w, stride)


def export_torchscript(model: Model, example: torch.Tensor, meta: ExportMetadata, path: Path) -> Path:
    """Traced module with ExportMetadata in its extra files, and YOLOv5's config.txt (shape, stride, names) beside
    it; shapes stay symbolic (any size runs)."""
    meta = dataclasses.replace(meta, dynamic=True)  # traced size ops are recorded, not baked in (tested)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still the format users run
        traced = torch.jit.trace(ImagesOnly(model), example, check_trace=False)
        buffer = io.BytesIO()
        yolov5 = json.dumps({"shape": list(example.shape), **meta.yolov5()})
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_CONFIG: json.dumps(meta.to_strings()),
                                                     YOLOV5_TORCHSCRIPT_CONFIG: yolov5})
    atomic_write_bytes(path, buffer.getvalue())
    return path


def export_onnx(model: Model, example: torch.Tensor, meta: ExportMetadata, path: Path, opset: int = MIN_OPSET,
                simplify: bool = False) -> Path:
    """ONNX graph `images` (B, 3, H, W) -> `output0` (B, N, 5 + nc [+ nm]) [and a segmenter's `output1`, the
    prototypes (B, nm, H/4, W/4)], ExportMetadata in metadata_props."""
    if opset < MIN_OPSET:
        raise ValueError(f"--opset {opset}: this exporter needs opset {MIN_OPSET} or newer")
    outputs = ["output0", "output1"] if meta.nm else ["output0"]
    dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 1: "anchors"},
                    "output1": {0: "batch", 2: "proto_height", 3: "proto_width"}} if meta.dynamic else None
    if dynamic_axes and not meta.nm:
        del dynamic_axes["output1"]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning, UserWarning))  # "legacy exporter" notes
        torch.onnx.export(ImagesOnly(model), (example,), buffer, opset_version=opset, input_names=["images"],
                          output_names=outputs, dynamic_axes=dynamic_axes, do_constant_folding=True,
                          dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    if simplify:
        proto = simplify_onnx(proto)
    for key, value in meta.to_strings().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    atomic_write_bytes(path, proto.SerializeToString())
    return path


def openvino_dir(weights: Path, tag: str = "") -> Path:
    return weights.with_name(f"{weights.stem}{tag}{OPENVINO_SUFFIX}")


def export_openvino(model: Model, example: torch.Tensor, meta: ExportMetadata, folder: Path,
                    fp16: bool = False) -> Path:
    """An OpenVINO IR folder (<name>.xml, <name>.bin) with ExportMetadata in metadata.json beside it; `fp16`
    stores the weights compressed to fp16 (OpenVINO computes in its own precision on each device).

    Converted from our ONNX graph rather than traced from PyTorch: the ONNX exporter keeps the Detect
    head's grid sizes symbolic, where OpenVINO's own tracing bakes in the example's size (a --dynamic IR
    then decodes other sizes wrongly; tested at a size other than the export's)."""
    ov = import_openvino()
    with tempfile.TemporaryDirectory(dir=Path(folder).parent, prefix=".openvino-") as tmp:
        onnx_file = export_onnx(model, example, meta, Path(tmp) / "model.onnx")
        ov_model = ov.convert_model(str(onnx_file))
    return save_openvino(ov_model, meta, folder, fp16)


def save_openvino(ov_model, meta: ExportMetadata, folder: Path, fp16: bool = False) -> Path:
    """Write an IR and its metadata into `folder`, replacing an earlier export only once the new one is whole.

    Beside our metadata.json goes <name>.yaml (stride, names), which ultralytics/yolov5 reads for <name>.xml."""
    ov = import_openvino()
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.tmp")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    name = folder.name[:-len(OPENVINO_SUFFIX)] if folder.name.endswith(OPENVINO_SUFFIX) else folder.name
    ov.save_model(ov_model, str(staging / f"{name}.xml"), compress_to_fp16=fp16)
    (staging / OPENVINO_METADATA).write_text(json.dumps(meta.to_strings(), indent=1))
    (staging / f"{name}.yaml").write_text(yaml.safe_dump(meta.yolov5(), sort_keys=False))
    if folder.exists():
        if not is_openvino(folder):
            shutil.rmtree(staging)
            raise ValueError(f"{folder}: exists and is not an OpenVINO export of export.py; move it out of the way")
        shutil.rmtree(folder)  # the previous export of the same name, which this one replaces
    staging.rename(folder)
    return folder


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise ValueError("OpenVINO export and inference need the openvino package: pip install openvino") from None
    return openvino


def simplify_onnx(proto):
    """onnxsim when installed; ONNX Runtime applies the same constant folding at load time anyway."""
    try:
        import onnxsim
    except ImportError:
        LOGGER.warning("WARNING: --simplify: onnxsim is not installed; exporting the graph unsimplified "
                       "(ONNX Runtime folds constants when it loads the model)")
        return proto
    simplified, ok = onnxsim.simplify(proto)
    if not ok:
        LOGGER.warning("WARNING: --simplify: onnxsim could not check its result; keeping the original graph")
        return proto
    return simplified


def verify_export(path: Path, model: Model, example: torch.Tensor) -> float:
    """Max |difference| between the export and PyTorch on a random input of the example's shape."""
    x = torch.rand(example.shape, generator=torch.Generator().manual_seed(0)).to(example)
    with torch.inference_mode():
        expected = model(x)
        got = load_backend(path, example.device)(x)
    pairs = zip(expected, got) if isinstance(expected, (tuple, list)) else [(expected, got)]
    diff = max(float((g.float() - e.float()).abs().max()) for e, g in pairs)
    if diff > VERIFY_TOLERANCE:
        LOGGER.warning("WARNING: %s: max |output - PyTorch| = %.2g on a random input (expected < %g)", path, diff,
                       VERIFY_TOLERANCE)
    else:
        LOGGER.info("%s: max |output - PyTorch| = %.2g on a random input", path, diff)
    return diff
