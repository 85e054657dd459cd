"""What the feature probe reads: per-cell class maps from the YOLO boxes, and features from its sources.

Every source maps a batch of images to one (B, T, C, h, w) float32 tensor per level (P3, P4, P5), on
the grids the repository stores, each grid spanning the whole stretched image. T is the repository's
timesteps for the UNet sources and 1 for the raw-pixel controls and the detector references.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from d3n_ext.distill import DetectInputs
from d3n_ext.stage1.checkpoints import load_ddpm
from d3n_ext.stage1.config import FeatureConfig
from d3n_ext.stage1.features import DDPMFeatureExtractor, load_feature_decoders
from d3n_ext.stage1.repository import LatentRepository
from d3n_ext.stage1.unet import UNet, UNetConfig
from models.loading import build_from_checkpoint, read_detector_checkpoint
from utils.augmentations import stretch
from utils.data_config import DataConfigError, img2label_paths
from utils.dataloaders import log_scan_summary, scan_labels

LOGGER = logging.getLogger(__name__)

SOURCES = ("ddpm-decoded", "ddpm-raw", "random-unet", "image-pooled", "image-patches")
CONTROLS = ("random-unet", "image-pooled", "image-patches")
REFERENCES = ("detector", "detector+ddpm", "detector+random-unet")  # with --detector: what a trained detector knows
NO_TIMESTEP = "-"
ALL_TIMESTEPS = "all"


def read_boxes(image_paths: list[Path], nc: int, split: str) -> tuple[list[Path], list[np.ndarray]]:
    """The split's readable images and per image (k, 5) float32 [cls, x, y, w, h] (normalised).

    Read by training's label scan (its cache, its rules: BOM, bad rows, undecodable images skipped
    with the same warnings). An image without a label file has no defects (YOLOv5's rule), but a
    split without any label file is a mistake: the probe has nothing to learn from, so it stops
    and names the folder.
    """
    label_files = img2label_paths(image_paths)
    if not any(f.is_file() for f in label_files):
        raise DataConfigError(f"{label_files[0].parent}: no YOLO label files for the {len(image_paths)} "
                              f"'{split}' images (the probe needs boxes)")
    entries, _ = scan_labels(list(image_paths), label_files, nc, f"{split}: ")
    log_scan_summary(entries, f"{split}: ")
    kept = [(p, np.asarray(e["labels"], np.float32).reshape(-1, 5)) for p, e in zip(image_paths, entries)
            if e["status"] != "corrupt"]
    return [p for p, _ in kept], [b for _, b in kept]


def _covered(centres: np.ndarray, lo: float, hi: float, mid: float) -> np.ndarray:
    """Cells whose centre lies in [lo, hi] along one axis; the cell holding `mid` when none does."""
    inside = (centres >= lo) & (centres <= hi)
    if not inside.any():
        inside[min(int(mid * len(centres)), len(centres) - 1)] = True
    return inside


def cell_targets(boxes: np.ndarray, hw: tuple[int, int], nc: int) -> np.ndarray:
    """(h, w) int64 class map: the class of the smallest box covering a cell's centre, else nc (background).

    A box narrower (or shorter) than a cell may fall between cell centres; along that axis it then
    marks the cell holding its own centre, as YOLO assigns objects, so thin scratches and small pits
    are not lost on coarse grids.
    """
    h, w = hw
    target = np.full((h, w), nc, np.int64)
    u, v = (np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h
    for cls, x, y, bw, bh in boxes[np.argsort(-boxes[:, 3] * boxes[:, 4], kind="stable")]:  # smallest painted last
        cols = _covered(u, x - bw / 2, x + bw / 2, x)
        rows = _covered(v, y - bh / 2, y + bh / 2, y)
        target[np.ix_(rows, cols)] = int(cls)
    return target


class FeatureSource(Protocol):
    name: str
    timesteps: list[str]  # row labels of the timestep axis

    def __call__(self, paths: list[Path], images: list[np.ndarray]) -> list[torch.Tensor]:
        """BGR images (and their files) -> per level (B, T, C, h, w) float32."""


class DecodedLatents:
    """`ddpm-decoded`: the repository's latents through the frozen compressor decoder, as the teacher sees them."""

    name = "ddpm-decoded"

    def __init__(self, repo: LatentRepository, device: torch.device):
        self.repo, self.device = repo, device
        self.decoders = load_feature_decoders(repo.root, device)
        self.timesteps = [str(t) for t in repo.timesteps]

    @torch.no_grad()
    def __call__(self, paths: list[Path], images: list[np.ndarray]) -> list[torch.Tensor]:
        rows = [self.repo.lookup(p) for p in paths]  # per image, per level (T, C_latent, h, w) float16
        return [decoder(torch.from_numpy(np.stack([r[i] for r in rows])).to(self.device)).float()
                for i, decoder in enumerate(self.decoders)]


class UNetTaps:
    """`ddpm-raw` / `random-unet`: a UNet's decoder taps with the repository's timesteps and noise rule."""

    def __init__(self, name: str, extractor: DDPMFeatureExtractor):
        self.name, self.extractor = name, extractor
        self.timesteps = [str(t) for t in extractor.features.timesteps]

    def __call__(self, paths: list[Path], images: list[np.ndarray]) -> list[torch.Tensor]:
        return self.extractor(images)


def random_unet(cfg: UNetConfig, seed: int) -> UNet:
    """The DDPM's architecture, untrained: PyTorch's default initialisation in every layer, seeded.

    UNet() zero-initialises the last conv of each residual branch and each attention projection
    (training starts from identities); left so, the untrained network is a linear map of its input,
    a weaker control than 'the architecture alone'. reset_parameters() draws those layers too.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet(cfg)
        for module in unet.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.reset_parameters()
    return unet.eval().requires_grad_(False)


def image_grid(image_bgr: np.ndarray, hw: tuple[int, int], k: int = 1) -> np.ndarray:
    """(k², h, w) float32: the grey image in [-1, 1] stretched to (h·k, w·k), area-averaged; a k×k patch per cell.

    Where h·k exceeds the image side the resize can only repeat pixels: the control then holds the whole image.
    """
    h, w = hw
    grey = cv2.cvtColor(cv2.resize(image_bgr, (w * k, h * k), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
    x = grey.astype(np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(x.reshape(h, k, w, k).transpose(1, 3, 0, 2).reshape(k * k, h, w))


class ImageGrid:
    """Raw-pixel controls: `image-pooled` (k = 1, mean grey level per cell), `image-patches` (k×k pixels per cell)."""

    timesteps = [NO_TIMESTEP]

    def __init__(self, name: str, grids: list[tuple[int, int]], k: int):
        self.name, self.grids, self.k = name, grids, k

    def __call__(self, paths: list[Path], images: list[np.ndarray]) -> list[torch.Tensor]:
        return [torch.from_numpy(np.stack([image_grid(im, hw, self.k) for im in images]))[:, None]
                for hw in self.grids]


class DetectorMaps:
    """`detector`: a trained plain YOLOv5's neck maps (what its Detect reads), bilinearly resized to the repository grids.

    A reference, not a control: a detector trained on the boxes knows where they are. What the probe
    asks of it is the margin `detector+ddpm` − `detector`: whether the DDPM's features hold anything the
    detector has not learnt itself, which is all a fusion block can add — set against
    `detector+random-unet`, since any extra channels give a linear probe some room. Images are stretched to the
    detector's training size, as the letterbox-free teacher sees them, so each map covers the whole image.
    """

    name = "detector"
    timesteps = [NO_TIMESTEP]

    def __init__(self, weights: str | Path, grids: list[tuple[int, int]], device: torch.device, imgsz: int = 0):
        ckpt = read_detector_checkpoint(weights)
        self.model = build_from_checkpoint(ckpt, weights).to(device).eval().requires_grad_(False)
        if self.model.side_inputs:
            raise ValueError(f"{weights}: a hybrid detector (it reads {', '.join(self.model.side_inputs)}); "
                             "the probe's reference is a plain YOLOv5, e.g. the pipeline's baseline/weights/best.pt")
        self.imgsz = imgsz or int((ckpt.get("train_opts") or {}).get("imgsz", 0))
        if self.imgsz <= 0 or self.imgsz % int(self.model.stride.max()):
            raise ValueError(f"{weights}: records no usable training size ({self.imgsz}); pass --detector-imgsz "
                             f"(a multiple of {int(self.model.stride.max())})")
        self.grids, self.device = grids, device
        self.inputs = DetectInputs(self.model.detect)

    @torch.no_grad()
    def __call__(self, paths: list[Path], images: list[np.ndarray]) -> list[torch.Tensor]:
        batch = np.stack([stretch(im, (self.imgsz, self.imgsz))[0][..., ::-1].transpose(2, 0, 1) for im in images])
        self.model(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device).float() / 255.0)
        return [F.interpolate(m.float(), size=hw, mode="bilinear", align_corners=False)[:, None]
                for m, hw in zip(self.inputs.maps, self.grids)]


class JoinedSource:
    """`detector+<source>`: the detector's maps and another source's features of every timestep, side by side per cell."""

    timesteps = [ALL_TIMESTEPS]

    def __init__(self, name: str, detector: DetectorMaps, other: FeatureSource):
        self.name, self.detector, self.other = name, detector, other

    def __call__(self, paths: list[Path], images: list[np.ndarray]) -> list[torch.Tensor]:
        return [torch.cat([d.flatten(1, 2), f.flatten(1, 2)], 1)[:, None]
                for d, f in zip(self.detector(paths, images), self.other(paths, images))]


class LastBatch:
    """A source that keeps its last batch's features: a joined reference then reuses what its parts computed."""

    def __init__(self, source: FeatureSource):
        self.source, self.name, self.timesteps = source, source.name, source.timesteps
        self._key: tuple[Path, ...] | None = None
        self._features: list[torch.Tensor] = []

    def __call__(self, paths: list[Path], images: list[np.ndarray]) -> list[torch.Tensor]:
        if tuple(paths) != self._key:
            self._key, self._features = tuple(paths), self.source(paths, images)
        return self._features


def open_sources(repo: LatentRepository, names: list[str], device: torch.device, seed: int,
                 patch: int, detector: str = "", detector_imgsz: int = 0) -> list[FeatureSource]:
    """The requested sources, in SOURCES order, built from the repository's own weights and settings.

    With a `detector` checkpoint the REFERENCES follow them: those named in `names`, or all three.
    """
    unknown = sorted(set(names) - set(SOURCES) - set(REFERENCES))
    if unknown:
        raise ValueError(f"--sources {' '.join(unknown)}: expected some of {', '.join(SOURCES + REFERENCES)}")
    if any(n in REFERENCES for n in names) and not detector:
        raise ValueError(f"--sources {' '.join(n for n in names if n in REFERENCES)}: needs --detector WEIGHTS "
                         "(a trained plain YOLOv5)")
    unet, diffusion, _ = load_ddpm(repo.weight_file("ddpm"), device)
    features = FeatureConfig(**repo.manifest["features"])
    grids = [lv.hw for lv in repo.levels]
    if [(h, w) for _, h, w in unet.cfg.tap_shapes()] != grids:
        raise ValueError(f"{repo.root}: DDPM taps {unet.cfg.tap_shapes()} do not match the repository grids {grids}")
    make = {
        "ddpm-decoded": lambda: DecodedLatents(repo, device),
        "ddpm-raw": lambda: UNetTaps("ddpm-raw", DDPMFeatureExtractor(unet, diffusion, features)),
        "random-unet": lambda: UNetTaps("random-unet", DDPMFeatureExtractor(
            random_unet(unet.cfg, seed).to(device), diffusion, features)),
        "image-pooled": lambda: ImageGrid("image-pooled", grids, 1),
        "image-patches": lambda: ImageGrid("image-patches", grids, patch),
    }
    built = {name: LastBatch(make[name]()) for name in SOURCES if name in names}
    if detector:
        wanted = [n for n in REFERENCES if n in names] or list(REFERENCES)
        maps = LastBatch(DetectorMaps(detector, grids, device, detector_imgsz))
        partners = {"detector+ddpm": "ddpm-decoded", "detector+random-unet": "random-unet"}
        for name in wanted:
            other = partners.get(name)
            built[name] = maps if other is None else JoinedSource(name, maps, built.get(other) or make[other]())
    return list(built.values())
