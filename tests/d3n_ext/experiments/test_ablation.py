"""The ablation runner: YAML edits that keep every row in place, and Table III end to end at tiny settings."""

from __future__ import annotations

import json

import pytest
import torch.nn as nn

from d3n_ext.experiments import ablation
from d3n_ext.fusion.baselines import FuseConcat, FuseSum, FuseWeightedSum
from d3n_ext.fusion.cross_fusion import CrossFusion
from d3n_ext.fusion.freq_filter import FreqFilter
from models.yolo import Model, ModelConfigError, load_model_yaml
from tests.scripts.conftest import make_dataset

LITE = load_model_yaml("yolov5n-d3n-lite.yaml")[0]
FUSION_TYPES = (CrossFusion, FuseConcat, FuseSum, FuseWeightedSum)


def fusion_layers(model: Model) -> list[nn.Module]:
    return [m for m in model.model if isinstance(m, FUSION_TYPES)]


@pytest.mark.parametrize("variant, block", [("concat1x1", FuseConcat), ("sum", FuseSum), ("wsum", FuseWeightedSum),
                                            ("dcf", CrossFusion)])
def test_table_ii_sets_every_fusion_row_and_keeps_the_layer_count(variant, block):
    model = Model(ablation.ablate_yaml(LITE, variant, True, kv_tokens=32))
    fused = fusion_layers(model)
    assert len(model.model) == len(Model(LITE).model)
    assert len(fused) == 3 and all(type(m) is block for m in fused)
    if block is CrossFusion:
        assert all(m.cross.max_tokens == 32 for m in fused)


def test_without_freq_filter_its_rows_become_identities_in_place():
    plain = Model(ablation.ablate_yaml(LITE, None, False, kv_tokens=64))
    original = Model(LITE)
    filters = [i for i, m in enumerate(original.model) if isinstance(m, FreqFilter)]
    assert len(filters) == 3
    assert all(type(plain.model[i]) is nn.Identity for i in filters)
    assert [type(m) for m in fusion_layers(plain)] == [type(m) for m in fusion_layers(original)]  # fusion kept


def test_a_yaml_without_fusion_rows_is_refused_by_name():
    with pytest.raises(ModelConfigError, match=r"yolov5n\.yaml: no fusion rows"):
        ablation.ablate_yaml(load_model_yaml("yolov5n.yaml")[0], "sum", True, 64)


def test_the_source_dict_is_not_modified():
    before = json.dumps(LITE, sort_keys=True, default=str)
    ablation.ablate_yaml(LITE, "concat1x1", False, 64)
    assert json.dumps(LITE, sort_keys=True, default=str) == before


def test_table_iii_runs_end_to_end_and_writes_its_table(tmp_path):
    data = make_dataset(tmp_path / "synth", n_train=12, n_val=6, size=96)
    out = tmp_path / "abl"
    argv = ["--data", str(data), "--out", str(out), "--epochs", "1", "--imgsz", "64", "--batch-size", "6",
            "--workers", "0", "--tables", "3", "--stage1", "ddpm_train.iterations=3", "vae.epochs=1", "--quiet"]
    rows = ablation.main(argv)
    assert [r["row"] for r in rows] == ["PCA", "ResVAE", "ResVAE + FreqFilter"]
    assert (out / "features" / "pca" / "manifest.json").is_file()  # PCA rows read their own repository
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["rows"] == rows and saved["baseline"]["model"] == "baseline"
    table = (out / "ablation.md").read_text()
    assert "Table III" in table and "| ResVAE + FreqFilter |" in table
    no_filter = load_model_yaml(out / "cfg-resvae-noff" / "model.yaml")[0]
    assert "FreqFilter" not in json.dumps(no_filter)


@pytest.mark.parametrize("flag", [["--labels", "0.1"], ["--teacher-init", "baseline"], ["--dist-lambda", "1"],
                                  ["--task", "segment"], ["--no-controls"]])
def test_pipeline_flags_an_ablation_cannot_honour_are_refused_not_ignored(flag, capsys):
    with pytest.raises(SystemExit):
        ablation.parse_opt(flag)
    assert f"unrecognized arguments: {' '.join(flag)}" in capsys.readouterr().err


def test_the_training_flags_reach_the_ablation():
    a = ablation.parse_opt(["--epochs", "3", "--imgsz", "96", "--seed", "2", "--features", "f", "--tables", "3"])
    assert (a.pipeline.epochs, a.pipeline.imgsz, a.pipeline.seed, a.pipeline.features, a.tables) == (3, 96, 2, "f", ["3"])
