"""The fusion blocks join a model through its YAML: registered names, ablation names, a hybrid model."""

from __future__ import annotations

import pytest
import torch

from d3n_ext.experiments.ablation import ablate_yaml
from d3n_ext.fusion.blocks import collect_fusion_weights, fusion_row, fusion_variants
from d3n_ext.fusion.inputs import DDPMProjection, FusionBlock, fusion_channels
from models.registry import BLOCKS, BuildContext, lookup_block, register_block
from models.yolo import Model, ModelConfigError, load_model_yaml

CTX = BuildContext(nc=3, anchors=None, width_multiple=0.25, depth_multiple=0.33)


def test_blocks_are_registered_under_their_yaml_names():
    for name in ("FreqFilter", "CrossFusion", "FuseConcat", "FuseSum", "FuseWeightedSum"):
        assert BLOCKS[name].cls.__name__ == name


@pytest.mark.parametrize("fusion", list(fusion_variants()))
def test_every_ablation_name_builds_a_row(fusion):
    name, args = fusion_row(fusion)
    entry = lookup_block(name)
    module, c_out = entry.builder(entry.cls, [16, 24], args, 1, CTX)
    out = module([torch.randn(1, 16, 6, 6), torch.randn(1, 24, 4, 4)])
    assert c_out == 16 and out.shape == (1, 16, 6, 6)


def test_unknown_ablation_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="concat1x1"):
        fusion_row("attention")


def hybrid_cfg(tiny_cfg: dict, fusion_args: list) -> dict:
    """tiny YOLOv5 whose P3 output is fused with a 4x-coarser DDPM side input (24 channels)."""
    head = tiny_cfg["head"][:-1] + [
        [-1, 1, "SideInput", ["ddpm_p3", 24]],  # 24
        [-1, 1, "FreqFilter", [4, 4]],  # 25
        [[17, 25], 1, "CrossFusion", fusion_args],  # 26
        [[26, 20, 23], 1, "Detect", ["nc", "anchors"]],  # 27
    ]
    return {**tiny_cfg, "head": head}


def test_hybrid_model_trains_through_the_fusion_rows(tiny_cfg):
    torch.manual_seed(0)
    model = Model(hybrid_cfg(tiny_cfg, ["dcf", 4])).train()
    x, side = torch.rand(2, 3, 64, 64), {"ddpm_p3": torch.randn(2, 24, 4, 4)}
    raw = model(x, side=side)
    sum(r.sum() for r in raw).backward()
    assert [tuple(r.shape[2:4]) for r in raw] == [(8, 8), (4, 4), (2, 2)]
    fusion = model.model[26]
    assert fusion.alpha.grad is not None and model.model[25].weight.grad is not None
    assert collect_fusion_weights(model) == {"26": pytest.approx({"det": 1 / 3, "ddpm": 1 / 3, "cross": 1 / 3})}


def test_bad_fusion_row_names_the_row(tiny_cfg):
    with pytest.raises(ModelConfigError, match=r"head row 16 \(layer 26\).*unknown part\(s\) \['mlp'\]"):
        Model(hybrid_cfg(tiny_cfg, ["dcf+mlp", 4]))


@pytest.fixture
def fuse_max():
    """A fusion block that exists only in this test: max(X, Y′), `fusion=max` in the ablation."""

    @register_block()
    class FuseMax(FusionBlock):
        ablation_variants = {"max": []}

        def __init__(self, c_x: int, c_y: int):
            super().__init__()
            self.project = DDPMProjection(c_y, c_x)

        @classmethod
        def from_yaml(cls, ch_in, args, n, ctx):
            c_x, c_y = fusion_channels(ch_in, "FuseMax")
            return cls(c_x, c_y), c_x

        def fusion_weights(self) -> dict[str, float]:
            return {"max": 1.0}

        def forward(self, inputs):
            x, y = inputs
            return torch.maximum(x, self.project(y, x.shape[-2:]))

    yield FuseMax
    del BLOCKS["FuseMax"]


def test_a_new_fusion_block_is_one_class_and_one_decorator(fuse_max):
    assert fusion_variants()["max"] == "FuseMax" and fusion_row("max") == ("FuseMax", [])
    model = Model(ablate_yaml(load_model_yaml("yolov5n-d3n-lite.yaml")[0], "max", True, kv_tokens=64))
    fused = [m for m in model.model if isinstance(m, fuse_max)]
    assert len(fused) == 3
    assert collect_fusion_weights(model) == {str(m.i): {"max": 1.0} for m in fused}
    with pytest.raises(ModelConfigError, match=r"no fusion rows \(CrossFusion, FuseConcat, FuseMax, "):
        ablate_yaml(load_model_yaml("yolov5n.yaml")[0], "max", True, 64)
