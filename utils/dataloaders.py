"""Images and YOLO labels -> augmented batches, with geometry that can be replayed on extra maps.

`LoadImagesAndLabels` checks every image/label pair once (the result is cached as JSON beside the
labels), then serves letterboxed — or, with `scale_mode`, stretched — images with YOLOv5's
augmentations. Every geometric step is recorded in a `Placement` per source image, so a subclass
whose `load_extras` returns per-image maps (D3N's diffusion latents) gets them warped like the
pixels: resize, letterbox, mosaic tiles, affine/perspective, crop, flips. Photometric steps (HSV)
touch the image only. Under mixup the extras are mixed with the same weight as the images.
Label files hold boxes or YOLOv5 segment polygons; a detector trains on the polygons' boxes, and
`utils.segment_dataset` replays the same placements on the polygons themselves.
"""

from __future__ import annotations

import contextlib

import hashlib
import json
import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from utils.augmentations import augment_hsv, letterbox, mixup, mosaic_span, random_perspective, stretch, warp_map
from utils.boxes import xywhn2xyxy, xyxy2xywhn
from utils.data_config import img2label_paths
from utils.files import atomic_write_text
from utils.hyp import Hyp
from utils.images import MIN_IMAGE_SIDE, decode_image
from utils.labels import parse_label_text
from utils.torch_utils import main_process_first

LOGGER = logging.getLogger(__name__)

CACHE_VERSION = 4  # bump when the verification rules change, so old caches are rebuilt


# ---------------------------------------------------------------- label verification

def verify_image(im_file: Path) -> dict:
    """An image's cache entry without its labels: decoded and measured (status "unlabeled"), or "corrupt"."""
    entry = {"shape": None, "labels": [], "segments": [], "status": "corrupt", "msgs": [], "dropped": 0}
    im, problem = decode_image(im_file)
    if im is None or min(im.shape[:2]) < MIN_IMAGE_SIDE:
        problem = problem if im is None else f"smaller than {MIN_IMAGE_SIDE} px"
        entry["msgs"] = [f"{im_file}: image {problem}; skipped"]
        return entry
    notes = [f"{im_file}: {problem}; used"] if problem else []  # a truncated JPEG (utils.images)
    entry.update(shape=[im.shape[1], im.shape[0]], status="unlabeled", msgs=notes)  # w, h
    return entry


def verify_image_label(im_file: Path, label_file: Path, nc: int | None) -> dict:
    """Decode one image and parse its labels -> a JSON-able cache entry with status and messages.

    `segments` holds the file's polygons as flat [x1, y1, x2, y2, ...] lists, or nothing for box labels.
    """
    entry = verify_image(im_file)
    if entry["status"] == "corrupt":
        return entry
    if not label_file.is_file():
        entry.update(status="missing")
        return entry
    try:
        text = label_file.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not part of row 1
    except (OSError, UnicodeDecodeError) as e:
        entry.update(status="corrupt", msgs=[f"{label_file}: label file unreadable ({type(e).__name__}); image skipped"])
        return entry
    labels, polygons, msgs = parse_label_text(text, label_file, nc, tuple(entry["shape"]))
    entry.update(labels=labels.tolist(), status="found" if len(labels) else "empty", msgs=entry["msgs"] + msgs,
                 dropped=sum(m.endswith("row dropped") for m in msgs),
                 segments=[p.reshape(-1).tolist() for p in polygons])
    return entry


def scan_images(im_files: list[Path], prefix: str = "") -> list[dict]:
    """verify_image for every unlabelled image (not cached: its cache would sit among label files)."""
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        jobs = pool.map(verify_image, im_files)
        return list(tqdm(jobs, total=len(im_files), desc=f"{prefix}Scanning unlabeled images", leave=False))


def label_cache_path(label_files: list[Path]) -> Path:
    """labels/train/a.txt -> labels/train.cache.json (beside the label directory)."""
    label_dir = Path(label_files[0]).parent
    return label_dir.parent / f"{label_dir.name}.cache.json"


def files_fingerprint(im_files: list[Path], label_files: list[Path], nc: int | None) -> str:
    """Hash of every path, size and mtime: any added, removed or edited file invalidates the cache."""
    h = hashlib.sha256(json.dumps([CACHE_VERSION, nc]).encode())
    for f in (*im_files, *label_files):
        try:
            st = os.stat(f)
            sig = [st.st_size, st.st_mtime_ns]
        except OSError:
            sig = None
        h.update(json.dumps([str(f), sig]).encode())
    return h.hexdigest()


