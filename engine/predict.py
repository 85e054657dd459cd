"""`predict(...)`: a detector or segmenter run over images, folders, globs, lists or videos, with YOLOv5's
outputs — what detect.py, segment/predict.py and the D3N pipeline call.

Outputs go to `out.save_dir`: annotated images (videos: annotated .mp4; a segmenter's masks painted under its
boxes), labels/*.txt (boxes, or a segmenter's polygons), crops/<class>/, Grad-CAM++ strips in cam/; each
under the input's relative name, so inputs in sub-folders stay apart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from deploy.backends import DetectBackend
from engine.plugins import SideInputs, apply_input_rules
from data.polygons import mask_to_polygons, merge_polygons
from engine.predictor import PredictOptions, Predictor, SegmentPredictor, TiledPredictor
from engine.validate import load_eval_model
from utils.boxes import xyxy2xywh
from utils.files import atomic_write_bytes, safe_name
from utils.gradcam import CamWriter
from utils.plots import Annotator, colors
from utils.sources import Frame, iter_frames, resolve_source
from utils.streams import is_stream, stream_frames
from utils.torch_utils import select_device

LOGGER = logging.getLogger(__name__)
MASK_ALPHA = 0.5  # a painted mask's opacity


@dataclass
class OutputOptions:
    save_dir: Path
    save_img: bool = True
    save_txt: bool = False
    save_conf: bool = False
    save_crop: bool = False
    line_thickness: int = 3
    hide_labels: bool = False
    hide_conf: bool = False
    cam_layers: list[int] | None = None  # --cam: Grad-CAM++ strips in cam/ for these layers ([]: Detect's inputs)


def write_labels(path: Path, det: torch.Tensor, shape: tuple[int, int], with_conf: bool) -> None:
    """YOLO-format rows `cls xc yc w h [conf]`, normalised to the image; written atomically."""
    h, w = shape
    rows = []
    for *xyxy, conf, cls in det.tolist():
        xc, yc, bw, bh = xyxy2xywh(np.array(xyxy, dtype=np.float64)) / np.array([w, h, w, h])
        rows.append(f"{int(cls)} {xc:.6f} {yc:.6f} {bw:.6f} {bh:.6f}" + (f" {conf:.6f}" if with_conf else ""))
    atomic_write_bytes(path, ("\n".join(rows) + "\n" if rows else "").encode())


def write_polygons(path: Path, det: torch.Tensor, masks: torch.Tensor, with_conf: bool) -> None:
    """YOLOv5 segment rows `cls x1 y1 x2 y2 ... [conf]`, normalised: each mask's outline (parts of one mask
    joined into one polygon, as the dataset's labels are); a detection whose mask is empty writes no row."""
    rows = []
    for (*_, conf, cls), mask in zip(det.tolist(), masks.cpu().numpy()):
        parts, _ = mask_to_polygons(mask)
        if not parts:
            continue
        polygon = merge_polygons(parts) if len(parts) > 1 else parts[0]
        xy = " ".join(f"{v:.6f}" for v in polygon.reshape(-1))
        rows.append(f"{int(cls)} {xy}" + (f" {conf:.6f}" if with_conf else ""))
    atomic_write_bytes(path, ("\n".join(rows) + "\n" if rows else "").encode())


def paint_masks(image: np.ndarray, det: torch.Tensor, masks: torch.Tensor, alpha: float = MASK_ALPHA) -> np.ndarray:
    """The BGR image with each mask blended in its class colour (later, lower-scored masks on top, as YOLOv5)."""
    out = image.astype(np.float32)
    for cls, mask in zip(det[:, 5].tolist(), masks.cpu().numpy()):
        out[mask] = out[mask] * (1 - alpha) + np.array(colors(int(cls), True), np.float32) * alpha
    return out.round().astype(np.uint8)


def draw_detections(image: np.ndarray, det: torch.Tensor, names: list[str], line_width: int | None = None,
                    hide_labels: bool = False, hide_conf: bool = False) -> np.ndarray:
    """A copy of the BGR image with each (n, 6) detection's box and label drawn in its class colour."""
    annotator = Annotator(image.copy(), line_width=line_width)
    for *xyxy, conf, cls in det.tolist():
        c = int(cls)
        label = None if hide_labels else (names[c] if hide_conf else f"{names[c]} {conf:.2f}")
        annotator.box_label(xyxy, label or "", color=colors(c, True))
    return annotator.result()


def annotate(frame: Frame, det: torch.Tensor, names: list[str], out: OutputOptions,
             masks: torch.Tensor | None = None) -> np.ndarray:
    image = frame.image if masks is None else paint_masks(frame.image, det, masks)
    return draw_detections(image, det, names, out.line_thickness, out.hide_labels, out.hide_conf)


def save_crops(frame: Frame, det: torch.Tensor, names: list[str], save_dir: Path) -> None:
    h, w = frame.image.shape[:2]
    for k, (*xyxy, _, cls) in enumerate(det.tolist()):
        x1, y1, x2, y2 = (int(max(0, min(v, lim))) for v, lim in zip(xyxy, (w, h, w, h)))
        if x2 > x1 and y2 > y1:
            ok, buf = cv2.imencode(".jpg", frame.image[y1:y2, x1:x2])
            name = frame.stem.with_name(f"{frame.stem.name}_{k}.jpg")  # keeps the input's sub-folder
            atomic_write_bytes(save_dir / "crops" / safe_name(names[int(cls)]) / name, buf.tobytes())


def describe(det: torch.Tensor, names: list[str]) -> str:
    if not len(det):
        return "(no detections)"
    counts = torch.bincount(det[:, 5].long(), minlength=len(names)).tolist()
    return ", ".join(f"{n} {plural(names[c], n)}" for c, n in enumerate(counts) if n)


