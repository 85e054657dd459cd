"""Single-image inference shared by detect.py, segment/predict.py and the benchmarks: pre-process, forward,
NMS, rescale (and, for segmenters, the masks)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from utils.augmentations import letterbox, stretch
from utils.boxes import scale_boxes
from utils.image_size import check_img_size
from utils.instance_masks import masks_in_image
from utils.nms import non_max_suppression
from utils.tiling import merge_detections, tile_windows
from utils.torch_utils import time_sync

LOGGER = logging.getLogger(__name__)

# side_fn(path, image_bgr, input_hw) -> extra model inputs (e.g. D3N latents); None for plain models
SideFn = Callable[[object, np.ndarray, tuple[int, int]], dict[str, torch.Tensor]]


@dataclass
class PredictOptions:
    imgsz: int = 640
    conf_thres: float = 0.25
    iou_thres: float = 0.45
    max_det: int = 1000
    classes: list[int] | None = None
    agnostic_nms: bool = False
    scale: bool = False  # letterbox-free: stretch to imgsz x imgsz (the D3N paper's input)
    half: bool = False  # fp16 on CUDA, bf16 autocast on CPU
    tile: int = 0  # > 0: sliced inference on tile x tile windows plus the whole image (TiledPredictor)
    tile_overlap: float = 0.2  # neighbouring windows overlap by this share of a tile
    tile_merge: str = "nms"  # how boxes of several windows merge: nms, or nmm (merge boxes cut by a border)


@dataclass
class Timings:
    pre: float = 0.0
    inference: float = 0.0
    nms: float = 0.0
    count: int = 0
    last: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def add(self, pre: float, inf: float, nms: float) -> None:
        self.last = (pre, inf, nms)
        self.pre, self.inference, self.nms, self.count = self.pre + pre, self.inference + inf, self.nms + nms, self.count + 1

    def per_image_ms(self) -> tuple[float, float, float]:
        n = max(self.count, 1)
        return 1e3 * self.pre / n, 1e3 * self.inference / n, 1e3 * self.nms / n


@dataclass
class Predictor:
    model: torch.nn.Module
    options: PredictOptions
    side_fn: SideFn | None = None
    timings: Timings = field(default_factory=Timings)

    def __post_init__(self):
        self.device = next(self.model.parameters()).device
        self.stride = int(self.model.stride.max())
        self.imgsz = check_img_size(self.options.imgsz, self.stride)  # the grids must tile the input
        warn_static_size(self.model, self.imgsz)

    def preprocess(self, im0: np.ndarray, size: int | None = None) -> tuple[torch.Tensor, tuple]:
        """BGR image -> (1, 3, H, W) float tensor in 0-1 at `size` (default imgsz) and the ratio_pad that undoes
        the resize."""
        size = size or self.imgsz
        if self.options.scale:
            im, (rw, rh) = stretch(im0, (size, size))
            ratio_pad = ((rh, rw), (0.0, 0.0))
        else:
            im, (rw, rh), (dw, dh) = letterbox(im0, size, auto=True, stride=self.stride)
            ratio_pad = ((rh, rw), (dw, dh))
        x = torch.from_numpy(np.ascontiguousarray(im[..., ::-1].transpose(2, 0, 1))).to(self.device)
        x = x.half() if self.options.half and self.device.type == "cuda" else x.float()
        return (x / 255.0)[None], ratio_pad

    @torch.inference_mode()
    def __call__(self, im0: np.ndarray, path: object = None) -> torch.Tensor:
        """Detections (n, 6) [x1, y1, x2, y2, conf, cls] in the pixels of im0."""
        t0 = time_sync()
        x, ratio_pad = self.preprocess(im0)
        side = self.side_fn(path, im0, tuple(x.shape[-2:])) if self.side_fn else None
        t1 = time_sync()
        bf16 = self.options.half and self.device.type == "cpu"
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = self.model(x, side) if side is not None else self.model(x)
        t2 = time_sync()
        result = self.postprocess(out, tuple(x.shape[2:]), im0.shape[:2], ratio_pad)
        self.timings.add(t1 - t0, t2 - t1, time_sync() - t2)
        return result

    def detections(self, out, input_hw: tuple[int, int], image_hw: tuple[int, int], ratio_pad,
                   nm: int = 0) -> torch.Tensor:
        """(n, 6 + nm) rows in image pixels from the decoded output (or the eval tuple it starts)."""
        decoded = out[0] if isinstance(out, (tuple, list)) else out
        o = self.options
        det = non_max_suppression(decoded.float(), o.conf_thres, o.iou_thres, o.classes, o.agnostic_nms,
                                  max_det=o.max_det, nm=nm)[0]
        det[:, :4] = scale_boxes(input_hw, det[:, :4], image_hw, ratio_pad).round()
        return det

    def postprocess(self, out, input_hw: tuple[int, int], image_hw: tuple[int, int], ratio_pad):
        """The eval output (decoded, raw maps) or an export's decoded -> (n, 6) detections in image pixels."""
        return self.detections(out, input_hw, image_hw, ratio_pad)


