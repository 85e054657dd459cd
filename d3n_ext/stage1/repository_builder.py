"""Writes feature repositories: resumable, atomic, sharded over torchrun ranks.

The images are put in a fixed order (splits in order, files sorted, duplicates by content merged)
and cut into batches; rank r of W encodes a contiguous run of whole batches into its own shard
under `.partial/`, recording progress after every batch. A rerun resumes each shard where its
progress file says (a shard whose fingerprint differs is discarded). When all ranks are done, rank
0 joins the shards into `level{i}.npy`, writes `index.json` and finally `manifest.json`. Because
every batch is the same in a 1-process and a W-process run, the repositories are identical.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from d3n_ext.stage1.features import read_image
from d3n_ext.stage1.repository import FORMAT, INDEX, MANIFEST
from utils.files import atomic_write_text, file_hash
from utils.torch_utils import barrier

LOGGER = logging.getLogger(__name__)

PARTIAL = ".partial"
Encoder = Callable[[list[np.ndarray]], list[torch.Tensor]]  # images -> per scale (B, T, C, h, w)


@dataclass
class ImagePlan:
    """Rows of a repository: one per distinct image content, in a fixed order."""
    keys: list[str]  # sha256 of the file bytes
    paths: list[list[str]]  # data-root-relative paths (posix) with this content
    splits: list[list[str]]
    files: list[Path]  # the file read for each row

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([self.keys, self.paths, self.splits]).encode()).hexdigest()


@dataclass
class LevelSpec:
    name: str
    channels_latent: int
    channels_feature: int
    hw: tuple[int, int]
    stride_hint: int


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def plan_images(data_root: Path, split_images: dict[str, list[Path]], quiet: bool = False) -> ImagePlan:
    """Hash every image of every split; identical files share one row."""
    rows: dict[str, int] = {}
    plan = ImagePlan([], [], [], [])
    for split, images in split_images.items():
        for path in tqdm(sorted(images), desc=f"hashing {split}", disable=quiet, leave=False):
            key, rel = file_hash(path), _relative(path, data_root)
            if key not in rows:
                rows[key] = len(plan.keys)
                plan.keys.append(key), plan.paths.append([]), plan.splits.append([]), plan.files.append(Path(path))
            row = rows[key]
            if rel not in plan.paths[row]:
                plan.paths[row].append(rel)
            if split not in plan.splits[row]:
                plan.splits[row].append(split)
    return plan


def batch_range(n_rows: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [start, end) of this rank: a contiguous run of whole batches."""
    n_batches = -(-n_rows // batch_size)
    first, last = rank * n_batches // world, (rank + 1) * n_batches // world
    return min(first * batch_size, n_rows), min(last * batch_size, n_rows)


class ShardWriter:
    """One rank's rows: fp16 memmaps plus a progress file rewritten atomically after each batch."""

    def __init__(self, folder: Path, fingerprint: str, rows: tuple[int, int], shapes: list[tuple[int, ...]]):
        self.folder, self.fingerprint, self.rows = folder, fingerprint, rows
        self.progress_file = folder / "progress.json"
        self.done = self._resume_point()
        mode = "r+" if self.done else "w+"
        folder.mkdir(parents=True, exist_ok=True)
        n = rows[1] - rows[0]
        self.arrays = [np.lib.format.open_memmap(folder / f"level{i}.npy", mode=mode, dtype=np.float16, shape=(n, *s))
                       for i, s in enumerate(shapes)]

    def _resume_point(self) -> int:
        if not self.progress_file.is_file():
            return 0
        try:
            progress = json.loads(self.progress_file.read_text())
        except json.JSONDecodeError:
            return 0
        ok = progress.get("fingerprint") == self.fingerprint and progress.get("rows") == list(self.rows)
        return int(progress.get("done", 0)) if ok else 0

    def write(self, offset: int, latents: list[torch.Tensor]) -> None:
        for arr, z in zip(self.arrays, latents):
            values = z.detach().to("cpu", torch.float16).numpy()
            if not np.isfinite(values).all():
                raise FloatingPointError(f"{self.folder}: non-finite (or float16-overflowing) values at rows {offset}+")
            arr[offset:offset + len(values)] = values
        for arr in self.arrays:
            arr.flush()
        self.done = offset + len(latents[0])
        atomic_write_text(self.progress_file, json.dumps({"fingerprint": self.fingerprint, "rows": list(self.rows), "done": self.done}))

    def close(self) -> None:
        self.arrays = []


def encode_shard(writer: ShardWriter, plan: ImagePlan, encode: Encoder, batch_size: int, quiet: bool) -> None:
    start, end = writer.rows
    todo = range(start + writer.done, end, batch_size)
    if writer.done:
        LOGGER.info("%s: resuming at row %d of %d..%d", writer.folder, start + writer.done, start, end)
    for first in tqdm(todo, desc="encoding", disable=quiet, unit="batch"):
        images = [read_image(p) for p in plan.files[first:min(first + batch_size, end)]]
        writer.write(first - start, encode(images))


def _merge_shards(root: Path, shard_dirs: list[Path], n_levels: int) -> None:
    """Join shard arrays row-wise into root/level{i}.npy (a rename when there is one shard)."""
    for i in range(n_levels):
        final, parts = root / f"level{i}.npy", [d / f"level{i}.npy" for d in shard_dirs]
        if len(parts) == 1:
            parts[0].replace(final)
            continue
        arrays = [np.load(p, mmap_mode="r") for p in parts]
        tmp = root / f".level{i}.npy.tmp"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(sum(len(a) for a in arrays), *arrays[0].shape[1:]))
        row = 0
        for a in arrays:
            for s in range(0, len(a), 1024):
                out[row + s:row + min(s + 1024, len(a))] = a[s:s + 1024]
            row += len(a)
        out.flush()
        del out, arrays
        tmp.replace(final)


