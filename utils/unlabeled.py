"""The leak guard for a data YAML's `unlabeled:` images: none may be a val or test image.

Unlabelled images feed stage 1 and distillation, so a val or test image among them would let a model
study the very pictures it is scored on. Two checks per image pair:

- exact copies: the same bytes (SHA-256);
- near copies (re-encoded, resized, converted to grey): a 16x16 grey thumbnail, zero-mean and unit-norm,
  whose cosine with a held-out image's is >= NEAR_COPY_COSINE. On NEU-DET's 1,800 images distinct
  pictures reach at most 0.9936 (steel textures look alike at 16 px), while JPEG quality 50, a resize to
  100 or 320 px and grey PNG copies all stay above 0.9991 — 0.998 sits between the two.

A leak is an error (one line, with the count and the first pair); an unlabelled image that is also a
train image (same two checks) is a warning (harmless: its labels are not read, but it is counted twice).
Fingerprints are cached per file (path, size, mtime) in a JSON file beside the data YAML.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils.data_config import DataConfig, DataConfigError
from utils.files import atomic_write_text
from utils.images import decode_image

LOGGER = logging.getLogger(__name__)

THUMB = 16  # px: the near-copy thumbnail's side
NEAR_COPY_COSINE = 0.998  # thumbnails at least this similar are the same picture (see the module docstring)
HELD_OUT = ("val", "test")


@dataclass
class Leak:
    unlabeled: Path
    held_out: Path
    split: str
    how: str  # "exact copy" or "near copy (cosine 0.9995)"


def thumbnail(image: np.ndarray) -> np.ndarray:
    """(THUMB*THUMB,) float32, zero mean, unit norm: what survives re-encoding and resizing."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    small = cv2.resize(grey.astype(np.float32), (THUMB, THUMB), interpolation=cv2.INTER_AREA).reshape(-1)
    small -= small.mean()
    return small / max(float(np.linalg.norm(small)), 1e-6)


def _fingerprint(path: Path) -> dict | None:
    """{'sha256', 'thumb'} of one image file, or None when it cannot be decoded (training skips it too)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    image, _ = decode_image(path)
    if image is None:
        return None
    return {"sha256": hashlib.sha256(data).hexdigest(), "thumb": thumbnail(image).round(5).tolist()}


def _signature(path: Path) -> list | None:
    try:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return None


def fingerprints(paths: list[Path], cache_file: Path | None = None) -> list[dict | None]:
    """One fingerprint per path (None: unreadable), reusing the cache for files unchanged since."""
    cache = {}
    if cache_file is not None and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
    keys = [str(p) for p in paths]
    sigs = [_signature(p) for p in paths]
    todo = [i for i, (k, s) in enumerate(zip(keys, sigs)) if not (k in cache and cache[k].get("sig") == s)]
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        for i, fp in zip(todo, pool.map(_fingerprint, [paths[i] for i in todo])):
            cache[keys[i]] = {"sig": sigs[i], "fp": fp}
    if todo and cache_file is not None:
        try:
            atomic_write_text(cache_file, json.dumps(cache))
        except OSError as e:
            LOGGER.warning("%s: cannot write the fingerprint cache (%s); they will be computed again", cache_file, e)
    return [cache[k]["fp"] for k in keys]


def find_leaks(unlabeled: list[Path], held_out: dict[str, list[Path]], cache_file: Path | None = None) -> list[Leak]:
    """Every unlabelled image that is an exact or near copy of a held-out image (its closest match)."""
    held = [(split, p) for split, files in held_out.items() for p in files]
    if not unlabeled or not held:
        return []
    fps = fingerprints([*unlabeled, *(p for _, p in held)], cache_file)
    return _copies(unlabeled, fps[:len(unlabeled)], held, fps[len(unlabeled):])


def _copies(unlabeled: list[Path], fu: list[dict | None], held: list[tuple[str, Path]],
            fh: list[dict | None]) -> list[Leak]:
    """The matching behind find_leaks, on fingerprints already computed."""
    by_sha = {fp["sha256"]: i for i, fp in enumerate(fh) if fp is not None}
    ok_h = [i for i, fp in enumerate(fh) if fp is not None]
    thumbs_h = np.array([fh[i]["thumb"] for i in ok_h], np.float32).reshape(len(ok_h), -1)
    leaks = []
    for u, fp in zip(unlabeled, fu):
        if fp is None:
            continue
        if fp["sha256"] in by_sha:
            split, path = held[by_sha[fp["sha256"]]]
            leaks.append(Leak(u, path, split, "exact copy"))
            continue
        if len(ok_h):
            cos = thumbs_h @ np.asarray(fp["thumb"], np.float32)
            j = int(cos.argmax())
            if cos[j] >= NEAR_COPY_COSINE:
                split, path = held[ok_h[j]]
                leaks.append(Leak(u, path, split, f"near copy (cosine {cos[j]:.4f})"))
    return leaks


def cache_path(data: DataConfig) -> Path:
    return data.yaml_path.with_name(f".{data.yaml_path.stem}.unlabeled.cache.json")


def check_unlabeled(data: DataConfig) -> list[Path]:
    """The data's unlabelled images after the leak guard: a val/test copy is an error, a train image a warning."""
    unlabeled = data.splits.get("unlabeled") or []
    if not unlabeled:
        return []
    held = [(s, p) for s in HELD_OUT for p in data.splits.get(s) or []]
    train = [("train", p) for p in data.splits.get("train") or []]
    paths = [*unlabeled, *(p for _, p in held), *(p for _, p in train)]
    fp = dict(zip(paths, fingerprints(paths, cache_path(data))))  # one pass over the cache for both checks
    fu = [fp[p] for p in unlabeled]
    leaks = _copies(unlabeled, fu, held, [fp[p] for _, p in held])
    if leaks:
        first = leaks[0]
        raise DataConfigError(
            f"{data.yaml_path}: {len(leaks)} unlabeled image(s) are copies of val/test images (first: {first.unlabeled} "
            f"is a {first.how} of {first.held_out}, {first.split}); remove them, e.g. `python -m utils.unlabeled_pool "
            f"--data {data.yaml_path} --out <list.txt>` writes a clean list")
    also_train = _copies(unlabeled, fu, train, [fp[p] for _, p in train])
    if also_train:
        LOGGER.warning("WARNING: %s: %d unlabeled image(s) are also train images (first: %s, a %s of %s); their labels "
                       "are not read, but they are seen twice as often", data.yaml_path, len(also_train),
                       also_train[0].unlabeled, also_train[0].how, also_train[0].held_out)
    return unlabeled
