"""The YAML parser and Model reproduce YOLOv5 exactly and explain bad YAMLs by row."""

from __future__ import annotations

import copy

import pytest
import torch

from models.yolo import Model, ModelConfigError
from models.registry import BLOCKS
from tests.models.batchnorm import randomise_batchnorm


@pytest.mark.parametrize("name,params", [
    ("yolov5n", 1_872_157), ("yolov5s", 7_235_389), ("yolov5m", 21_190_557),
    ("yolov5l", 46_563_709), ("yolov5x", 86_749_405),
])
def test_parameter_counts_match_yolov5(name, params):
    assert sum(p.numel() for p in Model(f"{name}.yaml").parameters()) == params


def test_yolov5s_with_six_classes():
    assert sum(p.numel() for p in Model("yolov5s.yaml", nc=6).parameters()) == 7_035_811


def test_eval_output_shape_and_strides():
    model = Model("yolov5s.yaml").eval()
    with torch.no_grad():
        decoded, raw = model(torch.zeros(1, 3, 640, 640))
    assert decoded.shape == (1, 25200, 85)
    assert [tuple(r.shape) for r in raw] == [(1, 3, 80, 80, 85), (1, 3, 40, 40, 85), (1, 3, 20, 20, 85)]
    assert model.stride.tolist() == [8.0, 16.0, 32.0]


def test_fused_model_gives_same_outputs(tiny_cfg):
    model = Model(tiny_cfg).eval()
    randomise_batchnorm(model)
    x = torch.rand(2, 3, 128, 160)
    with torch.no_grad():
        expected = model(x)[0]
        fused = copy.deepcopy(model).fuse()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        torch.testing.assert_close(fused(x)[0], expected, atol=1e-4, rtol=1e-4)


def test_train_mode_returns_raw_maps(tiny_cfg):
    raw = Model(tiny_cfg).train()(torch.zeros(1, 3, 64, 64))
    assert [tuple(r.shape) for r in raw] == [(1, 3, 8, 8, 8), (1, 3, 4, 4, 8), (1, 3, 2, 2, 8)]


def _bad(cfg: dict, section: str, row: int, value) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg[section][row] = value
    return cfg


def test_unknown_module_names_the_row_and_lists_registered(tiny_cfg):
    with pytest.raises(ModelConfigError) as e:
        Model(_bad(tiny_cfg, "backbone", 2, [-1, 3, "C4", [128]]))
    msg = str(e.value)
    assert "backbone row 2" in msg and "'C4'" in msg and "C3" in msg and "plug-in" in msg
    assert "\n" not in msg


def test_bad_from_index_names_the_row(tiny_cfg):
    with pytest.raises(ModelConfigError, match=r"head row 2 .*'from' index 30"):
        Model(_bad(tiny_cfg, "head", 2, [[-1, 30], 1, "Concat", [1]]))


def test_wrong_arg_count_names_the_row(tiny_cfg):
    with pytest.raises(ModelConfigError, match=r"backbone row 9 .*SPPF"):
        Model(_bad(tiny_cfg, "backbone", 9, [-1, 1, "SPPF", [1024, 5, 1, 2, 3]]))


def test_core_blocks_are_registered_by_their_yaml_names():
    for name in ("Conv", "C3", "SPPF", "Concat", "Detect", "nn.Upsample", "Bottleneck", "SideInput"):
        assert name in BLOCKS


def test_unknown_top_level_key_is_rejected(tmp_path, tiny_cfg):
    import yaml

    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({**tiny_cfg, "widht_multiple": 0.5}))
    with pytest.raises(ModelConfigError, match=r"typo.yaml: unknown keys \['widht_multiple'\]"):
        Model(path)


def test_yaml_args_are_resolved_without_eval(tiny_cfg):
    cfg = _bad(tiny_cfg, "head", 1, [-1, 1, "nn.Upsample", ["None", 2, "__import__('os').system('false')"]])
    with pytest.raises(ModelConfigError, match="head row 1 .*fails on a dry run"):
        Model(cfg)


def test_weights_transfer_finds_the_detect_head_by_role_not_row(tiny_cfg):
    """A YAML with extra rows before Detect (a hybrid teacher) warm-starts from a plain checkpoint, head included."""
    import copy

    from models.loading import transfer_weights

    torch.manual_seed(0)
    plain = Model(tiny_cfg).eval()
    longer = copy.deepcopy(tiny_cfg)
    longer["head"].insert(-1, [-1, 1, "nn.Identity", []])  # Detect reads absolute rows: it moves one row down
    other = Model(longer).eval()
    fit, total, misfit = transfer_weights(other, plain.state_dict())
    assert (fit, misfit) == (total, "none")
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(other(x)[0], plain(x)[0])