def _finish(root: Path, plan: ImagePlan, levels: list[LevelSpec], manifest: dict[str, Any], world: int, fp: str) -> None:
    shard_dirs = [root / PARTIAL / f"{fp[:16]}-w{world}r{r}" for r in range(world)]
    _merge_shards(root, shard_dirs, len(levels))
    atomic_write_text(root / INDEX, json.dumps({"keys": plan.keys, "paths": plan.paths, "splits": plan.splits}))
    manifest = {**manifest, "format": FORMAT, "fingerprint": fp, "count": len(plan.keys),
                "index_sha256": file_hash(root / INDEX),
                "levels": [{**asdict(lv), "hw": list(lv.hw), "file": f"level{i}.npy", "sha256": file_hash(root / f"level{i}.npy")}
                           for i, lv in enumerate(levels)]}
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1))
    shutil.rmtree(root / PARTIAL, ignore_errors=True)


def build_fingerprint(plan: ImagePlan, levels: list[LevelSpec], manifest: dict[str, Any]) -> str:
    blob = json.dumps([plan.fingerprint(), [asdict(lv) for lv in levels], manifest], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def is_up_to_date(root: Path, fingerprint: str) -> bool:
    try:
        return json.loads((root / MANIFEST).read_text()).get("fingerprint") == fingerprint
    except (OSError, json.JSONDecodeError):
        return False


def build_repository(root: Path, plan: ImagePlan, levels: list[LevelSpec], encode: Encoder, manifest: dict[str, Any],
                     batch_size: int, rank: int = 0, world: int = 1, quiet: bool = False) -> bool:
    """Encode every row of `plan` into the repository at `root`; False when it was already up to date.

    `manifest` holds what the rows depend on (weights' hashes, timesteps, noise rule, image size,
    kind); together with the plan and level shapes it forms the fingerprint that makes a rerun skip
    finished work and an outdated repository invalid.
    """
    fp = build_fingerprint(plan, levels, manifest)
    if is_up_to_date(root, fp):
        LOGGER.info("%s: up to date (%d images), nothing to do", root, len(plan.keys))
        return False
    if rank == 0:
        (root / MANIFEST).unlink(missing_ok=True)  # the old contents are invalid from here on
        for stale in (root / PARTIAL).glob("*") if (root / PARTIAL).is_dir() else []:
            if not stale.name.startswith(f"{fp[:16]}-w{world}r"):
                shutil.rmtree(stale, ignore_errors=True)
    barrier()
    rows = batch_range(len(plan.keys), batch_size, rank, world)
    shapes = [(len(manifest["timesteps"]), lv.channels_latent, *lv.hw) for lv in levels]
    writer = ShardWriter(root / PARTIAL / f"{fp[:16]}-w{world}r{rank}", fp, rows, shapes)
    encode_shard(writer, plan, encode, batch_size, quiet or rank != 0)
    writer.close()
    barrier()
    if rank == 0:
        _finish(root, plan, levels, manifest, world, fp)
    barrier()
    return True
