"""Grad-CAM++ heat maps of a detector, one per class (the paper's Fig. 14): which regions of the
image raise the confidence of that class, and which classes the image suppresses.

Grad-CAM++ (Chattopadhay et al., WACV 2018) for a class score S and feature maps A of one layer,
with g = dS/dA:  alpha_kij = g^2 / (2 g^2 + sum_ab A_kab g^3),  w_k = sum_ij alpha_kij relu(g_kij),
map = relu(sum_k w_k A_k). The exp(S) factor of the paper's derivation is left out (as is usual), so
maps of different classes compare by their gradients. A detector's class score is the sum of
obj x p(class) over its candidates above the confidence threshold (the boxes NMS chooses from), or
the best candidate's when none passes. Maps of all chosen layers are upsampled to the input and
summed, then scaled by the image's largest value over all classes: a dim map is a weak class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from utils.files import atomic_write_bytes
from utils.plots import Annotator, colors

MAX_CLASSES = 12  # tiles per image: every class up to this many, else the highest-scoring ones
OVERLAY_ALPHA = 0.5  # weight of the heat map over the image


def gradcam_plus_plus(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ map (h, w) >= 0 from one layer's activations and score gradients, both (C, h, w)."""
    g2, g3 = gradients.pow(2), gradients.pow(3)
    denominator = 2 * g2 + activations.sum((1, 2), keepdim=True) * g3
    alpha = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    weights = (alpha * gradients.clamp(min=0)).sum((1, 2))  # (C,)
    return (weights[:, None, None] * activations).sum(0).clamp(min=0)


def class_scores(decoded: torch.Tensor, conf_thres: float = 0.25) -> torch.Tensor:
    """Decoded (1, N, 5 + nc) -> (nc,) differentiable class scores: sum of obj x p(c) above conf_thres."""
    conf = decoded[0, :, 4:5] * decoded[0, :, 5:]  # (N, nc)
    confident = conf.detach() > conf_thres
    summed = (conf * confident).sum(0)
    return torch.where(confident.any(0), summed, conf.max(0).values)


@dataclass
class CamResult:
    maps: torch.Tensor  # (K, H, W) in 0-1 over the network input, scaled jointly
    classes: list[int]  # class index of each map
    scores: list[float]  # class score each map explains


