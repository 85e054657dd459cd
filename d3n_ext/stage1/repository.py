"""The feature repository (section III-B): per-image DDPM latents on disk, read at random by workers.

Layout of a repository folder (written by repository_builder.py; `manifest.json` is written last,
so a folder without it is an unfinished build):

    manifest.json   format, kind ('latent' or 'raw'), timesteps, noise rule, image size, levels,
                    sha256 of the DDPM / compressor weights, of every array and of the index
    index.json      row -> image key (sha256 of the file bytes), dataset-relative paths, splits
    level{i}.npy    float16 array (N, T, C, h, w) per scale, memory-mapped on first use
    ddpm.pt, vae.pt the weights the manifest fingerprints (the online encoder and decoders use them)

Opening reads the two JSON files, the .npy headers and a sample of rows spread over each array (a
file overwritten with NaN or inf is refused there, by name), so each DataLoader worker can open one
cheaply; arrays are memory-mapped lazily per process, and every row read is checked to be finite.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.files import file_hash

LOGGER = logging.getLogger(__name__)

FORMAT = "d3n-feature-repository/1"
FINITE_SAMPLE_ROWS = 32  # rows per level, evenly spread, checked for NaN/inf when a repository is opened
MANIFEST, INDEX = "manifest.json", "index.json"
KINDS = ("latent", "raw")


class RepositoryError(RuntimeError, ValueError):
    """A feature repository that cannot answer; the message names the repository (and the image).

    Also a ValueError: bad input that train.py, val.py and detect.py report as one line.
    """


class StaleRepositoryError(RepositoryError):
    """The repository no longer matches its inputs: an image or the weights changed since the build."""


class MissingLatentError(RepositoryError):
    """The image was never put in the repository (another dataset, split or a new image)."""


class CorruptRepositoryError(RepositoryError):
    """Files missing, truncated or altered."""


@dataclass(frozen=True)
class LevelInfo:
    name: str  # 'P3', 'P4', 'P5'
    file: str  # level{i}.npy
    channels_latent: int  # stored channels (= channels_feature in a raw repository)
    channels_feature: int  # the DDPM feature's channels the decoder restores
    hw: tuple[int, int]  # (h, w) of the stored map
    stride_hint: int  # the detector stride it is meant for: 8/16/32
    sha256: str  # of the .npy file


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CorruptRepositoryError(f"{path}: {what} missing (unfinished or deleted build; rerun extract_features.py build)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptRepositoryError(f"{path}: {what} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CorruptRepositoryError(f"{path}: {what} is not a JSON object")
    return data


def npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from a .npy header, without reading the data."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy version {version}")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
    except (OSError, ValueError) as e:
        raise CorruptRepositoryError(f"{path}: not a readable .npy array ({e})") from None
    if fortran:
        raise CorruptRepositoryError(f"{path}: Fortran-ordered array, expected C order")
    return tuple(shape), np.dtype(dtype), offset


def content_key(data: bytes) -> str:
    """The repository key of an image whose file bytes are already in memory (= file_hash of the file)."""
    return hashlib.sha256(data).hexdigest()


class LatentRepository:
    """Read-only view of a repository: `lookup(path)` -> per level (T, C, h, w) float16 arrays."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise CorruptRepositoryError(f"{self.root}: feature repository not found (build it with extract_features.py)")
        self.manifest: dict[str, Any] = read_json(self.root / MANIFEST, "manifest")
        if self.manifest.get("format") != FORMAT or self.manifest.get("kind") not in KINDS:
            raise CorruptRepositoryError(f"{self.root / MANIFEST}: not a D3N feature repository (format {FORMAT!r})")
        try:
            self.levels = [LevelInfo(**{**lv, "hw": tuple(lv["hw"])}) for lv in self.manifest["levels"]]
            self.timesteps: list[int] = list(self.manifest["timesteps"])
            self.count = int(self.manifest["count"])
        except (KeyError, TypeError) as e:
            raise CorruptRepositoryError(f"{self.root / MANIFEST}: incomplete manifest ({e})") from None
        self._load_index()
        for level in self.levels:
            self._check_array_file(level)
        self._arrays: list[np.ndarray] | None = None
        self._pid: int | None = None
        self._check_finite_sample()

    # --- opening ---------------------------------------------------------------------------------

    def _load_index(self) -> None:
        index_path = self.root / INDEX
        if index_path.is_file() and file_hash(index_path) != self.manifest.get("index_sha256"):
            raise CorruptRepositoryError(f"{index_path}: altered since the build (sha256 differs from the manifest)")
        index = read_json(index_path, "index")
        self.keys: list[str] = index.get("keys", [])
        self.paths: list[list[str]] = index.get("paths", [])
        self.splits: list[list[str]] = index.get("splits", [])
        if not len(self.keys) == len(self.paths) == len(self.splits) == self.count:
            raise CorruptRepositoryError(f"{index_path}: {len(self.keys)} keys for {self.count} rows")
        self._row = {k: i for i, k in enumerate(self.keys)}
        root = self.data_root.resolve()  # lookups compare resolved paths (symlinked data roots)
        self._path_row = {str(root / p): i for i, ps in enumerate(self.paths) for p in ps}

    def _check_array_file(self, level: LevelInfo) -> None:
        path = self.root / level.file
        if not path.is_file():
            raise CorruptRepositoryError(f"{path}: array file missing")
        shape, dtype, offset = npy_layout(path)
        expected = (self.count, len(self.timesteps), level.channels_latent, *level.hw)
        if shape != expected or dtype != np.float16:
            raise CorruptRepositoryError(f"{path}: holds {dtype} {shape}, manifest says float16 {expected}")
        if path.stat().st_size != offset + int(np.prod(shape)) * 2:
            raise CorruptRepositoryError(f"{path}: truncated ({path.stat().st_size} bytes, expected {offset + int(np.prod(shape)) * 2})")

    def _check_finite_sample(self) -> None:
        """NaN/inf in evenly spread rows of each array: a damaged or overwritten file fails here, not as NaN
        teacher outputs that NMS silently drops (lookups check each row they read as well)."""
        n = min(self.count, FINITE_SAMPLE_ROWS)
        rows = np.unique(np.linspace(0, max(self.count - 1, 0), n).round().astype(int))
        for level, arr in zip(self.levels, self._open_arrays()):
            for row in rows:
                self._check_finite(level, arr[row], int(row))

    def _check_finite(self, level: LevelInfo, values: np.ndarray, row: int) -> None:
        if not np.isfinite(values).all():
            raise CorruptRepositoryError(f"{self.root / level.file}: non-finite values (NaN/inf) in row {row} "
                                         f"({self.paths[row][0] if self.paths[row] else self.keys[row][:16]}); the "
                                         "file is damaged: rebuild it with extract_features.py build")

    def _open_arrays(self) -> list[np.ndarray]:
        """Memory maps, opened once per process (DataLoader workers each map their own)."""
        if self._arrays is None or self._pid != os.getpid():
            self._arrays = [np.load(self.root / lv.file, mmap_mode="r") for lv in self.levels]
            self._pid = os.getpid()
        return self._arrays

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None, "_pid": None}

    # --- queries ---------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def data_root(self) -> Path:
        return Path(self.manifest.get("data", {}).get("root", "."))

    def resolve_path(self, stored: str) -> Path:
        p = Path(stored)
        return p if p.is_absolute() else self.data_root / p

    def __len__(self) -> int:
        return self.count

    def __contains__(self, key: str) -> bool:
        return key in self._row

    def key_of(self, image_path: str | Path) -> str:
        return file_hash(image_path)

    def lookup(self, image_path: str | Path) -> list[np.ndarray]:
        """Latents of the image at `image_path`, keyed by its current content (so an edited file fails loudly)."""
        image_path = Path(image_path)
        if not image_path.is_file():
            raise FileNotFoundError(f"{image_path}: image not found")
        key = self.key_of(image_path)
        if key not in self._row:
            if str(image_path.resolve()) in self._path_row:
                raise StaleRepositoryError(f"{image_path}: changed since the feature repository {self.root} was built "
                                           "(content hash differs); rebuild it with extract_features.py build")
            raise MissingLatentError(f"{image_path}: not in the feature repository {self.root} "
                                     f"({self.count} images); build it for this dataset or use the online encoder")
        return self.lookup_key(key)

    def lookup_key(self, key: str) -> list[np.ndarray]:
        """Per level (T, C, h, w) float16 copies of the stored row of `key`."""
        row = self._row.get(key)
        if row is None:
            raise MissingLatentError(f"key {key[:16]}...: not in the feature repository {self.root} ({self.count} images)")
        values = [np.array(a[row]) for a in self._open_arrays()]
        for level, v in zip(self.levels, values):
            self._check_finite(level, v, row)
        return values

    def weight_file(self, role: str) -> Path:
        """The weights the manifest fingerprints ('ddpm' or 'compressor'), checked against their sha256."""
        entry = self.manifest.get("weights", {}).get(role)
        if entry is None:
            raise CorruptRepositoryError(f"{self.root / MANIFEST}: no {role!r} weights recorded")
        path = self.root / entry["file"]
        if not path.is_file():
            raise CorruptRepositoryError(f"{path}: {role} weights missing from the feature repository")
        if file_hash(path) != entry["sha256"]:
            raise StaleRepositoryError(f"{path}: {role} weights differ from those the repository {self.root} was built "
                                       "with; rebuild it with extract_features.py build")
        return path

    def verify(self, check_images: bool = True) -> list[str]:
        """Every problem found (empty when sound): array and weight hashes, non-finite values, changed images."""
        problems = []
        for level in self.levels:
            if file_hash(self.root / level.file) != level.sha256:
                problems.append(f"{self.root / level.file}: altered since the build (sha256 differs)")
        for role in self.manifest.get("weights", {}):
            try:
                self.weight_file(role)
            except RepositoryError as e:
                problems.append(str(e))
        for level, arr in zip(self.levels, self._open_arrays()):
            for start in range(0, self.count, 256):
                if not np.isfinite(arr[start:start + 256]).all():
                    problems.append(f"{self.root / level.file}: non-finite values in rows {start}..{start + 255}")
                    break
        if check_images:
            problems += self._verify_images()
        return problems

    def _verify_images(self) -> list[str]:
        missing, changed = [], []
        for key, paths in zip(self.keys, self.paths):
            for stored in paths:
                path = self.resolve_path(stored)
                if not path.is_file():
                    missing.append(path)
                elif file_hash(path) != key:
                    changed.append(path)
        out = []
        if changed:
            out.append(f"{len(changed)} images changed since the build (stale repository), e.g. {changed[0]}")
        if missing:
            out.append(f"{len(missing)} images no longer exist, e.g. {missing[0]}")
        return out

    def summary(self) -> dict[str, Any]:
        """Sizes for `extract_features.py inspect`: bytes per image stored vs raw fp32 features."""
        t = len(self.timesteps)
        stored = sum(t * lv.channels_latent * lv.hw[0] * lv.hw[1] * 2 for lv in self.levels)
        raw = sum(t * lv.channels_feature * lv.hw[0] * lv.hw[1] * 4 for lv in self.levels)
        return {"root": str(self.root), "kind": self.kind, "images": self.count, "timesteps": self.timesteps,
                "levels": [f"{lv.name}: {lv.channels_latent}x{lv.hw[0]}x{lv.hw[1]} (features {lv.channels_feature}, "
                           f"stride {lv.stride_hint})" for lv in self.levels],
                "bytes_per_image": stored, "raw_fp32_bytes_per_image": raw, "ratio": raw / stored}
