"""The hybrid (teacher) training task: a D3N model YAML bound to a feature repository (stage 2, III-C).

train.py --latents runs the shared Trainer with this task (the plug-in's `training_task`). It binds the model YAML to the
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

from d3n_ext.fusion.binding import bind_repository, load_repository_weights, repository_fingerprint
from d3n_ext.fusion.blocks import collect_fusion_weights, modules_with_role
from d3n_ext.fusion.latent_dataset import LatentDataset, LatentMaskDataset
from d3n_ext.fusion.teacher_inputs import RepositoryInputs
from engine.tasks import DetectionTask, SegmentationTask, register_task
from utils.plots import plot_columns
from utils.torch_utils import de_parallel

LOGGER = logging.getLogger(__name__)
FUSION_PREFIX = "fusion/"


@register_task
class D3NTask(DetectionTask):
    """Ground-truth loss on the hybrid model; the plug-in's parts join through the task's hooks."""

    kind = "d3n-teacher"
    dataset_cls = LatentDataset
    rules = RepositoryInputs.rules

    def __init__(self, inputs: RepositoryInputs, plots: bool = True):
        self.inputs, self.repo, self.root = inputs, inputs.repo, inputs.root
        self.plots = plots

    def state(self) -> dict[str, Any]:
        return {"repository": str(self.root), "plots": self.plots}

    @classmethod
    def from_state(cls, state: dict[str, Any], args=None) -> "D3NTask":
        """On --resume a --latents given again wins: the repository may have moved since."""
        path = getattr(args, "latents", "") or state["repository"]
        return cls(RepositoryInputs.open(path), plots=state.get("plots", True))

    def model_cfg(self, cfg: dict) -> dict:
        return bind_repository(cfg, self.repo)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        load_repository_weights(model, self.repo)
        mappers = [m for _, m in modules_with_role(model, "mapper")]
        frozen = sum(p.numel() for m in mappers for p in m.parameters())
        LOGGER.info("FeatureMapper: %d frozen decoders (%s parameters) from %s, fingerprint %s", len(mappers),
                    f"{frozen:,}", self.root, repository_fingerprint(self.repo))
        return model

    def dataset_kwargs(self, model: torch.nn.Module) -> dict[str, Any]:
        return {"repository": self.repo, **RepositoryInputs.dataset_inputs(de_parallel(model))}

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



@register_task
class D3NSegmentationTask(D3NTask, SegmentationTask):
    """The hybrid segmentation teacher (paper Table IV): D3NTask's binding, decoders and latents with
    SegmentationTask's masks, loss and box+mask validation."""

    kind = "d3n-seg-teacher"
    dataset_cls = LatentMaskDataset

    def __init__(self, inputs: RepositoryInputs, plots: bool = True, mask_ratio: int = 4, overlap: bool = True):
        D3NTask.__init__(self, inputs, plots)
        SegmentationTask.__init__(self, mask_ratio, overlap)

    def state(self) -> dict[str, Any]:
        return {**D3NTask.state(self), **SegmentationTask.state(self)}

    @classmethod
    def from_state(cls, state: dict[str, Any], args=None) -> "D3NSegmentationTask":
        base = D3NTask.from_state(state, args)  # its rule for the repository
        return cls(base.inputs, base.plots, state["mask_ratio"], state["overlap"])

    def dataset_kwargs(self, model: torch.nn.Module) -> dict[str, Any]:
        return {**D3NTask.dataset_kwargs(self, model), **SegmentationTask.dataset_kwargs(self, model)}