def _read_cache(path: Path, key: str, n: int) -> list[dict] | None:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(cache, dict) or cache.get("hash") != key or len(cache.get("entries", ())) != n:
        return None
    return cache["entries"]


def scan_labels(im_files: list[Path], label_files: list[Path], nc: int | None,
                prefix: str = "") -> tuple[list[dict], bool]:
    """Verify every pair, or reuse the JSON cache when no file changed -> (entries, from_cache)."""
    path, key = label_cache_path(label_files), files_fingerprint(im_files, label_files, nc)
    entries = _read_cache(path, key, len(im_files))
    if entries is not None:
        return entries, True
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        jobs = pool.map(verify_image_label, im_files, label_files, repeat(nc))
        entries = list(tqdm(jobs, total=len(im_files), desc=f"{prefix}Scanning {path.parent}", leave=False))
    try:
        atomic_write_text(path, json.dumps({"version": CACHE_VERSION, "hash": key, "entries": entries}))
    except OSError as e:
        LOGGER.warning("%s%s: cannot write the label cache (%s); it will be rebuilt next time", prefix, path, e)
    return entries, False


def log_scan_summary(entries: list[dict], prefix: str = "") -> None:
    """One warning per dropped row or skipped image, then the one-line summary users look for."""
    for entry in entries:
        for msg in entry["msgs"]:
            LOGGER.warning("%s%s", prefix, msg)
    count = {s: sum(e["status"] == s for e in entries) for s in ("found", "missing", "empty", "corrupt")}
    dropped = sum(e["dropped"] for e in entries)
    log = LOGGER.warning if count["corrupt"] or dropped else LOGGER.info  # problems stay visible under --quiet
    log(f"{prefix}Scanning {len(entries)} images: {count['found']} labelled, {count['missing']} missing "
                f"labels, {count['empty']} empty, {count['corrupt']} corrupt, {dropped} label rows dropped")


def verified_images(im_files: list[Path], prefix: str = "") -> list[Path]:
    """The images training uses: those verify_image decodes (the rule of the label scan), with its warnings.

    For readers that need pixels only (D3N's stage 1), so an image train.py skips is skipped there too,
    with the same message, instead of aborting or being accepted; no label file is opened.
    """
    im_files = [Path(f) for f in im_files]
    if not im_files:
        return []
    entries = scan_images(im_files, prefix)
    for msg in (m for e in entries for m in e["msgs"]):
        LOGGER.warning("%s%s", prefix, msg)
    kept = [f for f, e in zip(im_files, entries) if e["status"] != "corrupt"]
    if len(kept) < len(im_files):
        LOGGER.warning("%s%d of %d images skipped (unreadable, as in training)", prefix, len(im_files) - len(kept),
                       len(im_files))
    return kept


# ---------------------------------------------------------------- geometry records

@dataclass
class Placement:
    """Where one source image landed in a sample, for replaying the geometry on its extra maps.

    `to_canvas` (3, 3): source-normalised (u, v) -> canvas px; the source shows inside `rect`
    (x1, y1, x2, y2 canvas px); `to_output` (3, 3): canvas px -> output px; `weight` < 1 under mixup.
    """

    index: int
    to_canvas: np.ndarray
    rect: tuple[float, float, float, float]
    to_output: np.ndarray = field(default_factory=lambda: np.eye(3))
    weight: float = 1.0


@dataclass
class Sample:
    """A sample between the geometric and the final steps: BGR image, (n, 5) [cls, xyxy px] labels."""

    image: np.ndarray
    labels: np.ndarray
    placements: list[Placement]
    shapes: tuple | None = None  # ((h0, w0), ((rh, rw), (padw, padh))) for scale_boxes; None for a mosaic
    flip_lr: bool = False
    flip_ud: bool = False


def _affine(sx: float, sy: float, tx: float, ty: float) -> np.ndarray:
    return np.array([[sx, 0.0, tx], [0.0, sy, ty], [0.0, 0.0, 1.0]])


def _flip_matrix(flip_lr: bool, flip_ud: bool, width: int, height: int) -> np.ndarray:
    return _affine(-1.0 if flip_lr else 1.0, -1.0 if flip_ud else 1.0, width if flip_lr else 0.0,
                   height if flip_ud else 0.0)


# ---------------------------------------------------------------- dataset