@dataclass
class SegmentPredictor(Predictor):
    """A YOLOv5-seg model's detections and their masks on the original image's pixels."""

    def postprocess(self, out, input_hw: tuple[int, int], image_hw: tuple[int, int],
                    ratio_pad) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval output ((decoded, raw maps), protos) or an export's (decoded, protos) -> ((n, 6) detections,
        (n, h0, w0) bool masks) in image pixels."""
        boxes, protos = out
        det = self.detections(boxes, input_hw, image_hw, ratio_pad, nm=int(protos.shape[1]))
        masks = masks_in_image(protos[0].float(), det[:, 6:], det[:, :4], input_hw, image_hw, ratio_pad)
        return det[:, :6], masks


TILE_BATCH = 8  # windows per forward pass


@dataclass
class TiledPredictor(Predictor):
    """Sliced inference (utils/tiling.py): the whole image at imgsz plus overlapping tile x tile windows at full
    resolution (each window runs at the tile size, whatever --imgsz is), every box moved to the image's pixels,
    duplicates across windows merged."""

    def __post_init__(self):
        super().__post_init__()
        if self.side_fn is not None:
            raise ValueError("--tile: a D3N teacher's latents describe the whole image, not a window; "
                             "tile its distilled student instead")
        tile_windows(1, 1, self.options.tile, self.options.tile_overlap)  # checks the flags now
        merge_detections(torch.zeros(0, 6), self.options.tile_merge)
        self.window_size = window_input_size(self.model, self.options.tile, self.stride)
        if self.window_size != self.imgsz:
            LOGGER.info("--tile %d: windows run at %d px (full resolution), the whole-image pass at --imgsz %d",
                        self.options.tile, self.window_size, self.imgsz)

    @torch.inference_mode()
    def __call__(self, im0: np.ndarray, path: object = None) -> torch.Tensor:
        """Detections (n, 6) [x1, y1, x2, y2, conf, cls] in the pixels of im0, from the whole image and its windows."""
        o = self.options
        windows = tile_windows(im0.shape[0], im0.shape[1], o.tile, o.tile_overlap)
        windows = windows if len(windows) > 1 else []  # one window is the whole image: the first pass covers it
        t0 = time_sync()
        x, ratio_pad = self.preprocess(im0)
        t1 = time_sync()
        found = [self.postprocess(self.model(x), tuple(x.shape[2:]), im0.shape[:2], ratio_pad)]
        t2 = time_sync()
        pre, inf, post = t1 - t0, t2 - t1, 0.0
        for i in range(0, len(windows), TILE_BATCH):
            group = windows[i:i + TILE_BATCH]
            t0 = time_sync()
            inputs = [self.preprocess(im0[y1:y2, x1:x2], self.window_size) for x1, y1, x2, y2 in group]
            batch = torch.cat([x for x, _ in inputs])
            t1 = time_sync()
            out = self.model(batch)
            t2 = time_sync()
            pred = out[0] if isinstance(out, (tuple, list)) else out
            for (x1, y1, x2, y2), (_, pad), p in zip(group, inputs, pred):
                det = self.postprocess(p[None], tuple(batch.shape[2:]), (y2 - y1, x2 - x1), pad)
                det[:, [0, 2]] += x1
                det[:, [1, 3]] += y1
                found.append(det)
            pre, inf, post = pre + t1 - t0, inf + t2 - t1, post + time_sync() - t2
        t0 = time_sync()
        det = merge_detections(torch.cat(found), o.tile_merge, o.iou_thres)[:o.max_det]
        self.timings.add(pre, inf, post + time_sync() - t0)
        return det


def window_input_size(model: torch.nn.Module, tile: int, stride: int) -> int:
    """The input side of a --tile window: the tile itself (rounded up to the stride), so windows keep the image's
    pixels; a static export takes only its own size, and says so when that shrinks the windows."""
    size = check_img_size(tile, stride, "--tile")
    fixed = getattr(model, "fixed_hw", None)
    if fixed is not None and size > min(fixed):
        LOGGER.warning("WARNING: --tile %d: this export takes a fixed %dx%d input, so each window is shrunk to %d px "
                       "(not full resolution); re-export with --dynamic or at --imgsz %d", tile, fixed[0], fixed[1],
                       min(fixed), size)
        return min(fixed)
    return size


def warn_static_size(model: torch.nn.Module, imgsz: int) -> None:
    """A static export smaller inputs reach are padded up to its own size (deploy.backends): say so, since the
    user asked for another size and the results are not those of a model run at it."""
    fixed = getattr(model, "fixed_hw", None)
    if fixed is not None and imgsz < max(fixed):
        LOGGER.warning("WARNING: --imgsz %d: this export was made for a fixed %dx%d input, so images are resized to %d "
                       "and padded to %dx%d; pass --imgsz %d, or re-export with --dynamic to run at %d", imgsz,
                       fixed[0], fixed[1], imgsz, fixed[0], fixed[1], max(fixed), imgsz)
