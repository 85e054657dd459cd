"""A D3N teacher's side inputs: the feature repository, opened once (`RepositoryInputs`, the plug-in's
`SideInputs`), and per frame for detect.py (`TeacherSideInputs`): latents from the repository, or
computed online for new images.

An image is looked up by its content hash (the key the repository was built with). One that is not
there, a new image, an edited one or a video frame, gets its latents from the DDPM and VAE encoder
the repository was built with (`OnlineLatentEncoder`: same input rule, same noise), so the teacher
sees what it saw in training. The latents cover the whole stretched image, which is exactly the
model input under --scale; detect.py turns --scale on for teachers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from d3n_ext.fusion.binding import check_bound_to, match_levels, side_input_levels
from d3n_ext.fusion.latent_dataset import LatentDataset, LatentMaskDataset
from d3n_ext.stage1.features import OnlineLatentEncoder
from d3n_ext.stage1.repository import LatentRepository
from engine.plugins import FrameInputs, InputRules, SideInputs
from utils.augmentations import warp_map
from utils.files import file_hash

LOGGER = logging.getLogger(__name__)


class TeacherSideInputs:
    """Predictor's side_fn: (path, image_bgr, input_hw) -> {name: (1, T·C, H/s, W/s) latents} on `device`."""

    def __init__(self, repository: LatentRepository | str | Path, side_inputs: dict[str, tuple[int, int]],
                 device: torch.device | str = "cpu", levels: dict[str, int] | None = None):
        self.repo = repository if isinstance(repository, LatentRepository) else LatentRepository(repository)
        self.level_of = match_levels(side_inputs, self.repo, levels)
        self.strides = {name: stride for name, (_, stride) in side_inputs.items()}
        self.device = torch.device(device)
        self.encoder: OnlineLatentEncoder | None = None  # built on the first image the repository lacks
        self.stored = self.online = 0  # images answered each way
        self._keys: dict[tuple, str] = {}  # (path, size, mtime) -> content hash; a video hashes once

    def _key(self, path) -> str | None:
        p = Path(path) if path is not None else None
        if p is None or not p.is_file():
            return None
        st = p.stat()
        sig = (str(p), st.st_size, st.st_mtime_ns)
        if sig not in self._keys:
            self._keys[sig] = file_hash(p)
        return self._keys[sig]

    def latents(self, path, image_bgr: np.ndarray) -> list[torch.Tensor]:
        """Per repository level (T, C, h, w) on the CPU: stored when the file is in the repository, else computed."""
        key = self._key(path)
        if key is not None and key in self.repo:
            self.stored += 1
            return [torch.from_numpy(a) for a in self.repo.lookup_key(key)]
        if self.encoder is None:
            LOGGER.info("%s: not in the feature repository %s; computing latents online (DDPM + VAE encoder)",
                        path, self.repo.root)
            self.encoder = OnlineLatentEncoder(self.repo.root, self.device)
        self.online += 1
        return [z.cpu() for z in self.encoder(image_bgr)]

    def __call__(self, path, image_bgr: np.ndarray, input_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
        levels = self.latents(path, image_bgr)
        h, w = input_hw
        whole = np.array([[w, 0.0, 0.0], [0.0, h, 0.0], [0.0, 0.0, 1.0]])  # the stretched image fills the input
        out = {}
        for name, level in self.level_of.items():
            s = self.strides[name]
            z = levels[level].flatten(0, 1)  # (T·C, h, w)
            out[name] = warp_map(z, whole, (0.0, 0.0, w, h), np.eye(3), (h // s, w // s), s)[None].to(self.device)
        return out


class RepositoryInputs(SideInputs):
    """A feature repository, opened once, as the side inputs of a hybrid teacher."""

    rules = InputRules(stretch=True)

    def __init__(self, repository: LatentRepository):
        self.repo = repository

    @classmethod
    def open(cls, path: str | Path) -> "RepositoryInputs":
        return cls(LatentRepository(path))

    @property
    def root(self) -> Path:
        return self.repo.root

    def check_model(self, model: torch.nn.Module, source: str) -> None:
        """A built teacher's decoders must be the ones this repository was built with."""
        if not model.side_inputs:
            raise ValueError(f"{source}: the model has no side inputs (not a D3N teacher); drop --latents")
        if getattr(model, "yaml", None) is not None:
            check_bound_to(model.yaml, self.repo, source)

    def dataset(self, model: torch.nn.Module, source: str) -> tuple[type, dict]:
        """Latents with box labels, or with polygons and masks for a segmentation teacher (Segment head)."""
        self.check_model(model, source)
        return (LatentMaskDataset if model.nm else LatentDataset), {"repository": self.repo,
                                                                      **self.dataset_inputs(model)}

    @staticmethod
    def dataset_inputs(model: torch.nn.Module) -> dict:
        """The latent dataset's `side_inputs` and `levels` for a built teacher."""
        return {"side_inputs": model.side_inputs, "levels": side_input_levels(getattr(model, "yaml", None) or {})}

    def frame_inputs(self, model: torch.nn.Module, device: torch.device) -> FrameInputs:
        self.check_model(model, str(getattr(model, "path", "model")))
        return TeacherSideInputs(self.repo, device=device, **self.dataset_inputs(model))

    def describe(self) -> str:
        return f"feature repository {self.repo.root}"
