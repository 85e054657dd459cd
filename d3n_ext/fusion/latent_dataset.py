"""YOLO images and labels plus each image's DDPM latents from a feature repository, warped like its pixels.

The base dataset records every geometric step (resize, mosaic placement, affine, flips) and replays
it on the maps `load_extras` returns, so this subclass only says where the latents come from: the
repository row of the image's content hash, one (T·C, h, w) map per side input of the model, laid
over the whole original image. Photometric augmentation (HSV) leaves them alone. Workers move the
stored float16 latents; the decoders run on the training device (Fig. 5).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from d3n_ext.fusion.binding import match_levels
from d3n_ext.stage1.repository import LatentRepository, RepositoryError
from utils.dataloaders import LoadImagesAndLabels
from utils.segment_dataset import LoadImagesAndMasks
from utils.files import file_hash


class LatentDataset(LoadImagesAndLabels):
    """`side_inputs` {name: (channels, stride)} is the model's (Model.side_inputs) and `levels` {name: repository
    level} its YAML's (binding.side_input_levels; without it, levels by detector stride); the rest as the base class."""

    def __init__(self, img_files: list[Path], *, repository: LatentRepository | str | Path,
                 side_inputs: dict[str, tuple[int, int]], levels: dict[str, int] | None = None, **kwargs) -> None:
        self.repository = repository if isinstance(repository, LatentRepository) else LatentRepository(repository)
        self.level_of = match_levels(side_inputs, self.repository, levels)  # name -> repository level
        self.extra_strides = {name: stride for name, (_, stride) in side_inputs.items()}
        super().__init__(img_files, **kwargs)
        self.keys = self._repository_keys()

    def _repository_keys(self) -> list[str]:
        """Every image's content hash, checked against the repository now rather than mid-epoch."""
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            keys = list(pool.map(file_hash, self.im_files))
        missing = [f for f, k in zip(self.im_files, keys) if k not in self.repository]
        if missing:
            try:
                self.repository.lookup(missing[0])  # raises the precise error: missing, or changed since the build
            except RepositoryError as e:
                more = f" ({len(missing) - 1} more of these {len(keys)} images too)" if len(missing) > 1 else ""
                raise type(e)(f"{self.prefix}{e}{more}") from None
        return keys

    def load_extras(self, index: int) -> dict[str, torch.Tensor]:
        """{side input name: (T·C, h, w) float16 latents over the whole original image}."""
        levels = self.repository.lookup_key(self.keys[index])  # per level (T, C, h, w) float16
        return {name: torch.from_numpy(levels[lv]).flatten(0, 1) for name, lv in self.level_of.items()}


class LatentMaskDataset(LatentDataset, LoadImagesAndMasks):
    """Polygon labels and their masks (utils.segment_dataset) plus the latents: what a D3N segmentation teacher
    trains on. Both parts follow the same recorded placements; `mask_ratio` and `overlap` as LoadImagesAndMasks."""
