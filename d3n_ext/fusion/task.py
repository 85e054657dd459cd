"""The hybrid (teacher) training task: a D3N model YAML bound to a feature repository (stage 2, III-C).

train.py --latents runs the shared Trainer with this task. It binds the model YAML to the
repository before the model is built, loads the frozen decoders into it, feeds the latents through
LatentDataset, logs the learned fusion weights each epoch (results.csv columns `fusion/L<layer>/<branch>`)
and plots them after training (fusion_weights.png, the paper's Fig. 11).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import torch

from d3n_ext.fusion.binding import bind_repository, check_bound_to, load_repository_weights, repository_fingerprint
from d3n_ext.fusion.blocks import collect_fusion_weights
from d3n_ext.fusion.feature_mapper import FeatureMapper
from d3n_ext.fusion.latent_dataset import LatentDataset
from d3n_ext.stage1.repository import LatentRepository
from engine.tasks import DetectionTask
from utils.plots import plot_columns
from utils.torch_utils import de_parallel

LOGGER = logging.getLogger(__name__)
FUSION_PREFIX = "fusion/"


class D3NTask(DetectionTask):
    """Ground-truth loss on the hybrid model; the plug-in's parts join through the task's hooks."""

    dataset_cls = LatentDataset

    def __init__(self, repository: str | Path, plots: bool = True):
        self.root = Path(repository)
        self.repo = LatentRepository(self.root)
        self.plots = plots

    def model_cfg(self, cfg: dict) -> dict:
        return bind_repository(cfg, self.repo)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        load_repository_weights(model, self.repo)
        mappers = [m for m in model.modules() if isinstance(m, FeatureMapper)]
        frozen = sum(p.numel() for m in mappers for p in m.parameters())
        LOGGER.info("FeatureMapper: %d frozen decoders (%s parameters) from %s, fingerprint %s", len(mappers),
                    f"{frozen:,}", self.root, repository_fingerprint(self.repo))
        return model

    def dataset_kwargs(self, model: torch.nn.Module) -> dict[str, Any]:
        return {"repository": self.root, "side_inputs": de_parallel(model).side_inputs}

    def epoch_log(self, model: torch.nn.Module) -> dict[str, float]:
        """softmax(α) of every fusion block, one column per branch (Fig. 11)."""
        return {f"{FUSION_PREFIX}L{layer}/{branch}": w
                for layer, weights in collect_fusion_weights(model).items() for branch, w in weights.items()}

    def on_train_end(self, save_dir) -> None:
        path = Path(save_dir) / "results.csv"
        if not self.plots or not path.exists():
            return
        with open(path, newline="") as f:
            columns = [c for c in next(csv.reader(f), []) if c.startswith(FUSION_PREFIX)]
        if columns:
            plot_columns(path, columns, Path(save_dir) / "fusion_weights.png",
                         "Fusion branch weights per epoch (Fig. 11)", "softmax(α)")

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"repository": str(self.root.resolve()), "fingerprint": repository_fingerprint(self.repo)}


def teacher_dataset_hook(latents: str | Path, model: torch.nn.Module, source: str = "model") -> tuple[type, dict]:
    """val.py's (dataset class, kwargs) for a teacher, after checking its decoders fit the repository."""
    if not model.side_inputs:
        raise ValueError(f"{source}: the model has no side inputs (not a D3N teacher); drop --latents")
    repo = LatentRepository(latents)
    if getattr(model, "yaml", None) is not None:
        check_bound_to(model.yaml, repo, source)
    return LatentDataset, {"repository": Path(latents), "side_inputs": model.side_inputs}
