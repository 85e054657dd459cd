"""AutoAnchor: check that a model's anchors can reach a dataset's boxes, and evolve new ones if not.

A box can only be learnt by an anchor whose width and height are both within a factor anchor_t of
the box's (the loss's matching rule), so "best possible recall" (BPR) is the share of boxes with
at least one such anchor. Defect datasets (long thin scratches, tiny pits) often miss the COCO
anchors, hence the check before training.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn as nn
from scipy.cluster.vq import kmeans
from tqdm import tqdm

from utils.torch_utils import de_parallel

LOGGER = logging.getLogger(__name__)

BPR_GOOD = 0.98  # above this recall the current anchors are kept without trying new ones
MIN_BOX_PX = 2.0  # boxes with both sides below this are too small to steer the anchors
MUTATION_PROB, MUTATION_SIGMA = 0.9, 0.1


def _ratio_metric(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(n, k) worst side ratio of each box to each anchor: 1 is a perfect fit, 1/4 a 4x mismatch."""
    r = wh[:, None] / anchors[None]  # (n, k, 2)
    return np.minimum(r, 1 / r).min(2)


def best_possible_recall(wh: np.ndarray, anchors: np.ndarray, thr: float) -> tuple[float, float]:
    """(BPR, mean anchors above threshold per box) for (n, 2) box and (k, 2) anchor sizes in pixels."""
    x = _ratio_metric(np.asarray(wh, dtype=np.float64), np.asarray(anchors, dtype=np.float64))
    above = x > 1 / thr
    return float(above.any(1).mean()), float(above.sum(1).mean())


def anchor_fitness(wh: np.ndarray, anchors: np.ndarray, thr: float) -> float:
    """What the evolution maximises: the mean best ratio, counting only boxes within reach."""
    best = _ratio_metric(np.asarray(wh, dtype=np.float64), np.asarray(anchors, dtype=np.float64)).max(1)
    return float((best * (best > 1 / thr)).mean())