class LoadImagesAndLabels(Dataset):
    """YOLO images + labels for training and validation, with replayable geometry for extra maps.

    `labels` holds per image (k, 5) [cls, x, y, w, h] normalised; `segments` the same rows' polygons (one (m, 2)
    normalised array each) when the label file holds segment polygons, else []. Subclasses add per-image maps
    by overriding `load_extras` and setting `extra_strides` {name: stride of the output grid relative to the
    output image}.
    """

    def __init__(self, img_files: list[Path], imgsz: int = 640, batch_size: int = 16, augment: bool = False,
                 hyp: Hyp | None = None, rect: bool = False, stride: int = 32, pad: float = 0.0,
                 scale_mode: bool = False, cache: str | None = None, single_cls: bool = False,
                 nc: int | None = None, seed: int = 0, prefix: str = "", labelled: bool = True) -> None:
        if scale_mode and rect:
            LOGGER.warning("%sscale_mode stretches every image to a square; rect is ignored", prefix)
            rect = False
        self.imgsz, self.augment, self.hyp, self.rect = imgsz, augment, hyp or Hyp(), rect
        self.stride, self.scale_mode, self.seed, self.prefix = stride, scale_mode, seed, prefix
        self.mosaic = augment and not rect  # mosaics are square, rect batches are not
        self.mosaic_border = (-imgsz // 2, -imgsz // 2)
        self.extra_strides: dict[str, int] = dict(getattr(self, "extra_strides", {}))
        self.labelled = labelled  # False: unlabelled images (distillation only); no label file is opened
        self._load_labels([Path(f) for f in img_files], nc, single_cls)
        self.batch_shapes, self.batch_index = None, None
        if rect:
            self._sort_for_rect(batch_size, pad)
        self.ims: list[tuple | None] = [None] * len(self.im_files)
        if cache == "ram":
            self._cache_ram()
        elif cache:
            raise ValueError(f"{prefix}cache={cache!r}: expected None or 'ram'")

    def _load_labels(self, im_files: list[Path], nc: int | None, single_cls: bool) -> None:
        if not im_files:
            raise ValueError(f"{self.prefix}no image files given")
        label_files = img2label_paths(im_files)
        if self.labelled:
            entries, self.from_cache = scan_labels(im_files, label_files, nc, self.prefix)
            log_scan_summary(entries, self.prefix)
        else:
            entries, self.from_cache = scan_images(im_files, self.prefix), False
            for msg in (m for e in entries for m in e["msgs"]):
                LOGGER.warning("%s%s", self.prefix, msg)
        keep = [i for i, e in enumerate(entries) if e["status"] != "corrupt"]
        if not keep:
            raise ValueError(f"{self.prefix}{im_files[0].parent}: none of the {len(im_files)} images is readable")
        self.im_files = [im_files[i] for i in keep]
        self.label_files = [label_files[i] for i in keep]
        self.labels = [np.array(entries[i]["labels"], np.float32).reshape(-1, 5) for i in keep]
        self.segments = [[np.array(p, np.float32).reshape(-1, 2) for p in entries[i]["segments"]] for i in keep]
        self.shapes = np.array([entries[i]["shape"] for i in keep], np.int64).reshape(-1, 2)  # (N, 2) w, h
        if single_cls:
            for lb in self.labels:
                lb[:, 0] = 0
        if self.augment and self.labelled and not any(len(lb) for lb in self.labels):
            LOGGER.warning("%s%s: no labels found; training on background only", self.prefix, im_files[0].parent)

    def _sort_for_rect(self, batch_size: int, pad: float) -> None:
        """Sort by aspect ratio so each batch shares one small padded shape (batch_shapes, (nb, 2) h, w)."""
        aspect = self.shapes[:, 1] / self.shapes[:, 0]  # h / w
        order = aspect.argsort(kind="stable")
        self.im_files = [self.im_files[i] for i in order]
        self.label_files = [self.label_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.segments = [self.segments[i] for i in order]
        self.shapes, aspect = self.shapes[order], aspect[order]
        self.batch_index = np.arange(len(order)) // batch_size
        rel = np.ones((self.batch_index[-1] + 1, 2))
        for b in range(len(rel)):
            lo, hi = aspect[self.batch_index == b].min(), aspect[self.batch_index == b].max()
            if hi < 1:
                rel[b] = hi, 1
            elif lo > 1:
                rel[b] = 1, 1 / lo
        self.batch_shapes = (np.ceil(rel * self.imgsz / self.stride + pad) * self.stride).astype(int)

    def _cache_ram(self) -> None:
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            jobs = pool.map(self._read_resized, range(len(self)))
            self.ims = list(tqdm(jobs, total=len(self), desc=f"{self.prefix}Caching images", leave=False))
        gb = sum(im.nbytes for im, _, _ in self.ims) / 1e9
        LOGGER.info("%sCached %d images in RAM (%.2f GB)", self.prefix, len(self), gb)

    def __len__(self) -> int:
        return len(self.im_files)

    def _read_resized(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        path = self.im_files[i]
        im, _ = decode_image(path)  # BGR; a truncated JPEG was warned about by the scan
        if im is None:
            raise FileNotFoundError(f"{path}: image cannot be read (was it changed after the label scan?)")
        h0, w0 = im.shape[:2]
        if self.scale_mode:
            im = stretch(im, self.imgsz)[0]
        else:
            r = self.imgsz / max(h0, w0)  # long side -> imgsz
            if r != 1:
                interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
                im = cv2.resize(im, (max(1, round(w0 * r)), max(1, round(h0 * r))), interpolation=interp)
        return im, (h0, w0), im.shape[:2]

    def resize_gains(self, h0: int, w0: int) -> tuple[float, float]:
        """(gain_w, gain_h) of load_image: imgsz over the long side, or per axis when stretched."""
        if self.scale_mode:
            return self.imgsz / w0, self.imgsz / h0
        r = self.imgsz / max(h0, w0)
        return r, r

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """-> (BGR image resized to imgsz on its long side — or stretched in scale mode, (h0, w0), (h, w))."""
        cached = self.ims[i]
        return (cached[0].copy(), cached[1], cached[2]) if cached is not None else self._read_resized(i)

    def load_extras(self, index: int) -> dict[str, torch.Tensor]:
        """Per-image maps {name: (C, h, w) float} laid over the whole original image; none in the base class."""
        return {}

    def __getitem__(self, index: int | tuple[int, int]) -> tuple:
        """-> (image uint8 (3, H, W) RGB, labels (k, 6) [0, cls, x, y, w, h] normalised, path, shapes, extras).

        `index` is an image index (stream 0), or a key (stream, index) from `utils.epoch_stream`: the sample for
        (seed, stream, index) is always the same, whichever process prepares it and whenever (--resume replays it)."""
        stream, index = index if isinstance(index, tuple) else (0, index)
        rng, hyp = np.random.default_rng([self.seed, int(stream), int(index)]), self.hyp
        if self.mosaic and rng.random() < hyp.mosaic:
            sample = self._load_mosaic(index, rng)
            if rng.random() < hyp.mixup:
                sample = self._mixup(sample, self._load_mosaic(int(rng.integers(len(self))), rng), rng)
        else:
            sample = self._load_letterboxed(index, rng)
        if self.augment:
            augment_hsv(sample.image, hyp.hsv_h, hyp.hsv_s, hyp.hsv_v, rng)
            sample.flip_ud = bool(rng.random() < hyp.flipud)
            sample.flip_lr = bool(rng.random() < hyp.fliplr)
        return self._finish(index, sample)

    def _load_letterboxed(self, index: int, rng: np.random.Generator) -> Sample:
        """One image, resized and letterboxed (to the rect batch shape or imgsz), then warped if augmenting."""
        im, (h0, w0), _ = self.load_image(index)
        shape = tuple(self.batch_shapes[self.batch_index[index]]) if self.rect else (self.imgsz, self.imgsz)
        im, (r, _), (padw, padh) = letterbox(im, shape, auto=False, scaleup=self.augment)
        gain_w, gain_h = (g * r for g in self.resize_gains(h0, w0))  # nominal: equal unless stretched
        w, h = w0 * gain_w, h0 * gain_h  # the image's extent in the output, px
        labels = self.labels[index].astype(np.float64)
        labels[:, 1:] = xywhn2xyxy(labels[:, 1:], w, h, padw, padh)
        placement = Placement(index, _affine(w, h, padw, padh), (padw, padh, padw + w, padh + h))
        shapes = ((h0, w0), ((gain_h, gain_w), (padw, padh)))
        if self.augment:
            hyp = self.hyp
            im, labels, placement.to_output = random_perspective(
                im, labels, hyp.degrees, hyp.translate, hyp.scale, hyp.shear, hyp.perspective, rng=rng)
        return Sample(im, labels, [placement], shapes)

    def _load_mosaic(self, index: int, rng: np.random.Generator) -> Sample:
        """Four images around a random centre of a 2s x 2s canvas, then warped and cropped to s x s."""
        s, hyp = self.imgsz, self.hyp
        yc, xc = (int(rng.uniform(-b, 2 * s + b)) for b in self.mosaic_border)
        canvas = np.full((2 * s, 2 * s, 3), 114, np.uint8)
        placements, labels = [], []
        for k, i in enumerate([index, *rng.integers(0, len(self), 3).tolist()]):
            im, _, (h, w) = self.load_image(i)
            x1a, x2a, x1b, x2b = mosaic_span(xc, w, 2 * s, before=k in (0, 2))
            y1a, y2a, y1b, y2b = mosaic_span(yc, h, 2 * s, before=k in (0, 1))
            canvas[y1a:y2a, x1a:x2a] = im[y1b:y2b, x1b:x2b]
            padw, padh = x1a - x1b, y1a - y1b
            placements.append(Placement(i, _affine(w, h, padw, padh), (x1a, y1a, x2a, y2a)))
            lb = self.labels[i].astype(np.float64)
            lb[:, 1:] = xywhn2xyxy(lb[:, 1:], w, h, padw, padh)
            labels.append(lb)
        labels = np.concatenate(labels, 0)
        labels[:, 1:] = labels[:, 1:].clip(0, 2 * s)
        canvas, labels, M = random_perspective(canvas, labels, hyp.degrees, hyp.translate, hyp.scale, hyp.shear,
                                               hyp.perspective, border=self.mosaic_border, rng=rng)
        for p in placements:
            p.to_output = M
        return Sample(canvas, labels, placements)

    @staticmethod
    def _mixup(a: Sample, b: Sample, rng: np.random.Generator) -> Sample:
        im, labels, r = mixup(a.image, a.labels, b.image, b.labels, rng)
        for p in a.placements:
            p.weight *= r
        for p in b.placements:
            p.weight *= 1 - r
        return Sample(im, labels, a.placements + b.placements)

    def _finish(self, index: int, sample: Sample) -> tuple:
        """Normalise labels, apply the flips, convert to tensors and warp the extras."""
        im, labels = sample.image, sample.labels
        h, w = im.shape[:2]
        xywh = xyxy2xywhn(labels[:, 1:5], w, h, clip=True, eps=1e-3)
        if sample.flip_ud:
            im, xywh[:, 1] = np.flipud(im), 1 - xywh[:, 1]
        if sample.flip_lr:
            im, xywh[:, 0] = np.fliplr(im), 1 - xywh[:, 0]
        labels_out = torch.zeros((len(labels), 6))  # (k, 6) [image index in batch, cls, x, y, w, h]
        labels_out[:, 1] = torch.from_numpy(labels[:, 0])
        labels_out[:, 2:] = torch.from_numpy(xywh)
        img = torch.from_numpy(np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1)))  # BGR HWC -> RGB CHW
        return img, labels_out, str(self.im_files[index]), sample.shapes, self._warp_extras(sample, (h, w))

    def _warp_extras(self, sample: Sample, out_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Each extra map through its source's placements, summed over tiles (disjoint), then flipped."""
        sources = {p.index: self.load_extras(p.index) for p in sample.placements}
        names = sources[sample.placements[0].index].keys()
        out = {}
        for name in names:
            if name not in self.extra_strides:
                raise KeyError(f"{type(self).__name__}.extra_strides has no stride for extra '{name}'")
            stride = self.extra_strides[name]
            grid_hw = (out_hw[0] // stride, out_hw[1] // stride)
            # flips are exact tensor flips when the grid tiles the image; otherwise fold them into the warp
            fold_lr = sample.flip_lr and out_hw[1] % stride != 0
            fold_ud = sample.flip_ud and out_hw[0] % stride != 0
            fold = _flip_matrix(fold_lr, fold_ud, out_hw[1], out_hw[0])
            warped = sum(warp_map(sources[p.index][name], p.to_canvas, p.rect, fold @ p.to_output, grid_hw, stride)
                         * p.weight for p in sample.placements)
            dims = [d for d, on in ((-2, sample.flip_ud and not fold_ud), (-1, sample.flip_lr and not fold_lr)) if on]
            out[name] = warped.flip(dims) if dims else warped
        return out


# ---------------------------------------------------------------- loader

def collate_fn(batch: list[tuple]) -> tuple:
    """Stack samples -> (images uint8 (B, 3, H, W), targets (n, 6) [img_idx, cls, x, y, w, h], paths, shapes,
    extras {name: (B, C, h, w)})."""
    imgs, labels, paths, shapes, extras = zip(*batch)
    for i, lb in enumerate(labels):
        lb[:, 0] = i
    stacked = {name: torch.stack([e[name] for e in extras]) for name in extras[0]}
    return torch.stack(imgs), torch.cat(labels, 0), paths, shapes, stacked


UNLABELED = "unlabeled"  # extras key: (B,) 1.0 for an unlabelled image of a joined batch, 0.0 for a labelled one


def join_batches(labelled: tuple, unlabeled: tuple) -> tuple:
    """A labelled batch followed by an unlabelled one (same image size): one batch whose extras say which is which."""
    imgs_l, targets, paths_l, shapes_l, extras_l = labelled
    imgs_u, _, paths_u, shapes_u, extras_u = unlabeled  # an unlabelled batch has no targets
    if imgs_l.shape[1:] != imgs_u.shape[1:]:
        raise ValueError(f"labelled images {tuple(imgs_l.shape[2:])} and unlabeled {tuple(imgs_u.shape[2:])} differ in "
                         "size; train without --rect")
    flags = torch.cat((torch.zeros(len(imgs_l)), torch.ones(len(imgs_u))))
    extras = {k: torch.cat((extras_l[k], extras_u[k])) for k in extras_l}
    return (torch.cat((imgs_l, imgs_u)), targets, (*paths_l, *paths_u), (*shapes_l, *shapes_u),
            {**extras, UNLABELED: flags})


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random per worker from torch's per-worker seed (itself from the loader's generator).

    Also keeps OpenCV single-threaded inside workers: its own thread pool would compete with the
    other workers and the training threads for the same cores (torch already runs 1 thread here)."""
    cv2.setNumThreads(0)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def create_dataloader(img_files: list[Path], imgsz: int, batch_size: int, stride: int, *, hyp: Hyp | None = None,
                      augment: bool = False, cache: str | None = None, rect: bool = False, scale_mode: bool = False,
                      workers: int = 8, shuffle: bool = False, seed: int = 0, single_cls: bool = False,
                      nc: int | None = None, prefix: str = "", dataset_cls: type = LoadImagesAndLabels,
                      dataset_kwargs: dict | None = None, distributed: bool | None = None) -> tuple[DataLoader, Dataset]:
    """A DataLoader over `dataset_cls`; under torch.distributed each rank gets its share of every epoch.

    Shuffling uses a sampler seeded by (seed, epoch); training draws its epochs through `utils.epoch_stream`,
    whose sample keys seed each sample's augmentation by the same epoch. Batches are put together by the
    dataset class's `collate_fn` when it has one (masks), else by `collate_fn` here.
    `distributed=False` builds a whole-split loader on one rank (rank-0 validation under DDP).
    """
    use_dist = dist.is_initialized() if distributed is None else distributed
    if rect and shuffle:
        LOGGER.warning("%srect=True is incompatible with shuffle; setting shuffle=False", prefix)
        shuffle = False
    world = dist.get_world_size() if use_dist else 1
    kwargs = dict(imgsz=imgsz, batch_size=batch_size * world,  # rect shapes per global batch: ranks interleave
                  augment=augment, hyp=hyp, rect=rect, stride=stride, scale_mode=scale_mode, cache=cache,
                  single_cls=single_cls, nc=nc, seed=seed, prefix=prefix)
    kwargs.update(dataset_kwargs or {})
    with main_process_first() if use_dist else contextlib.nullcontext():
        dataset = dataset_cls(img_files, **kwargs)
    batch_size = min(batch_size, len(dataset))
    nw = min((os.cpu_count() or 1) // world, batch_size if batch_size > 1 else 0, workers)
    if use_dist:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    else:  # one replica: the same per-epoch seeded shuffle, without a process group
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed) if shuffle else None
    generator = torch.Generator()
    generator.manual_seed(seed + (dist.get_rank() if use_dist else 0))
    collate = getattr(dataset, "collate_fn", collate_fn)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=nw,
                        pin_memory=torch.cuda.is_available(), collate_fn=collate, worker_init_fn=seed_worker,
                        generator=generator, persistent_workers=nw > 0)
    return loader, dataset
