"""What `torch.hub.load(..., 'custom', path=...)` returns: a model that takes whatever image a user has
(file paths, URLs are not fetched — offline —, numpy BGR arrays as OpenCV reads them, PIL images, or a list
of these) and returns `Detections`, in the spirit of YOLOv5's AutoShape: `.xyxy`, `.pandas()`, `.print()`,
`.save()`. It runs the same Predictor as detect.py, so the boxes are detect.py's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from engine.predict import describe, draw_detections
from engine.predictor import PredictOptions, Predictor
from engine.validate import load_eval_model
from utils.files import atomic_write_bytes, increment_path
from utils.torch_utils import select_device

LOGGER = logging.getLogger(__name__)
COLUMNS = ("xmin", "ymin", "xmax", "ymax", "confidence", "class", "name")


def read_input(item: Any, index: int) -> tuple[np.ndarray, str]:
    """(BGR uint8 image, a name for it) from a path, a numpy array (BGR, as cv2 reads) or a PIL image (RGB)."""
    if isinstance(item, (str, Path)):
        image = cv2.imread(str(item))
        if image is None:
            raise ValueError(f"{item}: not a readable image file (URLs are not fetched: this model runs offline)")
        return image, Path(item).name
    if isinstance(item, np.ndarray):
        if item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] != 3):
            raise ValueError(f"image {index}: expected an (H, W, 3) BGR array, got shape {item.shape}")
        if not item.size:
            raise ValueError(f"image {index}: empty image (shape {item.shape})")
        item = to_uint8(item, index)
        if item.ndim == 2:
            item = cv2.cvtColor(item, cv2.COLOR_GRAY2BGR)
        return np.ascontiguousarray(item), f"image{index}.jpg"
    if hasattr(item, "convert") and hasattr(item, "size"):  # PIL.Image, without importing PIL
        rgb = np.asarray(item.convert("RGB"))
        filename = getattr(item, "filename", "")  # set when the PIL image was opened from a file
        return np.ascontiguousarray(rgb[..., ::-1]), Path(filename).name if filename else f"image{index}.jpg"
    raise TypeError(f"image {index}: expected a path, a numpy array or a PIL image, got {type(item).__name__}")


def to_uint8(image: np.ndarray, index: int) -> np.ndarray:
    """The 0-255 uint8 pixels the model was trained on, from the arrays users have: uint8 as is; uint16 by its
    full range (/257); floats in 0-1 (an image / 255.0) x255, floats in 0-255 as they are; a warning says which
    reading was taken, since a wrong guess gives boxes on the wrong pixels without any error."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        LOGGER.warning("WARNING: image %d: uint16 pixels read as 16-bit (0-65535 -> 0-255); pass uint8 if that is "
                       "not their range", index)
        return (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        finite = np.isfinite(image)
        if not finite.all() or image.min() < 0 or image.max() > 255:
            raise ValueError(f"image {index}: float pixels must be finite and within 0-1 or 0-255, got "
                             f"{np.nanmin(image):.4g} to {np.nanmax(image):.4g}")
        unit = image.max() <= 1.0
        LOGGER.warning("WARNING: image %d: %s pixels read as %s; pass uint8 0-255 to avoid the guess", index,
                       image.dtype, "0-1 (x255)" if unit else "0-255")
        return (image * (255.0 if unit else 1.0)).round().astype(np.uint8)
    raise ValueError(f"image {index}: pixels of type {image.dtype}; expected uint8 (0-255), uint16 or float")


@dataclass
class Detections:
    """Per image: `xyxy[i]` (n, 6) [x1, y1, x2, y2, conf, cls] in its pixels; the images and names."""

    images: list[np.ndarray]
    files: list[str]
    xyxy: list[torch.Tensor]
    names: list[str]
    speed_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __len__(self) -> int:
        return len(self.xyxy)

    def pandas(self) -> "PandasDetections":
        """As YOLOv5's: `results.pandas().xyxy[i]` is image i's DataFrame (xmin … confidence, class, name)."""
        import pandas as pd

        return PandasDetections([pd.DataFrame([[*row[:5], int(row[5]), self.names[int(row[5])]]
                                               for row in det.tolist()], columns=list(COLUMNS)) for det in self.xyxy])

    def __str__(self) -> str:
        lines = []
        for i, (file, det) in enumerate(zip(self.files, self.xyxy)):
            h, w = self.images[i].shape[:2]
            lines.append(f"image {i + 1}/{len(self)} {file}: {w}x{h} {describe(det, self.names)}")
        pre, inf, nms = self.speed_ms
        lines.append(f"Speed: {pre:.1f}ms pre-process, {inf:.1f}ms inference, {nms:.1f}ms NMS per image")
        return "\n".join(lines)

    def print(self) -> None:
        print(self)

    def render(self) -> list[np.ndarray]:
        """The images (BGR) with their boxes and labels drawn."""
        return [draw_detections(image, det, self.names) for image, det in zip(self.images, self.xyxy)]

    def save(self, save_dir: str | Path = "runs/detect/exp", exist_ok: bool = False) -> Path:
        """Annotated images in save_dir (a new exp<N> unless exist_ok), as detect.py writes them."""
        save_dir = increment_path(Path(save_dir), exist_ok=exist_ok, mkdir=True)
        for image, file in zip(self.render(), self.files):
            suffix = Path(file).suffix.lower() if Path(file).suffix.lower() in (".jpg", ".png", ".bmp") else ".jpg"
            ok, buf = cv2.imencode(suffix, image)
            if ok:
                atomic_write_bytes(save_dir / f"{Path(file).stem}{suffix}", buf.tobytes())
        return save_dir


@dataclass
class PandasDetections:
    xyxy: list[Any]  # one pandas.DataFrame per image


class AutoShape(torch.nn.Module):
    """A detector that takes images as users have them; thresholds are attributes (`conf`, `iou`, `classes`)."""

    def __init__(self, model: torch.nn.Module, options: PredictOptions):
        super().__init__()
        if model.side_inputs:
            raise ValueError("a D3N teacher reads latent side inputs; load the distilled student instead")
        self.model, self.options = model, options
        self.names = list(model.names)

    def forward(self, images: Any, size: int | None = None) -> Detections:
        items = images if isinstance(images, (list, tuple)) else [images]
        options = PredictOptions(**{**vars(self.options), **({"imgsz": size} if size else {})})
        predictor = Predictor(self.model, options)
        read = [read_input(item, i) for i, item in enumerate(items)]
        dets = [predictor(image) for image, _ in read]
        return Detections([im for im, _ in read], [name for _, name in read], dets, self.names,
                          predictor.timings.per_image_ms())


def load_custom(path: str | Path, conf: float = 0.25, iou: float = 0.45, imgsz: int = 640, device: str = "",
                scale: bool = False, max_det: int = 1000) -> AutoShape:
    """The model behind hubconf.custom: a .pt checkpoint or an export, wrapped in AutoShape."""
    model = load_eval_model(Path(path), select_device(device))
    return AutoShape(model, PredictOptions(imgsz=imgsz, conf_thres=conf, iou_thres=iou, max_det=max_det, scale=scale))