def _kmeans_start(wh: np.ndarray, n: int, img_size: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) k-means centres of the whitened sizes; random sizes when k-means cannot give n."""
    distinct = np.unique(wh, axis=0)
    if len(distinct) >= n:
        std = wh.std(0)
        std[std == 0] = 1.0  # identical sizes along one axis: nothing to whiten
        guess = distinct[rng.choice(len(distinct), n, replace=False)] / std  # seeded start: deterministic
        centres, _ = kmeans(wh / std, guess)
        if len(centres) == n:
            return centres * std
    LOGGER.warning("AutoAnchor: k-means found fewer than %d anchors in %d boxes, starting from random ones",
                   n, len(wh))
    return np.sort(rng.random(n * 2)).reshape(n, 2) * img_size


def kmean_anchors(wh: np.ndarray, n: int = 9, img_size: int = 640, thr: float = 4.0, gen: int = 1000,
                  seed: int = 0) -> np.ndarray:
    """(n, 2) anchors in pixels for (m, 2) box sizes in pixels, sorted by area.

    k-means gives a start, then `gen` generations of multiplicative mutation keep whichever
    anchors raise `anchor_fitness`. Deterministic for a given seed.
    """
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    tiny = (wh < 3.0).any(1).sum()
    if tiny:
        LOGGER.warning("AutoAnchor: %d of %d boxes are smaller than 3 pixels", tiny, len(wh))
    wh = wh[(wh >= MIN_BOX_PX).any(1)]
    if not len(wh):
        raise ValueError(f"kmean_anchors: no box of at least {MIN_BOX_PX:g} pixels to fit anchors to")
    rng = np.random.default_rng(seed)
    k = _kmeans_start(wh, n, img_size, rng)
    best = anchor_fitness(wh, k, thr)
    for _ in tqdm(range(gen), desc="AutoAnchor evolving anchors", disable=None, leave=False):
        v = np.ones_like(k)
        while (v == 1).all():  # mutate at least one value
            mutate = rng.random(k.shape) < MUTATION_PROB
            v = (mutate * rng.random() * rng.standard_normal(k.shape) * MUTATION_SIGMA + 1).clip(0.3, 3.0)
        candidate = (k * v).clip(min=MIN_BOX_PX)
        fitness = anchor_fitness(wh, candidate, thr)
        if fitness > best:
            best, k = fitness, candidate
    return k[np.argsort(k.prod(1))]


def dataset_box_sizes(labels: list[np.ndarray], shapes: np.ndarray, imgsz: int, seed: int = 0,
                      stretch: bool = False) -> np.ndarray:
    """(n, 2) box sizes in pixels at training size, each image rescaled by a seeded 0.9-1.1 factor.

    The image's size at training follows the input rule: letterbox keeps the aspect (long side ->
    imgsz), `stretch` (--scale) makes every image imgsz x imgsz, so a box of a wide image narrows
    by imgsz/W and grows by imgsz/H. The factor stands in for scale augmentation so anchors are not
    fitted to one exact size.
    """
    shapes = np.asarray(shapes, dtype=np.float64).reshape(-1, 2)  # (N, 2) original w, h
    if len(labels) != len(shapes):
        raise ValueError(f"check_anchors: {len(labels)} label arrays for {len(shapes)} image shapes")
    if stretch:
        sizes = np.full_like(shapes, float(imgsz))  # (N, 2) w, h: every image stretched to the square
    else:
        sizes = imgsz * shapes / shapes.max(1, keepdims=True)  # (N, 2) w, h after resizing the long side
    scale = np.random.default_rng(seed).uniform(0.9, 1.1, size=(len(shapes), 1))
    wh = [np.asarray(lb, dtype=np.float64).reshape(-1, 5)[:, 3:5] * s for lb, s in zip(labels, sizes * scale)]
    return np.concatenate(wh) if wh else np.zeros((0, 2))


def check_anchors(labels: list[np.ndarray], shapes: np.ndarray, model: nn.Module, thr: float = 4.0,
                  imgsz: int = 640, seed: int = 0, stretch: bool = False) -> bool:
    """Evolve new anchors into `model` when its current ones recall <= 98% of the boxes.

    `labels` per image (k, 5) [cls, x, y, w, h] normalised, `shapes` (N, 2) original [w, h];
    `stretch` when training stretches images to imgsz x imgsz (--scale) instead of letterboxing.
    Returns True when the model's anchors were replaced (they are then saved with its weights).
    """
    detect = de_parallel(model).detect
    wh = dataset_box_sizes(labels, shapes, imgsz, seed, stretch)
    if not len(wh):
        LOGGER.warning("AutoAnchor: no labelled boxes, anchors left unchanged")
        return False
    stride = detect.stride.detach().cpu().double().view(-1, 1, 1)
    current = (detect.anchors.detach().cpu().double() * stride).view(-1, 2).numpy()  # pixels
    bpr, aat = best_possible_recall(wh, current, thr)
    summary = f"AutoAnchor: {aat:.2f} anchors/target, {bpr:.3f} Best Possible Recall (BPR)"
    if bpr > BPR_GOOD:
        LOGGER.info("%s. Current anchors are a good fit to the dataset", summary)
        return False
    proposed = kmean_anchors(wh, n=detect.nl * detect.na, img_size=imgsz, thr=thr, seed=seed)
    new_bpr, _ = best_possible_recall(wh, proposed, thr)
    if new_bpr <= bpr:
        LOGGER.info("%s. Evolved anchors reach only %.3f BPR, original anchors kept", summary, new_bpr)
        return False
    _write_anchors(detect, proposed)
    LOGGER.info("%s. Anchors replaced, new BPR %.3f: %s", summary, new_bpr,
                ", ".join(f"{w:.0f},{h:.0f}" for w, h in proposed))
    return True


def _write_anchors(detect: nn.Module, anchors_px: np.ndarray) -> None:
    """Store area-sorted pixel anchors in the head in stride units, smallest anchors on the finest level."""
    a = detect.anchors
    grouped = torch.tensor(anchors_px, dtype=a.dtype, device=a.device).view(detect.nl, detect.na, 2)
    order = detect.stride.argsort()  # level order from fine to coarse
    with torch.no_grad():
        a[order] = grouped / detect.stride[order].view(-1, 1, 1).to(a.dtype)
    detect.reset_grids()  # the eval decoder caches pixel anchor grids