class GradCAMPlusPlus:
    """Grad-CAM++ on a YOLOv5 Model; `layers` are model layer indices (default: Detect's inputs)."""

    def __init__(self, model: torch.nn.Module, layers: list[int] | None = None):
        self.model = model.eval()
        detect = model.model[-1]
        self.layers = list(layers) if layers else list(detect.f if isinstance(detect.f, list) else [detect.f])
        last = len(model.model) - 1
        bad = [i for i in self.layers if not 0 <= i < last]
        if bad:
            raise ValueError(f"--cam layers {bad}: choose model layers 0..{last - 1} (Detect's inputs are "
                             f"{detect.f}; layer {last} is Detect itself)")

    def forward(self, x: torch.Tensor, side: dict | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decoded (1, N, 5 + nc) with a graph back to the hooked layers' outputs [(1, C, h, w)]."""
        captured: dict[int, torch.Tensor] = {}
        hooks = [self.model.model[i].register_forward_hook(lambda m, a, out, i=i: captured.__setitem__(i, out))
                 for i in self.layers]
        self.model.model[-1].reset_grids()  # grids cached under inference_mode cannot join a graph
        try:
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                out = self.model(x, side) if side else self.model(x)
        finally:
            for h in hooks:
                h.remove()
            self.model.model[-1].reset_grids()
        decoded = out[0] if isinstance(out, (tuple, list)) else out
        return decoded.float(), [captured[i] for i in self.layers]

    def __call__(self, x: torch.Tensor, side: dict | None = None, classes: list[int] | None = None,
                 conf_thres: float = 0.25) -> CamResult:
        """Maps for `classes` (default: all, or the MAX_CLASSES best) of one image x (1, 3, H, W)."""
        if x.shape[0] != 1:
            raise ValueError(f"Grad-CAM++ explains one image at a time, got a batch of {x.shape[0]}")
        decoded, acts = self.forward(x, side)
        scores = class_scores(decoded, conf_thres)  # (nc,)
        if classes is None:
            classes = scores.detach().argsort(descending=True)[:MAX_CLASSES].sort().values.tolist()
        maps = []
        for c in classes:
            grads = torch.autograd.grad(scores[c], acts, retain_graph=True, allow_unused=True)
            total = torch.zeros(x.shape[-2:], device=x.device)
            for a, g in zip(acts, grads):
                if g is not None:
                    cam = gradcam_plus_plus(a[0].detach().float(), g[0].float())
                    cam = F.interpolate(cam[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
                    total += cam[0, 0]
            maps.append(total)
        stacked = torch.stack(maps) if maps else torch.zeros(0, *x.shape[-2:])  # (K, H, W)
        peak = stacked.max() if stacked.numel() else torch.tensor(0.0)
        stacked = stacked / peak if peak > 0 else stacked
        return CamResult(stacked.cpu(), list(map(int, classes)), [float(scores[c].detach()) for c in classes])


def to_original(heat: torch.Tensor, shape: tuple[int, int], ratio_pad: tuple) -> np.ndarray:
    """A map over the network input (H, W) -> over the original image (h0, w0), undoing letterbox/stretch."""
    (rh, rw), (dw, dh) = ratio_pad
    h0, w0 = shape
    H, W = heat.shape
    x1, y1 = int(round(dw)), int(round(dh))
    x2, y2 = min(W, x1 + max(1, round(w0 * rw))), min(H, y1 + max(1, round(h0 * rh)))
    crop = heat[y1:y2, x1:x2].numpy().astype(np.float32)
    return cv2.resize(crop, (w0, h0), interpolation=cv2.INTER_LINEAR)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend a 0-1 heat map (h, w) over a BGR image as a JET colour map."""
    colour = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(image, 1 - alpha, colour, alpha, 0)


def cam_strip(image: np.ndarray, result: CamResult, ratio_pad: tuple, names: list[str],
              det: torch.Tensor | None = None) -> np.ndarray:
    """One row of tiles, one per class (the paper's Fig. 14): heat map, the class's boxes, its name."""
    tiles = []
    for heat, c, score in zip(result.maps, result.classes, result.scores):
        annotator = Annotator(overlay(image, to_original(heat, image.shape[:2], ratio_pad)))
        if det is not None:
            for *xyxy, conf, cls in det.tolist():
                if int(cls) == c:
                    annotator.box_label(xyxy, f"{conf:.2f}", color=colors(c, True))
        annotator.text((2, 2), f"{names[c] if c < len(names) else c} {score:.2f}")
        tiles.append(annotator.result())
    return np.concatenate(tiles, 1) if tiles else image.copy()


class CamWriter:
    """detect.py --cam: writes <save_dir>/cam/<image stem>.jpg for every frame it is given."""

    def __init__(self, model: torch.nn.Module, predictor, names: list[str], save_dir: Path,
                 layers: list[int] | None = None):
        self.cam, self.predictor, self.names = GradCAMPlusPlus(model, layers), predictor, names
        self.save_dir = Path(save_dir) / "cam"
        self.dtype = next(model.parameters()).dtype

    def write(self, frame, det: torch.Tensor) -> Path:
        x, ratio_pad = self.predictor.preprocess(frame.image)
        side_fn = self.predictor.side_fn
        side = side_fn(frame.path, frame.image, tuple(x.shape[-2:])) if side_fn else None
        result = self.cam(x.to(self.dtype), side, conf_thres=self.predictor.options.conf_thres)
        strip = cam_strip(frame.image, result, ratio_pad, self.names, det)
        path = self.save_dir / f"{frame.stem}.jpg"
        ok, buf = cv2.imencode(".jpg", strip)
        if not ok:
            raise ValueError(f"{frame.path}: could not encode its Grad-CAM++ image")
        atomic_write_bytes(path, buf.tobytes())
        return path