def plural(name: str, n: int) -> str:
    """'2 scratches', '3 patches', '2 holes': a class name that already ends in s is left as it is."""
    return name if n == 1 or name.endswith("s") else f"{name}s"


def check_classes(classes: list[int] | None, names: list[str], weights: Path) -> None:
    """--classes naming a class the model does not have would silently filter everything out."""
    bad = [c for c in classes or [] if not 0 <= c < len(names)]
    if bad:
        listed = ", ".join(f"{i} {n}" for i, n in enumerate(names[:10])) + (", ..." if len(names) > 10 else "")
        raise ValueError(f"--classes {' '.join(map(str, bad))}: {weights} has {len(names)} classes, 0-{len(names) - 1} "
                         f"({listed})")


class VideoWriters:
    """One annotated .mp4 per source video, opened on its first frame."""

    def __init__(self):
        self.writers: dict[Path, cv2.VideoWriter] = {}

    def write(self, out_path: Path, frame: Frame, image: np.ndarray) -> None:
        if out_path not in self.writers:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            h, w = image.shape[:2]
            self.writers[out_path] = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*"mp4v"), frame.fps or 30, (w, h))
        self.writers[out_path].write(image)

    def close(self) -> None:
        for w in self.writers.values():
            w.release()


def predict(weights: Path, source: str, options: PredictOptions, out: OutputOptions, device: str = "",
            inputs: SideInputs | None = None, model: torch.nn.Module | None = None, kind: str = "detect") -> Path:
    """Detect (kind "detect") or segment ("segment") every frame of `source` with `weights` (or its already
    loaded `model`); returns the run directory."""
    dev = select_device(device)
    model = model if model is not None else load_eval_model(weights, dev, options.half, kind)
    if model.side_inputs and inputs is None:
        raise ValueError(f"{weights}: this model needs side inputs {sorted(model.side_inputs)}; "
                         "pass its plug-in's flags (e.g. --latents <feature repository>)")
    if inputs is not None:
        apply_input_rules(options, inputs.rules, str(weights))
    side_fn = inputs.frame_inputs(model, dev) if inputs is not None else None
    if options.tile and kind == "segment":
        raise ValueError(f"{weights}: --tile is for detectors; segment the whole image")
    check_classes(options.classes, list(model.names), weights)
    predictor_cls = SegmentPredictor if kind == "segment" else TiledPredictor if options.tile else Predictor
    predictor = predictor_cls(model, options, side_fn)
    names = model.names
    if out.cam_layers is not None and isinstance(model, DetectBackend):
        raise ValueError(f"{weights}: --cam needs gradients, so the .pt checkpoint, not an export")
    if out.cam_layers is not None and kind == "segment":
        raise ValueError(f"{weights}: --cam explains detectors' boxes; it does not take a segmenter")
    cam = CamWriter(model, predictor, names, out.save_dir, out.cam_layers) if out.cam_layers is not None else None
    live = is_stream(source)
    files = [] if live else resolve_source(source)
    frames = stream_frames(str(source)) if live else None  # opens the camera/stream now: a dead one fails here
    out.save_dir.mkdir(parents=True, exist_ok=True)
    videos, seen, skipped = VideoWriters(), 0, []
    try:
        for frame in frames if live else iter_frames(files, skipped):
            det, masks = predictor(frame.image, frame.path) if kind == "segment" else \
                (predictor(frame.image, frame.path), None)
            seen += 1
            _save_frame(frame, det, names, out, videos, masks)
            if cam is not None:
                cam.write(frame, det)
            where = (f"video {frame.frame + 1}/{frame.frames}" if frame.frames else f"stream frame {frame.frame + 1}") \
                if frame.is_video else f"image {seen}"
            LOGGER.info("%s %s: %dx%d %s, %.1fms", where, frame.path, frame.image.shape[1], frame.image.shape[0],
                        describe(det, names), 1e3 * predictor.timings.last[1])
    finally:
        videos.close()
    if skipped:
        LOGGER.warning("WARNING: skipped %d unreadable file(s): %s", len(skipped), ", ".join(map(str, skipped)))
    if not seen:
        what = "the stream gave no frame" if live else f"none of its {len(files)} input(s) could be read"
        raise ValueError(f"{source}: {what}; nothing was detected")
    pre, inf, nms = predictor.timings.per_image_ms()
    LOGGER.info("Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at %s", pre, inf, nms,
                f"{predictor.imgsz}" + (" (stretched)" if options.scale else " (letterbox)"))
    LOGGER.info("Results saved to %s", out.save_dir)
    return out.save_dir


def _save_frame(frame: Frame, det: torch.Tensor, names: list[str], out: OutputOptions, videos: VideoWriters,
                masks: torch.Tensor | None = None) -> None:
    """Outputs under the frame's relative name (frame.stem), so inputs in sub-folders keep them apart."""
    stem = frame.stem
    if out.save_txt:
        labels = out.save_dir / "labels" / f"{stem}.txt"
        if masks is None:
            write_labels(labels, det, frame.image.shape[:2], out.save_conf)
        else:
            write_polygons(labels, det, masks, out.save_conf)
    if out.save_crop:
        save_crops(frame, det, names, out.save_dir)
    if out.save_img:
        image = annotate(frame, det, names, out, masks)
        if frame.is_video:
            videos.write(out.save_dir / f"{frame.out_stem or frame.path.stem}.mp4", frame, image)
        else:
            suffix = frame.path.suffix if frame.path.suffix.lower() in (".jpg", ".png", ".bmp") else ".jpg"
            ok, buf = cv2.imencode(suffix, image)
            if ok:
                atomic_write_bytes(out.save_dir / f"{stem}{suffix}", buf.tobytes())
