"""Latents decoded on a grid finer than the detector's (yolov5n-d3n-native.yaml): the SideInput's stride picks the
grid, the FeatureMapper reading it picks the repository level, and the fusion blocks resize to the detector grid."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from d3n_ext.fusion.binding import bind_levels, bind_repository, preset_levels, side_input_levels
from d3n_ext.fusion.latent_dataset import LatentDataset
from d3n_ext.fusion.teacher_inputs import RepositoryInputs
from d3n_ext.stage1.repository import LatentRepository
from models.yolo import Model, ModelConfigError, load_model_yaml
from tests.d3n_ext.stage1_fixtures import one_thread  # noqa: F401  (fixture)
from tests.d3n_ext.teacher_fixtures import bound_model, teacher_repo  # noqa: F401  (fixture)
from utils.hyp import Hyp

pytestmark = pytest.mark.usefixtures("one_thread")

NATIVE = "yolov5n-d3n-native.yaml"


def side_strides(cfg: dict) -> list[int]:
    return [r[3][2] for r in cfg["head"] if r[2] == "SideInput"]


def test_binding_keeps_a_finer_side_input_stride_and_levels_follow_the_mappers():
    gated = bind_levels(load_model_yaml("yolov5n-d3n-gated.yaml")[0], preset_levels("ddpm-cpu"), "ddpm-cpu")
    native = bind_levels(load_model_yaml(NATIVE)[0], preset_levels("ddpm-cpu"), "ddpm-cpu")
    assert side_strides(gated) == [8, 16, 32] and side_strides(native) == [4, 8, 16]
    levels = {"latents_p3": 0, "latents_p4": 1, "latents_p5": 2}
    assert side_input_levels(gated) == side_input_levels(native) == levels  # stride 8 is still P3's in native


def test_a_side_input_stride_that_does_not_divide_its_level_is_refused_with_the_row():
    cfg = load_model_yaml(NATIVE)[0]
    cfg["head"][14][3][2] = 3
    with pytest.raises(ModelConfigError, match=r"layer 25\) FeatureMapper reads a SideInput of stride 3; it must "
                                               r"divide the level's stride 8"):
        bind_levels(cfg, preset_levels("ddpm-cpu"), "ddpm-cpu")


def test_a_native_teacher_runs_and_its_fusion_outputs_sit_on_the_detector_grid():
    model = Model(bind_levels(load_model_yaml(NATIVE)[0], preset_levels("ddpm-cpu"), "ddpm-cpu"), nc=6).eval()
    x = torch.zeros(1, 3, 160, 160)
    side = model.dummy_side(x)
    assert [tuple(v.shape[-2:]) for v in side.values()] == [(40, 40), (20, 20), (10, 10)]  # ddpm-cpu's taps
    raw = model.train()(x, side=side)
    assert [tuple(r.shape[2:4]) for r in raw] == [(20, 20), (10, 10), (5, 5)]


def test_the_dataloader_warps_latents_to_the_finer_grid_of_the_same_level(teacher_repo):
    """At half the input size, stride 4/8/16 grids are the repository's own 32/16/8 grids: the stored latents
    come out unresampled, each from the level its mapper decodes (by stride alone 8 would mean P3)."""
    repo = LatentRepository(teacher_repo["repo"])
    cfg = load_model_yaml("yolov5n-d3n.yaml")[0]
    for row in cfg["head"]:
        if row[2] == "SideInput":
            row[3][2] //= 2
    model = Model(bind_repository(cfg, repo), nc=2)
    cls, kwargs = RepositoryInputs(repo).dataset(model, "teacher")
    assert cls is LatentDataset and kwargs["levels"] == {"latents_p3": 0, "latents_p4": 1, "latents_p5": 2}
    images = sorted((teacher_repo["data"].parent / "images" / "train").glob("*.png"))
    ds = cls(images, imgsz=128, augment=False, hyp=Hyp(), scale_mode=True, **kwargs)
    _, _, path, _, extras = ds[0]
    for level, name in enumerate(kwargs["levels"]):
        assert torch.equal(extras[name], torch.from_numpy(repo.lookup(Path(path))[level]).flatten(0, 1))


def test_at_full_size_the_finer_grid_is_the_stored_latents_upsampled_not_averaged(teacher_repo):
    repo = LatentRepository(teacher_repo["repo"])
    images = sorted((teacher_repo["data"].parent / "images" / "train").glob("*.png"))
    ds = LatentDataset(images, imgsz=256, augment=False, hyp=Hyp(), scale_mode=True, repository=repo,
                       side_inputs={"latents_p4": (12, 8)}, levels={"latents_p4": 1})
    _, _, path, _, extras = ds[0]
    stored = torch.from_numpy(repo.lookup(Path(path))[1]).flatten(0, 1).float()[None]  # (1, 12, 16, 16)
    expected = F.interpolate(stored, scale_factor=2, mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(extras["latents_p4"].float(), expected, atol=2e-3, rtol=2e-3)
