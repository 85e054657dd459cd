"""The Segment head and Proto block: YOLOv5-seg's exact sizes, its output conventions, and every tool that
walks a Model (fuse, checkpoints, AutoAnchor, the layer table, profiling) working on it."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from models.common import Proto
from models.loading import load_model, save_model
from models.registry import BLOCKS, BuildContext
from models.yolo import Model, Segment
from tests.models.batchnorm import randomise_batchnorm
from utils.autoanchor import check_anchors


@pytest.fixture
def tiny_seg_cfg(tiny_cfg) -> dict:
    cfg = copy.deepcopy(tiny_cfg)
    cfg["head"][-1] = [[17, 20, 23], 1, "Segment", ["nc", "anchors", 32, 256]]
    return cfg


@pytest.mark.parametrize("name,params", [
    ("yolov5n-seg", 1_991_549), ("yolov5s-seg", 7_621_277), ("yolov5m-seg", 21_990_397),
    ("yolov5l-seg", 47_924_957), ("yolov5x-seg", 88_819_517),
])
def test_parameter_counts_match_yolov5_seg(name, params):
    assert sum(p.numel() for p in Model(f"{name}.yaml").parameters()) == params


def test_segment_and_proto_are_registered_and_declare_their_channels():
    assert BLOCKS["Segment"].cls is Segment and BLOCKS["Proto"].cls is Proto
    ctx = BuildContext(nc=3, anchors=None, width_multiple=0.25, depth_multiple=0.33)
    proto, c2 = BLOCKS["Proto"].builder(Proto, [64], [256, 32], 1, ctx)
    assert c2 == 32 and proto.cv1.conv.out_channels == 64  # hidden width 256 x 0.25
    assert proto(torch.zeros(1, 64, 5, 7)).shape == (1, 32, 10, 14)


def test_outputs_in_train_eval_and_export_mode(tiny_seg_cfg):
    model = Model(tiny_seg_cfg)
    x = torch.zeros(2, 3, 64, 96)
    raw, protos = model.train()(x)
    assert [tuple(r.shape) for r in raw] == [(2, 3, 8, 12, 40), (2, 3, 4, 6, 40), (2, 3, 2, 3, 40)]
    assert protos.shape == (2, 32, 16, 24)  # stride 4
    with torch.no_grad():
        (decoded, raw_eval), protos_eval = model.eval()(x)
        assert decoded.shape == (2, 3 * (96 + 24 + 6), 5 + 3 + 32)
        assert len(raw_eval) == 3 and protos_eval.shape == (2, 32, 16, 24)
        model.detect.export = True
        exported, protos_export = model(x)
    torch.testing.assert_close(exported, decoded)
    torch.testing.assert_close(protos_export, protos_eval)
    assert model.stride.tolist() == [8.0, 16.0, 32.0]


def test_decoded_boxes_match_detect_and_coefficients_stay_raw(tiny_seg_cfg):
    model = Model(tiny_seg_cfg).eval()
    with torch.no_grad():
        (decoded, raw), _ = model(torch.rand(1, 3, 64, 64))
    nc = model.detect.nc
    boxes = torch.cat([model.detect._decode_boxes(r[..., :5 + nc], i).flatten(1, 3) for i, r in enumerate(raw)], 1)
    coefs = torch.cat([r[..., 5 + nc:].flatten(1, 3) for r in raw], 1)
    torch.testing.assert_close(decoded[..., :5 + nc], boxes)
    torch.testing.assert_close(decoded[..., 5 + nc:], coefs)
    assert (decoded[..., 5 + nc:] < 0).any()  # not squashed by a sigmoid


def test_fused_model_gives_same_boxes_and_prototypes(tiny_seg_cfg):
    model = Model(tiny_seg_cfg).eval()
    randomise_batchnorm(model)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        (decoded, _), protos = model(x)
        fused = copy.deepcopy(model).fuse()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        (fused_decoded, _), fused_protos = fused(x)
    torch.testing.assert_close(fused_decoded, decoded, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fused_protos, protos, atol=1e-4, rtol=1e-4)


def test_checkpoint_round_trip_rebuilds_the_segmenter(tmp_path, tiny_seg_cfg):
    model = Model(tiny_seg_cfg).eval()
    randomise_batchnorm(model)
    model.names = ["a", "b", "c"]
    save_model(tmp_path / "seg.pt", model)
    loaded = load_model(tmp_path / "seg.pt")
    assert isinstance(loaded.detect, Segment) and loaded.names == ["a", "b", "c"]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        (d0, _), p0 = model(x)
        (d1, _), p1 = loaded(x)
    assert torch.equal(d0, d1) and torch.equal(p0, p1)


@pytest.mark.parametrize("cfg_key", ["detect", "segment"])
def test_bias_init_is_detects_and_leaves_mask_coefficients_at_zero(tiny_cfg, tiny_seg_cfg, cfg_key):
    head = Model(tiny_seg_cfg if cfg_key == "segment" else tiny_cfg).detect
    for conv in head.m:
        conv.bias.data.zero_()
    head.initialize_biases()
    nc = head.nc
    for conv, s in zip(head.m, head.stride):
        b = conv.bias.view(head.na, -1)
        assert b.shape[1] == 5 + nc + head.nm
        torch.testing.assert_close(b[:, 4], torch.full((head.na,), math.log(8 / (640 / float(s)) ** 2)))
        torch.testing.assert_close(b[:, 5:5 + nc], torch.full((head.na, nc), math.log(0.6 / (nc - 0.99))))
        assert not b[:, :4].any() and not b[:, 5 + nc:].any()


def test_autoanchor_layer_table_and_profiling_walk_a_segmenter(tiny_seg_cfg, caplog):
    model = Model(tiny_seg_cfg)
    rng = np.random.default_rng(0)
    wh = np.stack((rng.uniform(0.3, 0.6, 100), rng.uniform(0.005, 0.01, 100)), 1)  # scratches at 640 px
    labels = [np.column_stack((np.zeros(5), np.full((5, 2), 0.5), wh[i:i + 5])) for i in range(0, 100, 5)]
    assert check_anchors(labels, np.full((20, 2), 640), model, imgsz=640)
    raw, _ = model.train()(torch.zeros(1, 3, 64, 64))  # anchors replaced in place, strides unchanged
    assert len(raw) == 3 and model.stride.tolist() == [8.0, 16.0, 32.0]
    with caplog.at_level("INFO", logger="models.yolo"):
        summary = model.info(imgsz=64, verbose=True)
    assert "Segment" in caplog.text and summary["parameters"] == sum(p.numel() for p in model.parameters())
    assert summary["gflops"] > 0 and model.training  # profiling restores the mode
